// cudaemu/spin.h -- CUDAEMU_SPIN_WAITS: atomics, memory fences and __nanosleep, for kernels in
// which a thread waits for another thread of its block by polling memory. Part of
// csrc/emu/cudaemu.h, included only with -DCUDAEMU_SPIN_WAITS (with the watchdog, watchdog.h).
//
// Polling is legal CUDA since Volta, but a fiber only switches where it calls the harness, so
// each of these is a *spin point* where the caller steps aside for one scheduling round; a spin
// on a plain (volatile) load reaches none, and the watchdog preempts it instead.
#pragma once

#include <atomic>
#include <source_location>
#include <thread>

namespace cudaemu {

// A spin point: an atomic, a memory fence or __nanosleep. Fibers are not preempted at any other
// point (but see the watchdog, watchdog.h), so here a thread that polls memory written by
// another thread of its block steps aside for one scheduling round and lets that thread run.
// In thread mode the OS schedules; yielding just helps on few cores.
inline void spin_point(const char* what, const std::source_location& l) {
  Block* b = tl_block;
  if (b == nullptr) return;  // called from host code
#ifdef CUDAEMU_THREADS
  {
    Lock lk(*b);  // a stalled launch reads it from another thread
    tl_thread->spin = site(what, l);
  }
  std::this_thread::yield();
#else
  tl_thread->spin = site(what, l);
  if (b->failed) unwind();
  to_scheduler(*b, *tl_thread);
  if (b->failed) unwind();
#endif
}

}  // namespace cudaemu

// Memory fences, __nanosleep and the atomics are spin points (cudaemu::spin_point): a thread
// polling memory that another thread of its block writes lets that thread run there.
inline void __threadfence(CUDAEMU_HERE) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  cudaemu::spin_point("__threadfence", loc);
}
inline void __threadfence_block(CUDAEMU_HERE) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  cudaemu::spin_point("__threadfence_block", loc);
}
inline void __threadfence_system(CUDAEMU_HERE) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  cudaemu::spin_point("__threadfence_system", loc);
}
inline void __nanosleep(unsigned ns, CUDAEMU_HERE) {
  (void)ns;  // the GPU sleeps "approximately" ns, at most ~1 ms; here: let the others run
  cudaemu::spin_point("__nanosleep", loc);
}

// ------------------------------------------------------------------------------ atomics
// The overload set of CUDA's device_atomic_functions.h / sm_*_atomic_functions.h, so code
// that compiles here also compiles with nvcc (there is e.g. no float atomicMax in CUDA).
namespace cudaemu {
template <class T> inline std::atomic_ref<T> aref(T* p) { return std::atomic_ref<T>(*p); }
template <class T, class F> inline T atomic_update(T* p, F f) {
  auto a = aref(p);
  T old = a.load();
  while (!a.compare_exchange_weak(old, f(old))) {}
  return old;
}
}  // namespace cudaemu
// Each atomic is a spin point first (see __threadfence), then one seq_cst operation.
#define CUDAEMU_ATOMIC(name, T, params, expr)                    \
  inline T name(T* p, CUDAEMU_UNPAREN params, CUDAEMU_HERE) {     \
    cudaemu::spin_point(#name, loc);                              \
    return expr;                                                  \
  }
#define CUDAEMU_UNPAREN(...) __VA_ARGS__
#define CUDAEMU_ATOMIC_ADD(T) CUDAEMU_ATOMIC(atomicAdd, T, (T v), cudaemu::aref(p).fetch_add(v))
CUDAEMU_ATOMIC_ADD(int) CUDAEMU_ATOMIC_ADD(unsigned) CUDAEMU_ATOMIC_ADD(unsigned long long)
CUDAEMU_ATOMIC_ADD(float) CUDAEMU_ATOMIC_ADD(double)
#undef CUDAEMU_ATOMIC_ADD
CUDAEMU_ATOMIC(atomicSub, int, (int v), cudaemu::aref(p).fetch_sub(v))
CUDAEMU_ATOMIC(atomicSub, unsigned, (unsigned v), cudaemu::aref(p).fetch_sub(v))
#define CUDAEMU_ATOMIC_MINMAX(T)                                                                             \
  CUDAEMU_ATOMIC(atomicMax, T, (T v), cudaemu::atomic_update(p, [v](T o) { return o < v ? v : o; }))      \
  CUDAEMU_ATOMIC(atomicMin, T, (T v), cudaemu::atomic_update(p, [v](T o) { return v < o ? v : o; }))
CUDAEMU_ATOMIC_MINMAX(int) CUDAEMU_ATOMIC_MINMAX(unsigned) CUDAEMU_ATOMIC_MINMAX(long long)
CUDAEMU_ATOMIC_MINMAX(unsigned long long)
#undef CUDAEMU_ATOMIC_MINMAX
// atomicCAS returns the old value whether or not the swap happened.
#define CUDAEMU_ATOMIC_BITS(T)                                                                                 \
  CUDAEMU_ATOMIC(atomicExch, T, (T v), cudaemu::aref(p).exchange(v))                                         \
  CUDAEMU_ATOMIC(atomicCAS, T, (T compare, T v), (cudaemu::aref(p).compare_exchange_strong(compare, v), compare)) \
  CUDAEMU_ATOMIC(atomicAnd, T, (T v), cudaemu::aref(p).fetch_and(v))                                         \
  CUDAEMU_ATOMIC(atomicOr, T, (T v), cudaemu::aref(p).fetch_or(v))                                           \
  CUDAEMU_ATOMIC(atomicXor, T, (T v), cudaemu::aref(p).fetch_xor(v))
CUDAEMU_ATOMIC_BITS(int) CUDAEMU_ATOMIC_BITS(unsigned) CUDAEMU_ATOMIC_BITS(unsigned long long)
#undef CUDAEMU_ATOMIC_BITS
CUDAEMU_ATOMIC(atomicExch, float, (float v), cudaemu::aref(p).exchange(v))
CUDAEMU_ATOMIC(atomicCAS, unsigned short, (unsigned short compare, unsigned short v),
               (cudaemu::aref(p).compare_exchange_strong(compare, v), compare))
#undef CUDAEMU_ATOMIC
#undef CUDAEMU_UNPAREN

