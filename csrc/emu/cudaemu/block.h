// cudaemu/block.h -- one thread block: its emulated CUDA threads, the block barrier, the warp
// rendezvous, and the checks that turn CUDA undefined behaviour into a reported error.
// Part of csrc/emu/cudaemu.h.
//
// Every synchronising intrinsic is an *arrival*: the calling thread records what it waits for
// (site, mask, value) and either completes the rendezvous (it was the last one needed: it
// computes every participant's result and releases them) or parks. Parking means "switch to
// the block scheduler" in fiber mode and "wait on the block's condition variable" in thread
// mode; all other logic is shared. When no thread of a block can run any more, that is a
// deadlock and is reported with the source lines every thread is stuck at.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <cstring>
#include <source_location>
#include <string>
#include <utility>
#include <vector>
#ifdef CUDAEMU_THREADS
#include <atomic>
#include <thread>
#if defined(__SANITIZE_THREAD__)
#define CUDAEMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUDAEMU_TSAN 1
#endif
#endif
#ifdef CUDAEMU_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" void AnnotateIgnoreReadsBegin(const char*, int);
extern "C" void AnnotateIgnoreReadsEnd(const char*, int);
extern "C" void AnnotateIgnoreWritesBegin(const char*, int);
extern "C" void AnnotateIgnoreWritesEnd(const char*, int);
#endif
#endif

namespace cudaemu {

// Where a thread waits: the intrinsic's name and the caller's source line.
struct Site {
  const char* what = "";
  const char* file = "";
  unsigned line = 0;
};
inline Site site(const char* what, const std::source_location& l) { return {what, l.file_name(), (unsigned)l.line()}; }
inline bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && std::strcmp(a.what, b.what) == 0 && std::strcmp(a.file, b.file) == 0;
}

enum class Wait : uint8_t { none, block_barrier, warp };
enum class BarOp : uint8_t { plain, count, all, any };
enum class WarpOp : uint8_t { sync, shfl, ballot, any, all, add, umin, umax, imin, imax, band, bor, bxor };

// Thrown inside an emulated thread to unwind it when its block has failed (caught at the
// bottom of that thread; kernels never see it unless they catch (...)).
struct Cancelled {};

// What a launch runs: the kernel body with its arguments bound, plus names for messages.
struct LaunchInfo {
  const char* kernel = "?";
  dim3 grid, block;
  size_t dyn_smem = 0;
#ifdef CUDAEMU_STATIC_SHARED
  const ModuleSmem* statics = nullptr;  // the static __shared__ variables of the kernel's module
#endif
  void (*invoke)(const void*) = nullptr;
  const void* body = nullptr;
};

struct Thread {
  uint3 tid{};
  unsigned flat = 0;
  bool started = false, done = false;
  Wait wait = Wait::none;
  Site site;          // where it waits (valid while wait != none)
  WarpOp op{};        // warp collective it waits in
  unsigned mask = 0;  // its mask
  int src = -1;       // shuffle: lane it reads (-1: keeps its own value)
  uint64_t value = 0; // shuffle value / predicate / reduce operand it contributes
  uint64_t result = 0;  // filled in by whoever completes the rendezvous
  unsigned group = 0;   // lanes of the rendezvous it took part in
  char tsan_sync = 0;   // thread mode: its address is a ThreadSanitizer sync object
  // CUDAEMU_SPIN_WAITS (spin.h, watchdog.h):
  Site spin;            // its latest spin point (atomic, fence, __nanosleep), for stall reports
  volatile bool preempted = false;  // fiber mode: switched out by the watchdog signal
  volatile int in_harness = 0;      // fiber mode: inside harness code, which must not be preempted
#ifndef CUDAEMU_THREADS
  Context ctx;
#endif
};

struct Block {
  const LaunchInfo* launch = nullptr;
  uint3 idx{};
  unsigned n = 0;  // threads per block
  std::vector<Thread> threads;
  unsigned blocked = 0, done = 0;  // parked threads, exited threads
  unsigned bar_arrived = 0, bar_true = 0;  // block barrier: arrivals in this phase, true predicates
  Site bar_site;
  bool failed = false;
  std::string message;  // first error of this block
  unsigned long long bar_phase = 0;  // completed block-barrier phases
  unsigned long long progress = 0;   // arrivals at barriers / warp collectives and exits so far
  char bar_tsan[2] = {0, 0};  // ThreadSanitizer sync objects for even / odd barrier phases
#ifdef CUDAEMU_THREADS
  std::atomic<bool> spin{false};
#else
  Context scheduler;
#endif

