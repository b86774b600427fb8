// cudaemu/watchdog.h -- fiber mode: preempts a CUDA thread that has run for a long time without
// reaching a barrier, warp collective, spin point or its end. Part of csrc/emu/cudaemu.h,
// included with -DCUDAEMU_SPIN_WAITS.
//
// Fibers only switch where the harness is called, so a thread polling a plain (volatile) load
// for a value another thread of its block will write would spin forever: the writer never
// runs. Each launch therefore starts a watchdog thread; when a fiber slice has used
// CUDAEMU_PREEMPT_MS of CPU time (100 ms), it sends the worker a signal whose handler switches from the
// fiber to the block scheduler, exactly like a yield (the fiber resumes inside the handler
// later). Whether a spin is ever released is decided by the scheduler's stall check
// (CUDAEMU_TIMEOUT). Kernel code may be preempted anywhere, including inside a libc call it
// makes (printf, malloc): keep those out of spin loops.
// Preemption is off under AddressSanitizer and with ucontext switching (their switch paths are
// not safe to interrupt), and when the signal already has another handler; there a slice
// longer than CUDAEMU_TIMEOUT aborts the process with a message. Thread mode needs no
// preemption (the OS schedules); its stall check is in launch.h (await_block).
#pragma once

#include <pthread.h>
#include <signal.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

namespace cudaemu {

// One per worker OS thread of a launch.
struct Watch {
  std::atomic<uint64_t> slice{0};    // number of the running fiber slice (0: no fiber runs)
  std::atomic<uint64_t> preempt{0};  // the slice the watchdog asked to switch out
  std::atomic<const Block*> block{nullptr};  // what runs in that slice, for messages
  std::atomic<const Thread*> thread{nullptr};
  uint64_t slices = 0;  // worker only: slices started
  // Guarded by the watchdog's mutex:
  pthread_t os{};
  clockid_t cpu{};    // the worker's CPU-time clock
  bool live = false;  // os may be signalled
  uint64_t seen = 0;  // the slice the watchdog last looked at, and the worker's CPU time then
  int64_t seen_cpu = 0;
};
inline thread_local Watch* tl_watch = nullptr;

// Counts preemptions (for tests that check the watchdog really interrupts kernels).
inline std::atomic<unsigned long long>& preemptions() {
  static std::atomic<unsigned long long> n{0};
  return n;
}

#ifndef CUDAEMU_THREADS
#if !defined(CUDAEMU_UCONTEXT) && !defined(CUDAEMU_ASAN)
#define CUDAEMU_PREEMPT 1
// Runs on the worker, on the stack of the fiber it interrupted. Switches only when that fiber
// is really the slice the watchdog meant, and is neither in harness code (whose bookkeeping no
// other fiber may see half done) nor in the context-switch routine; otherwise the watchdog
// tries again at its next tick.
inline void on_preempt_signal(int, siginfo_t*, void* uc) {
  Watch* w = tl_watch;
  Thread* t = tl_thread;
  Block* b = tl_block;
  if (!w || !t || !b) return;
  const uint64_t s = w->slice.load(std::memory_order_relaxed);
  if (s == 0 || s != w->preempt.load(std::memory_order_relaxed)) return;
  char probe;
  const auto pc = (uintptr_t) static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_RIP];
  if (t->in_harness || &probe < t->ctx.stack || &probe >= t->ctx.stack + t->ctx.stack_size ||
      (pc >= (uintptr_t)&cudaemu_switch_v1 && pc < (uintptr_t)cudaemu_switch_v1_end)) {
    w->preempt.store(0, std::memory_order_relaxed);
    return;
  }
  const int saved_errno = errno;
  preemptions().fetch_add(1, std::memory_order_relaxed);
  t->preempted = true;
  switch_context(t->ctx, b->scheduler);
  t->preempted = false;
  errno = saved_errno;
}

inline int preempt_signal() { return SIGRTMIN + 5; }

// Installs the handler once per process; false when the signal already has another handler.
inline bool preempt_handler_installed() {
  static const bool ok = [] {
    struct sigaction old{};
    if (sigaction(preempt_signal(), nullptr, &old) != 0) return false;
    if ((old.sa_flags & SA_SIGINFO) || (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN)) return false;
    struct sigaction sa{};
    sa.sa_sigaction = on_preempt_signal;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;  // NODEFER: the handler may never return
    sigemptyset(&sa.sa_mask);
    return sigaction(preempt_signal(), &sa, nullptr) == 0;
  }();
  return ok;
}
#endif

