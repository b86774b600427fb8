// tests/emu/selftest.cu -- host driver for the correct kernels in kernels.cuh.
// Each test launches a kernel, compares with a float64 reference computed here, and prints
//   <name> PASS|FAIL ms=<launch time> err=<max error>
// Usage: selftest [test ...]   (no argument: all tests). Exit status 1 if any test failed.
// Builds with nvcc as real CUDA (-x cu) and with g++ against cudaemu.h.
#include "kernels.cuh"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

static double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
template <class T> static T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  cudaMalloc((void**)&d, h.size() * sizeof(T));
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
template <class T> static std::vector<T> to_host(const T* d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}
// Launch error check: prints the harness message (emulation) and fails the test.
static bool launched_ok(const char* what) {
  cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e == cudaSuccess) return true;
#ifdef CUDAEMU_EMULATED
  std::printf("%s: launch error %s: %s\n", what, cudaGetErrorName(e), cudaemu::last_error_message().c_str());
#else
  std::printf("%s: launch error %s\n", what, cudaGetErrorString(e));
#endif
  cudaGetLastError();
  return false;
}
static bool report(const char* name, bool ok, double ms, double err) {
  std::printf("%s %s ms=%.3f err=%.3e\n", name, ok ? "PASS" : "FAIL", ms, err);
  return ok;
}

static std::mt19937 rng(1234);
static std::vector<float> randn(size_t n) {
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& e : v) e = nd(rng);
  return v;
}

static bool test_reduce() {
  const int G = 16, B = 128, n = G * B * 4 - 37;  // ragged tail
  auto x = randn(n);
  float *dx = to_device(x), *dp = to_device(std::vector<float>(G, 0.f)), *dt = to_device(std::vector<float>(1, 0.f));
  double t0 = now_ms();
  CUDAEMU_LAUNCH(block_reduce_kernel, G, B, 0, 0, dx, dp, dt, n);
  bool ok = launched_ok("reduce");
  double ms = now_ms() - t0;
  auto part = to_host(dp, G);
  auto tot = to_host(dt, 1);
  double ref_total = 0, err = 0;
  for (int b = 0; b < G; ++b) {
    double r = 0;
    for (int i = b * B; i < n; i += G * B)
      for (int t = 0; t < B && i + t < n; ++t) r += (double)x[i + t] * x[i + t];
    err = std::max(err, std::abs(r - part[b]) / r);
    ref_total += r;
  }
  err = std::max(err, std::abs(ref_total - tot[0]) / ref_total);
  cudaFree(dx); cudaFree(dp); cudaFree(dt);
  return report("reduce", ok && err < 1e-5, ms, err);
}

static bool test_matmul() {
  const int M = 96, K = 80, N = 72;  // not multiples of the tile: ragged edges
  auto A = randn(M * K), Bm = randn(K * N);
  float *dA = to_device(A), *dB = to_device(Bm), *dC = nullptr;
  cudaMalloc((void**)&dC, M * N * sizeof(float));
  double t0 = now_ms();
  CUDAEMU_LAUNCH(tiled_matmul_kernel, dim3((N + TILE - 1) / TILE, (M + TILE - 1) / TILE), dim3(TILE, TILE),
                 2 * TILE * TILE * sizeof(float), 0, dA, dB, dC, M, N, K);
  bool ok = launched_ok("matmul");
  double ms = now_ms() - t0;
  auto C = to_host(dC, M * N);
  double err = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double r = 0;
      for (int k = 0; k < K; ++k) r += (double)A[i * K + k] * Bm[k * N + j];
      err = std::max(err, std::abs(r - C[i * N + j]));  // NaN (poison) fails the comparison below
      if (!(std::abs(r - C[i * N + j]) < 1e-3)) err = std::max(err, 1e9);
    }
  cudaFree(dA); cudaFree(dB); cudaFree(dC);
  return report("matmul", ok && err < 1e-4, ms, err);
}

static bool test_scan() {
  const int B = 256, n = 2000, G = (n + B - 1) / B;
  auto x = randn(n);
  float *dx = to_device(x), *dy = nullptr;
  cudaMalloc((void**)&dy, n * sizeof(float));
  double t0 = now_ms();
  CUDAEMU_LAUNCH(block_scan_kernel, G, B, 0, 0, dx, dy, n);
  bool ok = launched_ok("scan");
  double ms = now_ms() - t0;
  auto y = to_host(dy, n);
  double err = 0, acc = 0;
  for (int i = 0; i < n; ++i) {
    if (i % B == 0) acc = 0;
    acc += x[i];
    double e = std::abs(acc - y[i]);
    err = e == e ? std::max(err, e) : 1e9;
  }
  cudaFree(dx); cudaFree(dy);
  return report("scan", ok && err < 1e-4, ms, err);
}