  void reset(const LaunchInfo* l, uint3 block_idx) {
    launch = l;
    idx = block_idx;
    const dim3 b = l->block;
    n = b.x * b.y * b.z;
    threads.assign(n, Thread{});
    for (unsigned i = 0; i < n; ++i) {
      threads[i].flat = i;
      threads[i].tid = uint3{i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
    }
    blocked = done = bar_arrived = bar_true = 0;
    bar_phase = progress = 0;
    failed = false;
    message.clear();
  }
  unsigned runnable() const { return n - blocked - done; }
  // Lanes of warp w that exist (the last warp of a block may be partial).
  unsigned present_lanes(unsigned w) const {
    unsigned left = n - w * 32;
    return left >= 32 ? 0xffffffffu : ((1u << left) - 1u);
  }
};

// The block and emulated thread running on this OS thread (set by the scheduler before each
// switch into a fiber, or once per std::thread in thread mode).
inline thread_local Block* tl_block = nullptr;
inline thread_local Thread* tl_thread = nullptr;

#ifdef CUDAEMU_THREADS
// Thread mode guards the block's state with a spinlock made of a relaxed atomic plus fences.
// ThreadSanitizer derives no happens-before from either, and is told to ignore the harness's
// own accesses inside the lock, so the only orderings it sees are the ones CUDA guarantees,
// added explicitly at barriers and warp collectives (tsan_release/tsan_acquire below).
// A std::mutex would order every thread of the block after every other one and hide exactly
// the shared-memory races TSan is here to find.
struct Lock {
  Block& b;
  explicit Lock(Block& blk) : b(blk) { acquire(); }
  ~Lock() { release(); }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  void acquire() {
    while (b.spin.exchange(true, std::memory_order_relaxed)) std::this_thread::yield();
    std::atomic_thread_fence(std::memory_order_acquire);
#ifdef CUDAEMU_TSAN
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
#endif
  }
  void release() {
#ifdef CUDAEMU_TSAN
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
    std::atomic_thread_fence(std::memory_order_release);
    b.spin.store(false, std::memory_order_relaxed);
  }
  template <class Pred> void wait(Pred done) {
    while (!done()) {
      release();
      std::this_thread::yield();
      acquire();
    }
  }
};
#ifdef CUDAEMU_TSAN
inline void tsan_release(void* p) { __tsan_release(p); }
inline void tsan_acquire(void* p) { __tsan_acquire(p); }
#else
inline void tsan_release(void*) {}
inline void tsan_acquire(void*) {}
#endif
#else
// Fibers of a block share one OS thread: nothing to lock. But the harness's bookkeeping assumes
// that no other fiber runs in between, so the watchdog must not preempt a fiber inside it.
struct Lock {
  Thread* t = tl_thread;
  explicit Lock(Block&) {
    if (t) t->in_harness = t->in_harness + 1;
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~Lock() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (t) t->in_harness = t->in_harness - 1;
  }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
};
inline void tsan_release(void*) {}
inline void tsan_acquire(void*) {}
#endif

inline std::string who(const Block& b, const Thread& t) {
  return format("kernel '%s' block (%u,%u,%u) thread (%u,%u,%u)", b.launch->kernel, b.idx.x, b.idx.y, b.idx.z,
                t.tid.x, t.tid.y, t.tid.z);
}
inline std::string where(const Site& s) { return format("%s at %s:%u", s.what, s.file, s.line); }

// Marks the block failed (first message wins) and wakes everybody so they unwind.
inline void fail(Block& b, std::string msg) {
  if (!b.failed) {
    b.failed = true;
    b.message = std::move(msg);
  }
}

// " N thread(s) <what> [first: thread (x,y,z)];" for every distinct description, in thread
// order; threads whose describe() is "" are left out. Shared by the deadlock and stall reports.
template <class Describe>
inline std::string thread_groups(const Block& b, Describe describe) {
  struct Group { std::string what; unsigned count; const Thread* first; };
  std::vector<Group> groups;
  for (const Thread& t : b.threads) {
    std::string what = describe(t);
    if (what.empty()) continue;
    bool found = false;
    for (Group& g : groups)
      if (g.what == what) { ++g.count; found = true; break; }
    if (!found) groups.push_back({std::move(what), 1, &t});
  }
  std::string m;
  for (const Group& g : groups)
    m += format(" %u thread(s) %s [first: thread (%u,%u,%u)];", g.count, g.what.c_str(), g.first->tid.x,
                g.first->tid.y, g.first->tid.z);
  return m;
}

// The message for "no thread of the block can run": every distinct wait site with a count.
inline std::string deadlock_report(const Block& b) {
  std::string m = format("deadlock in kernel '%s' block (%u,%u,%u): no thread can make progress;",
                         b.launch->kernel, b.idx.x, b.idx.y, b.idx.z);
  m += thread_groups(b, [](const Thread& t) {
    if (t.done || t.wait == Wait::none) return std::string();
    return "wait in " + where(t.site) + (t.wait == Wait::warp ? format(" (mask 0x%08x)", t.mask) : "");
  });
  if (b.done) m += format(" %u thread(s) have exited;", b.done);
  m.pop_back();
  return m;
}

// The message for "threads run but none reaches a barrier, a warp collective or its end" (a
// spin-wait nobody will release): what every live thread is doing.
inline std::string stall_report(const Block& b, double seconds, unsigned limit_s) {
  std::string m = format("stall in kernel '%s' block (%u,%u,%u): for %.1f s no thread reached a barrier, a warp "
                         "collective or its end (a spin-wait that is never released?);",
                         b.launch->kernel, b.idx.x, b.idx.y, b.idx.z, seconds);
  m += thread_groups(b, [](const Thread& t) {
    return t.done                ? std::string()
           : t.wait != Wait::none ? "wait in " + where(t.site)
           : t.preempted          ? std::string("were preempted while running (no spin point reached)")
           : t.spin.line          ? "spin at " + where(t.spin)
                                  : std::string("have not started");
  });
  m += format(" the limit is CUDAEMU_TIMEOUT=%u s", limit_s);
  return m;
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Tells a stalled block from a progressing one: fed the block's progress counter now and then,
// it returns the seconds without progress once they exceed CUDAEMU_TIMEOUT (0: never), else 0.
struct StallClock {
  const int64_t limit_ns = (int64_t)config().timeout_s * 1'000'000'000;
  unsigned long long seen = 0;
  int64_t since = now_ns();
  double stalled_for(unsigned long long progress) {
    const int64_t now = now_ns();
    if (progress != seen) {
      seen = progress;
      since = now;
      return 0;
    }
    return limit_ns > 0 && now - since > limit_ns ? (now - since) * 1e-9 : 0;
  }
};

[[noreturn]] inline void unwind() { throw Cancelled{}; }

#ifndef CUDAEMU_THREADS
// Fiber mode: hand control back to the block scheduler; returns when resumed.
inline void to_scheduler(Block& b, Thread& me) { switch_context(me.ctx, b.scheduler); }
#endif

// Parks the calling thread until a rendezvous releases it (me.wait == none) or the block fails.
inline void park(Block& b, Thread& me, Lock& lk) {
  ++b.blocked;
  if (b.runnable() == 0) fail(b, deadlock_report(b));
  if (b.failed) unwind();
#ifdef CUDAEMU_THREADS
  lk.wait([&] { return me.wait == Wait::none || b.failed; });
#else
  (void)lk;
  while (me.wait != Wait::none && !b.failed) to_scheduler(b, me);
#endif
  if (b.failed) unwind();
}

// Wakes the threads just released. In fiber mode the releasing thread also yields, so every
// scheduling round advances each thread by exactly one synchronisation phase, in the
// configured order (otherwise the last arriver would always run ahead).
inline void after_release(Block& b, Thread& me, Lock& lk) {
  (void)lk;
#ifdef CUDAEMU_THREADS
  (void)me;  // the released threads notice by themselves (they poll under the lock)
#else
  to_scheduler(b, me);
#endif
  if (b.failed) unwind();
}

// __syncthreads and its _count/_and/_or variants. Every thread of the block must reach the
// SAME call (same source line); anything else is reported, as is a thread that has exited.
inline int sync_block(BarOp op, int pred, const Site& s) {
  Block& b = *tl_block;
  Thread& me = *tl_thread;
  Lock lk(b);
  if (b.failed) unwind();
  if (b.done > 0) {
    const Thread* gone = nullptr;
    for (const Thread& t : b.threads) if (t.done) { gone = &t; break; }
    fail(b, format("divergent barrier: %s reaches %s but %u thread(s) of the block have already exited "
                   "(first: thread (%u,%u,%u)); every thread of a block must reach every __syncthreads",
                   who(b, me).c_str(), where(s).c_str(), b.done, gone->tid.x, gone->tid.y, gone->tid.z));
    unwind();
  }
  if (b.bar_arrived == 0) {
    b.bar_site = s;
    b.bar_true = 0;
  } else if (!same_site(b.bar_site, s)) {
    fail(b, format("divergent barrier: %s waits in %s while %u other thread(s) wait in %s", who(b, me).c_str(),
                   where(s).c_str(), b.bar_arrived, where(b.bar_site).c_str()));
    unwind();
  }
  ++b.bar_arrived;
  ++b.progress;
  b.bar_true += pred != 0;
  void* sync = &b.bar_tsan[0] + (b.bar_phase & 1);  // CUDA: everything before the barrier
  tsan_release(sync);                                // happens before everything after it
  if (b.bar_arrived < b.n) {
    me.site = s;
    me.wait = Wait::block_barrier;
    park(b, me, lk);
    tsan_acquire(sync);
    return (int)me.result;
  }
  // Last arrival: compute the result once and release the phase.
  uint64_t r = op == BarOp::count ? b.bar_true : op == BarOp::all ? (b.bar_true == b.n) : op == BarOp::any ? (b.bar_true > 0) : 0;
  for (Thread& t : b.threads)
    if (t.wait == Wait::block_barrier) { t.wait = Wait::none; t.result = r; --b.blocked; }
  b.bar_arrived = 0;
  ++b.bar_phase;
  me.result = r;
  tsan_acquire(sync);
  after_release(b, me, lk);
  return (int)r;
}

// Computes every participant's result once all lanes of 'group' have arrived.
inline void complete_warp(Block& b, unsigned base, unsigned group, WarpOp op) {
  uint64_t acc = 0;
  unsigned bits = 0;
  bool first = true;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(group >> l & 1)) continue;
    const Thread& t = b.threads[base + l];
    uint64_t v = t.value;
    bits |= (v != 0) << l;
    if (first) { acc = v; first = false; continue; }
    switch (op) {
      case WarpOp::add: acc = (uint32_t)(acc + v); break;
      case WarpOp::umin: acc = (uint32_t)v < (uint32_t)acc ? v : acc; break;
      case WarpOp::umax: acc = (uint32_t)v > (uint32_t)acc ? v : acc; break;
      case WarpOp::imin: acc = (int32_t)v < (int32_t)acc ? v : acc; break;
      case WarpOp::imax: acc = (int32_t)v > (int32_t)acc ? v : acc; break;
      case WarpOp::band: acc &= v; break;
      case WarpOp::bor: acc |= v; break;
      case WarpOp::bxor: acc ^= v; break;
      default: break;
    }
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!(group >> l & 1)) continue;
    Thread& t = b.threads[base + l];
    t.group = group;
    switch (op) {
      case WarpOp::sync: t.result = 0; break;
      case WarpOp::shfl: t.result = t.src < 0 ? t.value : b.threads[base + t.src].value; break;
      case WarpOp::ballot: t.result = bits; break;
      case WarpOp::any: t.result = bits != 0; break;
      case WarpOp::all: t.result = bits == group; break;
      default: t.result = acc; break;
    }
  }
}

