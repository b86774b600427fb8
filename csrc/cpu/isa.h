// Which copy of the CPU kernels runs: every kernel file compiles its source once per instruction
// set (AVX-512, AVX2+FMA, baseline x86-64) and asks this, once, which one to use.
#pragma once

#include <cstdlib>
#include <string>

namespace babygpt::cpu {

enum class Isa { avx512, avx2, base };

// The widest instruction set this CPU has. BABYGPT_CPU_ISA=avx2|base forces a narrower copy
// (tests/test_cpu_isa.py runs each one this CPU has); asking for more than it has is ignored.
inline Isa chosen_isa() {
  static const Isa isa = [] {
    const char* env = std::getenv("BABYGPT_CPU_ISA");
    const std::string want = env ? env : "";
    __builtin_cpu_init();
    const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq");
    const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (has512 && (want.empty() || want == "avx512")) return Isa::avx512;
    if (has2 && want != "base") return Isa::avx2;
    return Isa::base;
  }();
  return isa;
}

// Whether bf16 products run on the CPU's own bf16 dot products (AVX512-BF16, which every AMX-BF16
// CPU also has) through oneDNN's brgemm. Only with the AVX-512 copy, so BABYGPT_CPU_ISA=avx2|base
// turns it off too and the tests reach the float32 path that bf16 takes on other CPUs.
inline bool bf16_units() {
  static const bool yes = chosen_isa() == Isa::avx512 && __builtin_cpu_supports("avx512bf16");
  return yes;
}

}  // namespace babygpt::cpu