// Watches the workers of one launch from its own thread while the launch runs (only when
// CUDAEMU_TIMEOUT is not 0). A slice longer than CUDAEMU_PREEMPT_MS is preempted; one longer
// than CUDAEMU_TIMEOUT (only possible where preemption is unavailable) cannot be ended any
// other way, so the process prints which CUDA thread spins and aborts instead of hanging.
class Watchdog {
 public:
  Watchdog(Watch* watches, size_t n) : w_(watches), n_(n) {
#ifdef CUDAEMU_PREEMPT
    preempt_ = preempt_handler_installed();
#endif
    if (config().timeout_s > 0) thread_ = std::thread([this] { loop(); });
  }
  ~Watchdog() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // A worker enlists its OS thread when it starts and retires it before it ends, so the watchdog
  // never signals a thread that is gone.
  void enlist(Watch& w) {
    std::lock_guard<std::mutex> g(mu_);
    w.os = pthread_self();
    w.live = pthread_getcpuclockid(w.os, &w.cpu) == 0;
  }
  void retire(Watch& w) {
    std::lock_guard<std::mutex> g(mu_);
    w.live = false;
  }

 private:
  // Slices are timed in the worker's CPU time, so a loaded machine (a descheduled worker) does
  // not preempt anything: normal kernels keep their deterministic schedules.
  void loop() {
    const int64_t limit = (int64_t)config().timeout_s * 1'000'000'000;
    [[maybe_unused]] const int64_t quantum = (int64_t)config().preempt_ms * 1'000'000;
    const auto tick = std::chrono::milliseconds(std::clamp<unsigned>(config().preempt_ms / 4, 1, 20));
    std::unique_lock<std::mutex> lk(mu_);
    while (!cv_.wait_for(lk, tick, [this] { return stop_; })) {
      for (size_t i = 0; i < n_; ++i) {
        Watch& w = w_[i];
        const uint64_t s = w.slice.load(std::memory_order_relaxed);
        if (!w.live || s == 0) continue;
        timespec ts{};
        clock_gettime(w.cpu, &ts);
        const int64_t cpu = (int64_t)ts.tv_sec * 1'000'000'000 + ts.tv_nsec;
        if (s != w.seen) {
          w.seen = s;
          w.seen_cpu = cpu;
          continue;
        }
        const int64_t ran = cpu - w.seen_cpu;
#ifdef CUDAEMU_PREEMPT
        if (preempt_ && ran > quantum && w.preempt.load(std::memory_order_relaxed) != s) {
          w.preempt.store(s, std::memory_order_relaxed);
          pthread_kill(w.os, preempt_signal());
        }
#endif
        if (ran > limit + (preempt_ ? limit : 0)) give_up(w, ran * 1e-9);
      }
    }
  }
  [[noreturn]] void give_up(const Watch& w, double seconds) {
    const Block* b = w.block.load();
    const Thread* t = w.thread.load();
    std::fprintf(stderr,
                 "cudaemu: kernel '%s' block (%u,%u,%u) thread (%u,%u,%u) has run for %.1f s (CPU) without reaching a "
                 "barrier, a warp collective, a spin point (atomic, __threadfence, __nanosleep) or its end, and "
                 "this build cannot preempt it (%s); a spin-wait on a plain load? Aborting instead of hanging "
                 "(CUDAEMU_TIMEOUT=%u s).\n",
                 b ? b->launch->kernel : "?", b ? b->idx.x : 0, b ? b->idx.y : 0, b ? b->idx.z : 0, t ? t->tid.x : 0,
                 t ? t->tid.y : 0, t ? t->tid.z : 0, seconds,
                 no_preempt_reason(),
                 config().timeout_s);
    std::fflush(stderr);
    std::abort();
  }
  const char* no_preempt_reason() const {
#if defined(CUDAEMU_ASAN)
    return "an AddressSanitizer build";
#elif defined(CUDAEMU_UCONTEXT)
    return "ucontext switching";
#else
    return preempt_ ? "the preemption signal was not taken" : "signal SIGRTMIN+5 has another handler";
#endif
  }
  Watch* w_;
  size_t n_;
  bool preempt_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};
#endif  // !CUDAEMU_THREADS

}  // namespace cudaemu