// All warp-synchronous intrinsics (__syncwarp, __shfl*_sync, __ballot/__any/__all_sync,
// __reduce_*_sync). Lanes named in 'mask' rendezvous; a lane may only read from a lane that
// is in the mask and exists; a lane named in the mask that has exited is an error.
inline uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int src, const Site& s) {
  Block& b = *tl_block;
  Thread& me = *tl_thread;
  Lock lk(b);
  if (b.failed) unwind();
  const unsigned lane = me.flat % 32, w = me.flat / 32, base = w * 32;
  const unsigned present = b.present_lanes(w);
  if (!(mask >> lane & 1)) {
    fail(b, format("bad warp mask: %s (lane %u) calls %s with mask 0x%08x, which does not include its own lane",
                   who(b, me).c_str(), lane, where(s).c_str(), mask));
    unwind();
  }
  if (src >= 0 && (unsigned)src != lane) {
    if (!(mask >> src & 1) || !(present >> src & 1)) {
      fail(b, format("bad shuffle: %s (lane %u) in %s reads lane %d, which is %s (mask 0x%08x); the value would be undefined",
                     who(b, me).c_str(), lane, where(s).c_str(), src,
                     (present >> src & 1) ? "not in the mask" : "beyond the block's last thread", mask));
      unwind();
    }
  }
  const unsigned group = mask & present;
  bool all_here = true;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(group >> l & 1) || l == lane) continue;
    const Thread& t = b.threads[base + l];
    if (t.done) {
      fail(b, format("bad warp mask: %s (lane %u) calls %s with mask 0x%08x, but lane %u of its warp has already exited",
                     who(b, me).c_str(), lane, where(s).c_str(), mask, l));
      unwind();
    }
    bool here = t.wait == Wait::warp && t.mask == mask;
    if (here && t.op != op) {
      fail(b, format("mismatched warp collectives: %s (lane %u) calls %s while lane %u waits in %s with the same mask 0x%08x",
                     who(b, me).c_str(), lane, where(s).c_str(), l, where(t.site).c_str(), mask));
      unwind();
    }
    all_here &= here;
  }
  ++b.progress;
  me.op = op;
  me.mask = mask;
  me.value = value;
  me.src = (src >= 0 && (unsigned)src != lane) ? src : -1;
  me.site = s;
  tsan_release(&me.tsan_sync);  // CUDA: the lanes of a warp collective synchronise with each other
  if (!all_here) {
    me.wait = Wait::warp;
    park(b, me, lk);
  } else {
    complete_warp(b, base, group, op);
    for (unsigned l = 0; l < 32; ++l) {
      Thread& t = b.threads[base + l];
      if ((group >> l & 1) && l != lane) { t.wait = Wait::none; --b.blocked; }
    }
  }
  for (unsigned l = 0; l < 32; ++l)
    if (me.group >> l & 1) tsan_acquire(&b.threads[base + l].tsan_sync);
  if (all_here) after_release(b, me, lk);
  return me.result;
}

