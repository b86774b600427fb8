// cudaemu/launch.h -- kernel launch: configuration checks, the per-block scheduler, workers.
// Part of csrc/emu/cudaemu.h.
//
// Fiber mode (default): blocks are handed out to CUDAEMU_WORKERS OS threads (the launching
// thread is one of them); a worker runs one block at a time, all of that block's CUDA threads
// as fibers on its own stack pool. Static __shared__ (CUDAEMU_STATIC_SHARED) is 'static
// thread_local', i.e. one copy per worker, which is exactly one copy per running block; the
// worker poisons its copy before each block (static_smem.h). With CUDAEMU_SPIN_WAITS a
// watchdog preempts fibers that spin (watchdog.h).
// Thread mode (-DCUDAEMU_THREADS, for ThreadSanitizer): blocks run one after another, each
// CUDA thread is a std::thread, static __shared__ is a plain 'static'.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <source_location>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace cudaemu {

// Per-thread view of the builtin variables and of the block's dynamic shared memory.
inline thread_local unsigned char* tl_dyn_smem = nullptr;

// Shared-memory limits of an H100 (sm_90): 48 KiB of dynamic shared memory without opt-in,
// up to 227 KiB after cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n).
constexpr size_t kDefaultDynSmem = 48 << 10;
constexpr size_t kMaxDynSmemOptIn = 227 << 10;

struct FuncAttrs {
  std::mutex mu;
  std::map<const void*, size_t> max_dyn_smem;  // kernel -> opted-in limit
};
inline FuncAttrs& func_attrs() {
  static FuncAttrs a;
  return a;
}
inline size_t dyn_smem_limit(const void* fn) {
  FuncAttrs& a = func_attrs();
  std::lock_guard<std::mutex> g(a.mu);
  auto it = a.max_dyn_smem.find(fn);
  return it == a.max_dyn_smem.end() ? kDefaultDynSmem : it->second;
}

// The checks a real launch does; returns "" when the configuration is valid.
inline std::string check_config(const LaunchInfo& li, const void* fn) {
  const dim3 g = li.grid, b = li.block;
  const size_t smem = li.dyn_smem;
  unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0) return format("grid (%u,%u,%u) is empty", g.x, g.y, g.z);
  if (b.x == 0 || b.y == 0 || b.z == 0) return format("block (%u,%u,%u) is empty", b.x, b.y, b.z);
  if (threads > 1024) return format("block (%u,%u,%u) has %llu threads; the limit is 1024", b.x, b.y, b.z, threads);
  if (b.x > 1024 || b.y > 1024 || b.z > 64)
    return format("block (%u,%u,%u) exceeds the per-dimension limits (1024, 1024, 64)", b.x, b.y, b.z);
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    return format("grid (%u,%u,%u) exceeds the limits (2^31-1, 65535, 65535)", g.x, g.y, g.z);
  size_t limit = dyn_smem_limit(fn);
  const char* hint = limit == kDefaultDynSmem ? " (raise it with cudaFuncSetAttribute(kernel, "
                                                "cudaFuncAttributeMaxDynamicSharedMemorySize, n), up to 232448)" : "";
  if (smem > limit)
    return format("%zu bytes of dynamic shared memory requested; the limit is %zu%s", smem, limit, hint);
#ifdef CUDAEMU_STATIC_SHARED
  // Static shared memory shares the block's budget: 48 KiB in all, or static + the opted-in
  // dynamic size up to 227 KiB (a kernel's own __shared__ variables; see static_smem.h).
  size_t stat = static_smem_bytes(*li.statics, fn);
  if (stat > kDefaultDynSmem)
    return format("the kernel declares %zu bytes of static __shared__ memory; the limit is %zu", stat, kDefaultDynSmem);
  size_t total_limit = limit == kDefaultDynSmem ? kDefaultDynSmem : kMaxDynSmemOptIn;
  if (stat + smem > total_limit)
    return format("%zu bytes of static plus %zu bytes of dynamic shared memory exceed the limit of %zu%s", stat,
                  smem, total_limit, hint);
#endif
  return "";
}

inline uint3 unflatten(unsigned long long i, dim3 d) {
  return uint3{(unsigned)(i % d.x), (unsigned)(i / d.x % d.y), (unsigned)(i / (1ull * d.x * d.y))};
}

// splitmix64: a tiny, good-enough generator for the random resume order.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

// Dynamic shared memory of one worker: exactly 'bytes' long (so ASan sees overruns), 128-aligned.
struct DynSmem {
  unsigned char* p = nullptr;
  size_t bytes = 0;
  explicit DynSmem(size_t n) : bytes(n) { p = static_cast<unsigned char*>(::operator new(n ? n : 1, std::align_val_t(128))); }
  ~DynSmem() { ::operator delete(p, std::align_val_t(128)); }
  DynSmem(const DynSmem&) = delete;
  DynSmem& operator=(const DynSmem&) = delete;
  // 0xFF bytes are NaN as float/half/bf16 and -1 as integers: a read-before-write shows up.
  void poison() { if (config().poison && bytes) std::memset(p, 0xFF, bytes); }
};

