// How the row-wise CPU kernels (bias_gelu.cpp, layer_norm.cpp) split N rows of width C over the
// threads, and how they reduce over the rows deterministically: a column sum (a bias or LayerNorm
// parameter gradient) is summed per part of the rows, the parts fixed by N alone, and the parts are
// then added in order, so every result is bit-identical whatever the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>

namespace babygpt::cpu {

// Rows per parallel task: ~32K elements, so small calls (and a decoding step's one row) run inline.
inline int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, width)); }

// The parts of a column sum: at most 64, of at least 16 rows, fixed by N alone.
inline int64_t rows_per_part(int64_t n) { return std::max<int64_t>(16, (n + 63) / 64); }
inline int64_t row_parts(int64_t n) { return (n + rows_per_part(n) - 1) / rows_per_part(n); }

// f(part, row) for every row of [0, n), a part's rows in order on one thread.
template <class F>
void for_row_parts(int64_t n, int64_t width, const F& f) {
  const int64_t rpp = rows_per_part(n);
  at::parallel_for(0, row_parts(n), std::max<int64_t>(1, grain_rows(width) / rpp), [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part)
      for (int64_t r = part * rpp; r < std::min(n, (part + 1) * rpp); ++r) f(part, r);
  });
}

// (parts, C) running sums -> (C,): the parts added in order.
inline at::Tensor sum_parts(const at::Tensor& partial) {
  const int64_t parts = partial.size(0), c = partial.size(1);
  auto out = at::empty({c}, partial.options());
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "babygpt_sum_parts_cpu", [&] {
    const scalar_t* p = partial.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < c; ++i) o[i] = p[i];
    for (int64_t part = 1; part < parts; ++part)
      for (int64_t i = 0; i < c; ++i) o[i] += p[part * c + i];
  });
  return out;
}

}  // namespace babygpt::cpu