static bool test_half() {
  const int n = 200;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = -3.f + 6.f * i / n;
  float *dx = to_device(x), *dout = nullptr;
  cudaMalloc((void**)&dout, 8 * n * sizeof(float));
  double t0 = now_ms();
  CUDAEMU_LAUNCH(half_math_kernel, (n + 63) / 64, 64, 0, 0, dx, dout, n);
  bool ok = launched_ok("half");
  double ms = now_ms() - t0;
  auto out = to_host(dout, 8 * n);
  // Relative tolerance per output: fp16 has 11 significant bits, bf16 8; ops add a rounding.
  const double hh = 1.0 / 1024, bb = 1.0 / 128;
  double worst = 0;  // max of err / tolerance
  for (int i = 0; i < n; ++i) {
    double v = x[i], nb = x[i ^ 1];
    double ref[8] = {v, v, v * v + 1, std::exp(0.5 * v), std::sqrt(std::abs(v)), v + nb, 4 * v * v, 3 * v};
    double tol[8] = {hh / 2, bb / 2, 2 * hh, 2 * hh, 2 * bb, 2 * hh, 2 * hh, 2 * bb};
    for (int k = 0; k < 8; ++k) {
      double e = std::abs(out[k * n + i] - ref[k]) / std::max(1.0, std::abs(ref[k]));
      worst = e == e ? std::max(worst, e / tol[k]) : 1e9;
    }
  }
  cudaFree(dx); cudaFree(dout);
  return report("half", ok && worst <= 1.0, ms, worst);
}

static bool test_atomics() {
  const int G = 8, B = 96, n = G * B - 5;
  std::vector<float> vals = randn(n);
  int* di = to_device(std::vector<int>{0, -1, 0, 0, 1000, -7});
  float* df = to_device(std::vector<float>{0.f, -1e30f});
  float* dv = to_device(vals);
  double t0 = now_ms();
  CUDAEMU_LAUNCH(atomics_kernel, G, B, 0, 0, di, df, dv, n);
  bool ok = launched_ok("atomics");
  double ms = now_ms() - t0;
  auto I = to_host(di, 6);
  auto F = to_host(df, 2);
  float vmax = *std::max_element(vals.begin(), vals.end());
  bool exact = I[0] == n && I[1] == n - 1 && I[2] == -(n - 1) && (unsigned)I[3] == 0xffffffffu &&
               I[4] == 1000 - 2 * n && I[5] >= 0 && I[5] < n && F[0] == 0.5f * n && F[1] == vmax;
  if (!exact)
    std::printf("atomics: got %d %d %d %x %d %d %g %g\n", I[0], I[1], I[2], I[3], I[4], I[5], F[0], F[1]);
  cudaFree(di); cudaFree(df); cudaFree(dv);
  return report("atomics", ok && exact, ms, exact ? 0.0 : 1.0);
}

static bool test_votes() {
  const int G = 3, B = 48, n = G * B;
  std::vector<int> pred(n);
  for (int i = 0; i < n; ++i) pred[i] = (rng() % 3) != 0;
  for (int i = 32; i < 48; ++i) pred[i] = 1;  // block 0, warp 1: all true
  int* dp = to_device(pred);
  unsigned* dout = nullptr;
  cudaMalloc((void**)&dout, n * 6 * sizeof(unsigned));
  double t0 = now_ms();
  CUDAEMU_LAUNCH(votes_kernel, G, B, 0, 0, dp, dout);
  bool ok = launched_ok("votes");
  double ms = now_ms() - t0;
  auto out = to_host(dout, n * 6);
  int bad = 0;
  for (int b = 0; b < G; ++b) {
    unsigned count = 0;
    for (int t = 0; t < B; ++t) count += pred[b * B + t];
    for (int t = 0; t < B; ++t) {
      int w0 = (t / 32) * 32, lanes = std::min(32, B - w0), lane = t % 32;
      unsigned ballot = 0, sum = 0;
      for (int l = 0; l < lanes; ++l)
        if (pred[b * B + w0 + l]) { ballot |= 1u << l; sum += l; }
      unsigned all = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
      unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
      unsigned expect[6] = {ballot, ballot != 0, ballot == all, ballot & half, sum, count};
      for (int k = 0; k < 6; ++k) bad += out[(b * B + t) * 6 + k] != expect[k];
    }
  }
  cudaFree(dp); cudaFree(dout);
  return report("votes", ok && bad == 0, ms, bad);
}

static bool test_template() {
  const int n = 300;
  auto x = randn(n);
  float *dx = to_device(x), *dy = nullptr;
  cudaMalloc((void**)&dy, n * sizeof(float));
  double t0 = now_ms();
  CUDAEMU_LAUNCH((axpb_kernel<float, 3>), (n + 127) / 128, 128, 0, 0, dx, dy, 0.5f, n);
  bool ok = launched_ok("template");
  double ms = now_ms() - t0;
  auto y = to_host(dy, n);
  double err = 0;
  for (int i = 0; i < n; ++i) {
    double e = std::abs(3.0 * x[i] + 0.5 - y[i]);
    err = e == e ? std::max(err, e) : 1e9;
  }
  cudaFree(dx); cudaFree(dy);
  return report("template", ok && err < 1e-5, ms, err);
}

