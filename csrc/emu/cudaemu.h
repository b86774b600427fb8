// cudaemu.h -- run CUDA C++ kernels on the CPU, with checks that make their bugs visible.
//
// The same kernel source compiles with nvcc (a real launch) and with g++ -std=c++20
// -I/usr/local/cuda/include (emulated: each CUDA thread is a fiber, each block runs on a
// worker OS thread). Kernel authors need exactly two things beyond standard CUDA:
//
//   CUDAEMU_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
//       instead of kernel<<<grid, block, smem_bytes, stream>>>(args...). Wrap a template
//       kernel in parentheses: CUDAEMU_LAUNCH((attn<64, float>), ...). Then check
//       cudaGetLastError() as usual; in emulation cudaemu::last_error_message() has the text.
//   CUDAEMU_DYNAMIC_SHARED(T, name)
//       instead of extern __shared__ T name[]; (gives a T* to the dynamic shared memory).
//
// Emulated: threadIdx/blockIdx/blockDim/gridDim/warpSize; dynamic shared memory;
// __syncthreads(_count/_and/_or); __syncwarp; __shfl(_up/_down/_xor)_sync; __ballot/__any/
// __all_sync; __reduce_*_sync; __activemask; math intrinsics; half/bfloat16 from the toolkit's
// cuda_fp16.h/cuda_bf16.h plus the device-only intrinsics (__hfma, hexp, hsqrt, ...);
// cudaMalloc/Free/Memcpy/Memset(+Async), streams, cudaGetLastError/PeekAtLastError/
// DeviceSynchronize/GetErrorString, cudaFuncSetAttribute.
// Opt-in, each with its own switch (define it before including this header):
//   CUDAEMU_STATIC_SHARED  static __shared__ variables: one copy per running block, poisoned before
//                          each block and counted toward the limit through the module's ELF symbol
//                          table (cudaemu/static_smem.h); without it __shared__ does not compile.
//   CUDAEMU_SPIN_WAITS     threads that wait for each other by polling memory: atomics (CUDA's
//                          overload set), __threadfence*, __nanosleep as spin points
//                          (cudaemu/spin.h), and a watchdog that preempts a fiber spinning on a
//                          plain load (cudaemu/watchdog.h).
// __CUDA_ARCH__ is NOT defined, so '#ifdef __CUDA_ARCH__' (e.g. mma.sync PTX) takes the
// portable path. The macro CUDAEMU_EMULATED is defined to 1.
//
// Checks (each one records cudaErrorLaunchFailure / cudaErrorInvalidConfiguration with a
// message naming kernel, block, thread and source lines; the launch returns, never hangs):
//   divergent __syncthreads (threads at different calls, or a thread exits while others wait),
//   deadlocks, stalls (threads run but none reaches a barrier, collective or its end for
//   CUDAEMU_TIMEOUT s: a spin nobody releases, with CUDAEMU_SPIN_WAITS),
//   shuffle masks (a lane not in the mask does not take part; reading from a lane outside the
//   mask or an exited lane is an error), mismatched warp collectives, bad launch
//   configurations (> 1024 threads, empty grid, shared memory over the 48 KiB default or the
//   cudaFuncSetAttribute opt-in up to 227 KiB). Shared memory (before each block) and
//   cudaMalloc memory are poisoned with 0xFF (NaN) bytes; threads resume in
//   forward/reverse/random order.
//
// Runtime configuration: cudaemu::config() (see cudaemu/config.h), read from CUDAEMU_ORDER,
// CUDAEMU_SEED, CUDAEMU_POISON, CUDAEMU_WORKERS, CUDAEMU_ABORT, CUDAEMU_STACK_KB, CUDAEMU_TIMEOUT,
// CUDAEMU_PREEMPT_MS.
// Modes: fibers (default; x86-64 assembly switch, -DCUDAEMU_UCONTEXT for the portable one;
// ASan-aware) or -DCUDAEMU_THREADS (one std::thread per CUDA thread; for -fsanitize=thread).
// With <torch/extension.h> in the same file, include torch first, then this header.
// Details and limits: csrc/emu/README.md.
#pragma once