#ifndef CUDAEMU_THREADS
// ------------------------------------------------------------------------ fiber mode
[[noreturn]] inline void fiber_entry() {
  Block& b = *tl_block;
  Thread& me = *tl_thread;
  fiber_started(b.scheduler);
  run_thread(b, me);
  switch_context(me.ctx, b.scheduler, /*from_dies=*/true);
  __builtin_trap();  // a finished fiber is never resumed
}

inline void resume(Block& b, Thread& t) {
  tl_thread = &t;
  threadIdx = t.tid;
  t.started = true;
#ifdef CUDAEMU_SPIN_WAITS
  Watch* w = tl_watch;
  if (w) {
    w->block.store(&b, std::memory_order_relaxed);
    w->thread.store(&t, std::memory_order_relaxed);
    w->slice.store(++w->slices, std::memory_order_relaxed);
  }
#endif
  switch_context(b.scheduler, t.ctx);
#ifdef CUDAEMU_SPIN_WAITS
  if (w) w->slice.store(0, std::memory_order_relaxed);
#endif
}

// Runs one block to completion: rounds in which every runnable fiber runs until it blocks,
// reaches a spin point, is preempted or exits, in forward / reverse / seeded-random order.
// Rounds without any arrival or exit for CUDAEMU_TIMEOUT seconds are a stall. On failure the
// started fibers are resumed once more so they unwind (destructors run), except preempted
// ones (they would spin on), then the block is abandoned.
inline void run_block(Block& b, const StackPool& stacks, unsigned long long block_id) {
  const Config& cfg = config();
  StallClock stall;
  for (unsigned i = 0; i < b.n; ++i) make_context(b.threads[i].ctx, stacks.stack(i), stacks.usable(), &fiber_entry);
  Rng rng{cfg.seed ^ (block_id * 0xD1B54A32D192ED03ull)};
  std::vector<unsigned> order;
  order.reserve(b.n);
  while (!b.failed && b.done < b.n) {
    order.clear();
    for (unsigned i = 0; i < b.n; ++i)
      if (!b.threads[i].done && b.threads[i].wait == Wait::none) order.push_back(i);
    if (order.empty()) { fail(b, deadlock_report(b)); break; }  // normally caught in park()
    if (cfg.order == Order::reverse) std::reverse(order.begin(), order.end());
    if (cfg.order == Order::random)
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.next() % i]);
    for (unsigned i : order) {
      if (b.failed) break;
      resume(b, b.threads[i]);
    }
    if (const double secs = stall.stalled_for(b.progress); secs > 0 && !b.failed)
      fail(b, stall_report(b, secs, cfg.timeout_s));
  }
  if (b.failed)
    for (Thread& t : b.threads)
      if (t.started && !t.done && !t.preempted) resume(b, t);
}