// Called when a thread's kernel body has returned (or unwound).
inline void thread_exit(Block& b, Thread& me) {
  Lock lk(b);
  me.done = true;
  me.wait = Wait::none;
  ++b.done;
  ++b.progress;
  if (!b.failed) {
    if (b.bar_arrived > 0) {
      fail(b, format("divergent barrier: %s exits while %u thread(s) wait in %s; every thread of a block must reach "
                     "every __syncthreads", who(b, me).c_str(), b.bar_arrived, where(b.bar_site).c_str()));
    } else {
      const unsigned lane = me.flat % 32, base = me.flat / 32 * 32;
      for (unsigned l = 0; l < 32 && base + l < b.n && !b.failed; ++l) {
        const Thread& t = b.threads[base + l];
        if (t.wait == Wait::warp && (t.mask >> lane & 1))
          fail(b, format("bad warp mask: %s (lane %u) exits while lane %u waits for it in %s (mask 0x%08x)",
                         who(b, me).c_str(), lane, l, where(t.site).c_str(), t.mask));
      }
    }
    if (!b.failed && b.blocked > 0 && b.runnable() == 0) fail(b, deadlock_report(b));
  }
}

// Runs the kernel body as thread 'me' of block 'b' and records how it ended.
inline void run_thread(Block& b, Thread& me) {
  try {
    b.launch->invoke(b.launch->body);
  } catch (const Cancelled&) {
  } catch (const std::exception& e) {
    Lock lk(b);
    fail(b, format("%s threw: %s", who(b, me).c_str(), e.what()));
  } catch (...) {
    Lock lk(b);
    fail(b, format("%s threw an exception", who(b, me).c_str()));
  }
  thread_exit(b, me);
}

}  // namespace cudaemu