#if defined(__CUDACC__)
// ------------------------------------------------------------------ real CUDA (nvcc)
#include <cuda_runtime.h>
#define CUDAEMU_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
// One raw byte array for every kernel (nvcc rejects the same extern __shared__ name with
// different element types in one file), viewed as T*.
#define CUDAEMU_DYNAMIC_SHARED(T, name)                              \
  extern __shared__ __align__(16) unsigned char cudaemu_dyn_smem_[]; \
  T* name = reinterpret_cast<T*>(cudaemu_dyn_smem_)

#else
// ------------------------------------------------------------------ CPU emulation
#if defined(__SANITIZE_THREAD__) && !defined(CUDAEMU_THREADS)
#error "cudaemu: ThreadSanitizer cannot follow fiber switches; compile with -DCUDAEMU_THREADS"
#endif
#define CUDAEMU_EMULATED 1

// The toolkit's host-compilable headers provide the types (dim3, uint3, float2, cudaError_t,
// cudaStream_t, __half, __nv_bfloat16, ...). They define __host__/__device__/__global__/
// __shared__/__constant__ as nothing for a host compiler; __shared__ is redefined below.
// The real runtime API (cuda_runtime_api.h, pulled in by cuda_fp16.h) is kept out: its
// extern "C" declarations would give our definitions C linkage, and then a libcudart loaded
// in the same process (e.g. by torch) could be called instead of them.
#if defined(__CUDA_RUNTIME_API_H__) && !defined(CUDAEMU_EMULATED_RUNTIME)
#error "cudaemu: include cudaemu.h before cuda_runtime.h / cuda_runtime_api.h / cuda_fp16.h in an emulated build"
#endif
#define CUDAEMU_EMULATED_RUNTIME 1
#define __CUDA_RUNTIME_H__
#define __CUDA_RUNTIME_API_H__
#include <vector_types.h>
#include <driver_types.h>
#include <builtin_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

// Builtin variables: per OS thread, set by the scheduler before each thread/block runs.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

#include "cudaemu/config.h"
#include "cudaemu/fiber.h"
#ifdef CUDAEMU_STATIC_SHARED
#include "cudaemu/static_smem.h"
#endif
#include "cudaemu/block.h"
#ifdef CUDAEMU_SPIN_WAITS
#include "cudaemu/watchdog.h"
#endif
#include "cudaemu/launch.h"
#include "cudaemu/device.h"
#ifdef CUDAEMU_SPIN_WAITS
#include "cudaemu/spin.h"
#endif
#include "cudaemu/runtime.h"
#undef CUDAEMU_HERE  // device.h's default argument, used by spin.h too

#undef __shared__
#ifndef CUDAEMU_STATIC_SHARED
#define __shared__ static_assert(false, "cudaemu: static __shared__ variables need -DCUDAEMU_STATIC_SHARED " \
                                        "(or use CUDAEMU_DYNAMIC_SHARED)");
#else
// __shared__ also declares a marker beside the variable, so the harness can find it in the
// symbol table and poison it before each block (cudaemu/static_smem.h). The marker is
// 'thread_local' without 'static' so that 'static __shared__ T x;' works too.
#define CUDAEMU_CAT2(a, b) a##b
#define CUDAEMU_CAT(a, b) CUDAEMU_CAT2(a, b)
#define CUDAEMU_SHARED_MARK thread_local char CUDAEMU_CAT(cudaemu_shared_mark_, __COUNTER__) [[gnu::used, maybe_unused]];
#ifdef CUDAEMU_THREADS
#define __shared__ CUDAEMU_SHARED_MARK static  // blocks run one after another: one copy is one per block
#else
#define __shared__ CUDAEMU_SHARED_MARK static thread_local  // a worker runs one block at a time
#endif
#endif  // CUDAEMU_STATIC_SHARED
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif

#define CUDAEMU_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::cudaemu::tl_dyn_smem)
// The arguments are evaluated once, converted to the kernel's parameter types, and every
// emulated thread calls the kernel with (copies of) them, like a real launch.
#define CUDAEMU_LAUNCH(kernel, grid, block, smem, stream, ...)                                  \
  ::cudaemu::launch_kernel(#kernel, kernel, dim3(grid), dim3(block), (smem), (stream),          \
                           std::source_location::current() __VA_OPT__(, ) __VA_ARGS__)

#endif  // __CUDACC__