struct GridRun {
  const LaunchInfo* info;
#ifdef CUDAEMU_SPIN_WAITS
  Watch* watches;  // one per worker
  Watchdog* watchdog;
#endif
  unsigned long long nblocks;
  std::atomic<unsigned long long> next{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::string error;  // first failing block's message
};

inline void worker(GridRun& run, unsigned k) {
  const LaunchInfo& li = *run.info;
#ifdef CUDAEMU_SPIN_WAITS
  Watch& watch = run.watches[k];
  run.watchdog->enlist(watch);
  tl_watch = &watch;
  struct Retire {  // on every way out
    GridRun& run;
    Watch& watch;
    ~Retire() {
      tl_watch = nullptr;
      run.watchdog->retire(watch);
    }
  } retire{run, watch};
#else
  (void)k;
#endif
  StackPool stacks;
  const unsigned n = li.block.x * li.block.y * li.block.z;
  if (!stacks.reserve(n, config().stack_bytes)) {
    std::lock_guard<std::mutex> g(run.mu);
    if (run.error.empty()) run.error = format("cannot map %u fiber stacks for kernel '%s'", n, li.kernel);
    run.stop = true;
    return;
  }
  DynSmem smem(li.dyn_smem);
  Block b;
  tl_block = &b;
  tl_dyn_smem = smem.p;
  blockDim = li.block;
  gridDim = li.grid;
  for (unsigned long long i; !run.stop && (i = run.next.fetch_add(1)) < run.nblocks;) {
    blockIdx = unflatten(i, li.grid);
    b.reset(&li, blockIdx);
    smem.poison();
#ifdef CUDAEMU_STATIC_SHARED
    poison_static_smem(*li.statics);
#endif
    run_block(b, stacks, i);
    if (b.failed) {
      std::lock_guard<std::mutex> g(run.mu);
      if (run.error.empty()) run.error = b.message;
      run.stop = true;
    }
  }
  tl_block = nullptr;
  tl_thread = nullptr;
}

inline std::string run_grid(const LaunchInfo& li) {
  GridRun run;
  run.info = &li;
  run.nblocks = 1ull * li.grid.x * li.grid.y * li.grid.z;
  const unsigned nw = (unsigned)std::min<unsigned long long>((unsigned long long)std::max(1, config().workers), run.nblocks);
#ifdef CUDAEMU_SPIN_WAITS
  std::unique_ptr<Watch[]> watches(new Watch[nw]);
  Watchdog watchdog(watches.get(), nw);
  run.watches = watches.get();
  run.watchdog = &watchdog;
#endif
  std::vector<std::thread> helpers;
  for (unsigned i = 1; i < nw; ++i) helpers.emplace_back([&run, i] { worker(run, i); });
  worker(run, 0);
  for (auto& h : helpers) h.join();
  return run.error;
}
#else
// ------------------------------------------------------------------------ thread mode
// Waits until all 'total' threads of block b have finished. Threads cannot be cancelled, so a
// block that makes no progress (no arrival at a barrier or collective, no exit) for
// CUDAEMU_TIMEOUT seconds is reported on stderr and the process aborts instead of hanging.
inline void await_block(Block& b, std::mutex& m, std::condition_variable& cv, const unsigned& finished) {
  StallClock stall;
  std::unique_lock<std::mutex> lk(m);
  while (finished < b.n) {
    cv.wait_for(lk, std::chrono::milliseconds(100));
    if (finished == b.n) continue;
    Lock blk(b);
    if (const double secs = stall.stalled_for(b.progress); secs > 0) {
      std::fprintf(stderr, "cudaemu: %s. Thread mode cannot stop the spinning threads: aborting.\n",
                   stall_report(b, secs, config().timeout_s).c_str());
      std::fflush(stderr);
      std::abort();
    }
  }
}

inline std::string run_grid(const LaunchInfo& li) {
  const unsigned long long nblocks = 1ull * li.grid.x * li.grid.y * li.grid.z;
  DynSmem smem(li.dyn_smem);
  Rng rng{config().seed};
  for (unsigned long long i = 0; i < nblocks; ++i) {
    Block b;
    b.reset(&li, unflatten(i, li.grid));
    smem.poison();
#ifdef CUDAEMU_STATIC_SHARED
    poison_static_smem(*li.statics);
#endif
    std::vector<unsigned> order(b.n);
    for (unsigned t = 0; t < b.n; ++t) order[t] = t;
    if (config().order == Order::reverse) std::reverse(order.begin(), order.end());
    if (config().order == Order::random)
      for (size_t k = order.size(); k > 1; --k) std::swap(order[k - 1], order[rng.next() % k]);
    std::mutex m;
    std::condition_variable cv;
    unsigned finished = 0;
    std::vector<std::thread> ts;
    ts.reserve(b.n);
    for (unsigned t : order)
      ts.emplace_back([&b, &li, &smem, &m, &cv, &finished, t] {
        Thread& me = b.threads[t];
        tl_block = &b;
        tl_thread = &me;
        tl_dyn_smem = smem.p;
        threadIdx = me.tid;
        blockIdx = b.idx;
        blockDim = li.block;
        gridDim = li.grid;
        me.started = true;
        run_thread(b, me);
        std::lock_guard<std::mutex> g(m);
        ++finished;
        cv.notify_one();
      });
    await_block(b, m, cv, finished);
    for (auto& t : ts) t.join();
    if (b.failed) return b.message;
  }
  return "";
}
#endif

// Entry point behind CUDAEMU_LAUNCH: checks the configuration, runs the grid synchronously
// (streams are accepted and ignored), and records any error for cudaGetLastError().
template <class Body>
inline void launch(const char* kernel, const void* fn, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   const Body& body, std::source_location loc = std::source_location::current()) {
  (void)stream;
  LaunchInfo li;
  li.kernel = kernel;
  li.grid = grid;
  li.block = block;
  li.dyn_smem = smem;
#ifdef CUDAEMU_STATIC_SHARED
  li.statics = &module_smem(fn);
#endif
  std::string bad = check_config(li, fn);
  if (!bad.empty()) {
    record_error(cudaErrorInvalidConfiguration,
                 format("launch of kernel '%s' at %s:%u: %s", kernel, loc.file_name(), (unsigned)loc.line(), bad.c_str()));
    return;
  }
  li.body = &body;
  li.invoke = [](const void* p) { (*static_cast<const Body*>(p))(); };
  std::string err = run_grid(li);
  if (!err.empty()) record_error(cudaErrorLaunchFailure, err);
}

template <class... P, class... A>
inline void launch_kernel(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, std::source_location loc, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "CUDAEMU_LAUNCH: wrong number of kernel arguments");
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  auto body = [&] { std::apply(kernel, params); };
  launch(name, reinterpret_cast<const void*>(kernel), grid, block, smem, stream, body, loc);
}

}  // namespace cudaemu
