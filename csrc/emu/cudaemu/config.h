// cudaemu/config.h -- runtime configuration (read from env vars) and error reporting.
// Part of csrc/emu/cudaemu.h; not meant to be included on its own.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

namespace cudaemu {

// Order in which the CUDA threads of a block are resumed in each scheduling round. A round
// runs every runnable thread until it blocks (barrier, warp collective) or exits, so a kernel
// that forgets a __syncthreads sees a different interleaving in each order.
enum class Order { forward, reverse, random };

inline const char* order_name(Order o) {
  return o == Order::forward ? "forward" : o == Order::reverse ? "reverse" : "random";
}

struct Config {
  Order order = Order::forward;  // CUDAEMU_ORDER=forward|reverse|random
  uint64_t seed = 0;             // CUDAEMU_SEED: seeds the random order (per block: seed ^ block id)
  bool poison = true;            // CUDAEMU_POISON=0|1: fill static+dynamic smem and cudaMalloc memory with 0xFF
  int workers = 1;               // CUDAEMU_WORKERS: OS threads running blocks (default: hardware threads)
  bool abort_on_error = false;   // CUDAEMU_ABORT=1: print the first error and abort()
  size_t stack_bytes = 256 << 10;  // CUDAEMU_STACK_KB: stack of each emulated CUDA thread
  unsigned timeout_s = 30;  // CUDAEMU_TIMEOUT: a block whose threads run this long without any
                            // reaching a barrier, warp collective or its end fails (0: never)
  unsigned preempt_ms = 100;  // CUDAEMU_PREEMPT_MS: CPU time after which the watchdog preempts a
                              // fiber that reached no spin point (fiber mode, see watchdog.h)

  // Reads the CUDAEMU_* variables; unset or malformed ones keep their defaults (a malformed
  // value is reported on stderr once, so a typo does not silently change the test).
  static Config from_env() {
    Config c;
    c.workers = (int)std::thread::hardware_concurrency();
    if (c.workers < 1) c.workers = 1;
    if (const char* e = std::getenv("CUDAEMU_ORDER")) {
      if (!std::strcmp(e, "forward")) c.order = Order::forward;
      else if (!std::strcmp(e, "reverse")) c.order = Order::reverse;
      else if (!std::strcmp(e, "random")) c.order = Order::random;
      else std::fprintf(stderr, "cudaemu: ignoring CUDAEMU_ORDER=%s (want forward|reverse|random)\n", e);
    }
    auto num = [](const char* name, unsigned long long& out) {
      const char* e = std::getenv(name);
      if (!e || !*e) return false;
      char* end = nullptr;
      unsigned long long v = std::strtoull(e, &end, 0);
      if (*end) { std::fprintf(stderr, "cudaemu: ignoring %s=%s (not a number)\n", name, e); return false; }
      out = v;
      return true;
    };
    unsigned long long v;
    if (num("CUDAEMU_SEED", v)) c.seed = v;
    if (num("CUDAEMU_POISON", v)) c.poison = v != 0;
    if (num("CUDAEMU_WORKERS", v) && v > 0) c.workers = (int)v;
    if (num("CUDAEMU_ABORT", v)) c.abort_on_error = v != 0;
    if (num("CUDAEMU_STACK_KB", v) && v >= 16) c.stack_bytes = (size_t)v << 10;
    if (num("CUDAEMU_TIMEOUT", v)) c.timeout_s = (unsigned)std::min<unsigned long long>(v, 1u << 30);
    if (num("CUDAEMU_PREEMPT_MS", v) && v > 0) c.preempt_ms = (unsigned)std::min<unsigned long long>(v, 1u << 30);
    return c;
  }
};

// The process-wide configuration. Change it between launches (not during one), or call
// reload_config() after changing the environment, e.g. from a Python test via the extension.
inline Config& config() {
  static Config c = Config::from_env();
  return c;
}
inline void reload_config() { config() = Config::from_env(); }

// ------------------------------------------------------------------------------- errors
// Like CUDA's, the "last error" is per host thread: a launch records its error on the thread
// that launched it (errors found on worker threads are carried back by the launch).
struct ErrorState {
  cudaError_t code = cudaSuccess;
  std::string message;  // text of the most recent error (kept after cudaGetLastError clears code)
};
inline ErrorState& error_state() {
  thread_local ErrorState s;
  return s;
}

inline const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    default: return "cudaErrorUnknown";
  }
}

// Records an error for the calling host thread; with CUDAEMU_ABORT=1 prints it and aborts.
inline void record_error(cudaError_t code, const std::string& msg) {
  if (config().abort_on_error) {
    std::fprintf(stderr, "cudaemu: %s: %s\n", error_name(code), msg.c_str());
    std::fflush(stderr);
    std::abort();
  }
  ErrorState& s = error_state();
  s.code = code;
  s.message = msg;
}

// Text of the most recent error recorded on this host thread ("" if none yet).
inline const std::string& last_error_message() { return error_state().message; }

// printf into a std::string (messages name kernels, blocks, threads and source lines).
template <class... A>
inline std::string format(const char* fmt, A... args) {
  int n = std::snprintf(nullptr, 0, fmt, args...);
  std::string s(n > 0 ? (size_t)n : 0, '\0');
  if (n > 0) std::snprintf(s.data(), s.size() + 1, fmt, args...);
  return s;
}

}  // namespace cudaemu