// Only run when asked for ("selftest preempt", with a small CUDAEMU_PREEMPT_MS): threads are
// preempted mid-computation and the exact result must not change.
static bool test_preempt() {
  const int G = 1, B = 32, iters = 1 << 22, rounds = 2;  // ~5 ms of CPU per slice
  std::vector<unsigned> seeds(G * B);
  for (auto& s : seeds) s = (unsigned)rng();
  unsigned* ds = to_device(seeds);
  unsigned* dout = nullptr;
  cudaMalloc((void**)&dout, G * sizeof(unsigned));
  double t0 = now_ms();
  CUDAEMU_LAUNCH(busy_kernel, G, B, 0, 0, ds, dout, iters, rounds);
  bool ok = launched_ok("preempt");
  double ms = now_ms() - t0;
  auto out = to_host(dout, G);
  int bad = 0;
  for (int b = 0; b < G; ++b) {
    std::vector<unsigned> x(seeds.begin() + b * B, seeds.begin() + (b + 1) * B);
    unsigned total = 0;
    for (int r = 0; r < rounds; ++r)
      for (unsigned& v : x) {
        for (int i = 0; i < iters; ++i) v = v * 1664525u + 1013904223u;
        total += v >> 8;
      }
    bad += out[b] != total;
  }
  cudaFree(ds); cudaFree(dout);
#ifdef CUDAEMU_EMULATED
  std::printf("preemptions=%llu\n", cudaemu::preemptions().load());
#endif
  return report("preempt", ok && bad == 0, ms, bad);
}

// Launch-configuration errors must come back from cudaGetLastError, and a valid launch after
// them must work (the errors are not sticky).
static bool test_launch_errors() {
  float* d = nullptr;
  cudaMalloc((void**)&d, 4 * sizeof(float));
  int wrong = 0;
  cudaGetLastError();
  CUDAEMU_LAUNCH(block_scan_kernel, 1, 2048, 0, 0, d, d, 4);  // > 1024 threads
  wrong += cudaGetLastError() != cudaErrorInvalidConfiguration;
  CUDAEMU_LAUNCH(block_scan_kernel, 0, 32, 0, 0, d, d, 4);  // empty grid
  wrong += cudaGetLastError() != cudaErrorInvalidConfiguration;
  const int big = 100 * 1024;  // > 48 KiB without opt-in
  CUDAEMU_LAUNCH(tiled_matmul_kernel, 1, dim3(TILE, TILE), big, 0, d, d, d, 0, 0, 0);
  wrong += cudaGetLastError() != cudaErrorInvalidConfiguration;
  wrong += cudaFuncSetAttribute(tiled_matmul_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, big) != cudaSuccess;
  CUDAEMU_LAUNCH(tiled_matmul_kernel, 1, dim3(TILE, TILE), big, 0, d, d, d, 0, 0, 0);
  wrong += cudaGetLastError() != cudaSuccess;
  CUDAEMU_LAUNCH(tiled_matmul_kernel, 1, dim3(TILE, TILE), big + 1, 0, d, d, d, 0, 0, 0);
  wrong += cudaGetLastError() != cudaErrorInvalidConfiguration;
#ifdef CUDAEMU_EMULATED
  // Static __shared__ counts toward the block's 48 KiB: warp_sums (128 B) + 48 KiB is too much.
  const void* reduce = (const void*)block_reduce_kernel;
  wrong += cudaemu::static_smem_bytes(cudaemu::module_smem(reduce), reduce) != 32 * sizeof(float);
  CUDAEMU_LAUNCH(block_reduce_kernel, 1, 32, 48 * 1024, 0, d, d, d, 4);
  wrong += cudaGetLastError() != cudaErrorInvalidConfiguration;
#endif
  cudaStream_t s;
  wrong += cudaStreamCreate(&s) != cudaSuccess;
  CUDAEMU_LAUNCH(block_scan_kernel, 1, 32, 0, s, d, d, 4);
  wrong += cudaStreamSynchronize(s) != cudaSuccess;
  wrong += cudaGetLastError() != cudaSuccess;
  cudaStreamDestroy(s);
  cudaFree(d);
  return report("launch_errors", wrong == 0, 0.0, wrong);
}

int main(int argc, char** argv) {
  struct Test { const char* name; bool (*fn)(); bool by_default; };
  const Test tests[] = {{"reduce", test_reduce, true}, {"matmul", test_matmul, true}, {"scan", test_scan, true},
                        {"half", test_half, true}, {"atomics", test_atomics, true}, {"votes", test_votes, true},
                        {"template", test_template, true}, {"launch_errors", test_launch_errors, true},
                        {"preempt", test_preempt, false}};
  int failed = 0, ran = 0;
  for (const Test& t : tests) {
    bool wanted = argc == 1 && t.by_default;
    for (int i = 1; i < argc; ++i) wanted |= std::strcmp(argv[i], t.name) == 0;
    if (!wanted) continue;
    ++ran;
    failed += !t.fn();
  }
  if (ran == 0) { std::printf("no test matched\n"); return 2; }
  return failed ? 1 : 0;
}
