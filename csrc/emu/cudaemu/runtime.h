// cudaemu/runtime.h -- the host-side CUDA runtime subset: memory, streams, errors, attributes.
// Part of csrc/emu/cudaemu.h. "Device" memory is ordinary heap memory (so AddressSanitizer
// sees every overrun); streams exist but every launch and copy is synchronous.
// These are C++ functions in the global namespace (not extern "C"), so they never clash with
// a real libcudart loaded in the same process (e.g. by torch).
#pragma once

#include <cstdlib>
#include <cstring>

inline cudaError_t cudaemu_fail(cudaError_t e, const std::string& msg) {
  cudaemu::record_error(e, msg);
  return e;
}

inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return cudaemu_fail(cudaErrorInvalidValue, "cudaMalloc: devPtr is NULL");
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  // Exact size (no rounding up): an access one past the end lands in ASan's redzone.
  if (posix_memalign(p, 256, bytes) != 0) {
    *p = nullptr;
    return cudaemu_fail(cudaErrorMemoryAllocation, cudaemu::format("cudaMalloc: cannot allocate %zu bytes", bytes));
  }
  // Fresh device memory is not zero on a GPU either: poison it so reading unwritten output shows.
  if (cudaemu::config().poison) std::memset(*p, 0xFF, bytes);
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  (void)kind;  // one address space: every kind is a plain copy
  if (bytes && (!dst || !src)) return cudaemu_fail(cudaErrorInvalidValue, "cudaMemcpy: NULL pointer");
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t = nullptr) {
  return cudaMemcpy(dst, src, bytes, kind);
}
inline cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes && !dst) return cudaemu_fail(cudaErrorInvalidValue, "cudaMemset: NULL pointer");
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t = nullptr) {
  return cudaMemset(dst, value, bytes);
}

// Streams are distinct non-null handles; work on them has already completed when it returns.
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  if (!s) return cudaemu_fail(cudaErrorInvalidValue, "cudaStreamCreate: pStream is NULL");
  *s = reinterpret_cast<cudaStream_t>(new char(0));
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
inline cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete reinterpret_cast<char*>(s);
  return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaemu::error_state().code; }

// Like CUDA: cudaGetLastError returns and clears the error of this host thread,
// cudaPeekAtLastError and cudaDeviceSynchronize return it without clearing.
inline cudaError_t cudaGetLastError() {
  cudaError_t e = cudaemu::error_state().code;
  cudaemu::error_state().code = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return cudaemu::error_state().code; }
inline cudaError_t cudaDeviceSynchronize() { return cudaemu::error_state().code; }
inline const char* cudaGetErrorName(cudaError_t e) { return cudaemu::error_name(e); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
  }
}

// Only the opt-in dynamic shared memory size is modelled; other attributes are accepted.
inline cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || (size_t)value > cudaemu::kMaxDynSmemOptIn)
      return cudaemu_fail(cudaErrorInvalidValue,
                          cudaemu::format("cudaFuncSetAttribute: MaxDynamicSharedMemorySize %d is outside [0, %zu]",
                                          value, cudaemu::kMaxDynSmemOptIn));
    cudaemu::FuncAttrs& a = cudaemu::func_attrs();
    std::lock_guard<std::mutex> g(a.mu);
    a.max_dyn_smem[fn] = (size_t)value;
  }
  return cudaSuccess;
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* fn, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), attr, value);
}
