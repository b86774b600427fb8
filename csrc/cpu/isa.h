// Which copy of the CPU kernels runs: every kernel file compiles its source once per instruction
// set (AVX-512, AVX2+FMA, baseline x86-64) and asks this, once, which one to use.
#pragma once

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

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

// Whether oneDNN's bf16 brgemm runs on AMX tiles here: the CPU has AMX-BF16, and Linux grants this
// process the tile registers, which it does only on request (arch_prctl ARCH_REQ_XCOMP_PERM for
// XTILEDATA, the request oneDNN makes itself before it emits AMX code; a second request is a no-op).
// For `babygpt info`, which names the path bf16 takes.
inline bool amx_usable() {
  static const bool yes = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;  // CPUID.(7,0):EDX
    if (!amx_bf16 || !amx_tile) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return yes;
}

// Whether bf16 products run on the CPU's own bf16 dot products (AVX512-BF16, which every AMX-BF16
// CPU also has; oneDNN's brgemm takes AMX tiles where amx_usable()). Only with the AVX-512 copy, so
// BABYGPT_CPU_ISA=avx2|base turns it off too and the tests reach the float32 path that bf16 takes
// on other CPUs.
inline bool bf16_units() {
  static const bool yes = chosen_isa() == Isa::avx512 && __builtin_cpu_supports("avx512bf16");
  return yes;
}

}  // namespace babygpt::cpu
