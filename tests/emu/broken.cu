// tests/emu/broken.cu -- deliberately broken kernels: the harness (or a sanitizer) must notice;
// and spin-waits, which must finish when released and be reported when never released.
// Usage: broken <case>. Prints one verdict line and exits 0 (the pytest driver judges it):
//   DETECTED <cudaError name>: <harness message>   the launch reported an error
//   WRONG <detail>                                 no error, but the result check failed
//   SILENT                                         nobody noticed anything (a harness bug)
// Lines the harness must name carry a marker comment "// @name"; the driver looks them up.
#include "cudaemu.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

__device__ __forceinline__ float wsum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// The block reduction with its __syncthreads removed: warp 0 may read warp_sums before the
// other warps' lane 0 wrote them. On a GPU it usually works by luck; here some order breaks it.
__global__ void missing_barrier_kernel(const float* x, float* partial) {
  __shared__ float warp_sums[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float acc = wsum(x[blockIdx.x * blockDim.x + tid]);
  if (lane == 0) warp_sums[warp] = acc;
  /* __syncthreads() missing here */
  if (warp == 0) {
    float v = wsum(lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.f);
    if (lane == 0) partial[blockIdx.x] = v;
  }
}

// Half the block waits at one __syncthreads, the other half at another one.
__global__ void divergent_barrier_kernel(float* out) {
  __shared__ float s[128];
  s[threadIdx.x] = (float)threadIdx.x;
  if (threadIdx.x < 64) {
    __syncthreads();  // @div_a
    out[threadIdx.x] = s[threadIdx.x + 64];
  } else {
    __syncthreads();  // @div_b
  }
}

// Threads past n return early, the others then wait at a barrier the exited ones never reach.
__global__ void exit_before_barrier_kernel(const float* x, float* y, int n) {
  __shared__ float s[128];
  int i = threadIdx.x;
  if (i >= n) return;
  s[i] = x[i];
  __syncthreads();  // @exit_bar
  y[i] = s[(i + 1) % n];
}

// Lanes 0-15 wait in a full-warp shuffle that needs lanes 16-31, which wait at a block
// barrier that needs lanes 0-15: nobody can move.
__global__ void deadlock_kernel(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x < 16) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);  // @dl_shfl
  } else {
    __syncthreads();  // @dl_bar
  }
  out[threadIdx.x] = v;
}

// Lanes 0-15 shuffle among themselves (mask 0x0000ffff) but read lane 20, outside the mask.
__global__ void shuffle_outside_mask_kernel(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_sync(0x0000ffffu, v, 20);  // @mask_read
  out[threadIdx.x] = v;
}

// Lanes 16-31 exit, lanes 0-15 then shuffle with a full mask that still names them.
__global__ void shuffle_exited_lane_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  float v = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);  // @exited_shfl
  out[threadIdx.x] = v;
}

// Reads dynamic shared memory before anybody wrote it (poison makes it NaN).
__global__ void uninit_smem_kernel(float* out) {
  CUDAEMU_DYNAMIC_SHARED(float, s);
  float v = s[threadIdx.x];  // should have been written (and synchronised) first
  __syncthreads();
  s[threadIdx.x] = 1.f;
  out[threadIdx.x] = v + 1.f;
}

// Reads static shared memory before writing it: 'which' 0 reads the kernel's own variable,
// 1 the 'static __shared__' of a template __device__ function. Without poisoning the first
// block would read zeros and every later block the previous block's values; both look fine.
template <int N>
__device__ float read_then_write_cache(int i) {
  static __shared__ float cache[N];
  float v = cache[i];
  __syncthreads();
  cache[i] = 1.f;
  return v;
}

template <int N>
__global__ void uninit_static_smem_kernel(float* out, int which) {
  __shared__ float s[N];
  float own = s[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = (float)threadIdx.x;
  float dev = read_then_write_cache<N>(threadIdx.x);
  out[blockIdx.x * N + threadIdx.x] = which == 0 ? own : dev;
}

// Reads one element past the end of x (global memory): AddressSanitizer must report it.
__global__ void oob_global_kernel(const float* x, float* y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] + x[i + 1];  // @oob_global  (i + 1 == n on the last thread)
}

// Writes one float past the end of the dynamic shared memory it asked for.
__global__ void oob_smem_kernel(float* y) {
  CUDAEMU_DYNAMIC_SHARED(float, s);
  s[threadIdx.x + 1] = 1.f;  // @oob_smem  (thread blockDim.x-1 writes s[blockDim.x])
  __syncthreads();
  y[threadIdx.x] = s[threadIdx.x];
}

// Writes one float past the end of a static __shared__ array.
__global__ void oob_static_smem_kernel(float* y) {
  __shared__ float s[64];
  s[threadIdx.x + 1] = 1.f;  // @oob_static_smem  (thread 63 writes s[64])
  __syncthreads();
  y[threadIdx.x] = s[threadIdx.x];
}

// Thread 0 polls a shared flag with plain volatile loads until the block's last thread sets it
// (release != 0). Legal since Volta (independent thread scheduling); in fiber mode only the
// watchdog's preemption lets the setter run. Unreleased, it must be reported as a stall.
__global__ void spin_volatile_kernel(int* out, int release) {
  __shared__ int flag;
  if (threadIdx.x == 0) flag = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    while (*(volatile int*)&flag == 0) {}  // @spin_volatile
    out[0] = flag;
  } else if (release && threadIdx.x == blockDim.x - 1) {
    *(volatile int*)&flag = 7;
  }
}

// Every thread increments a counter under a spin lock in global memory (atomicCAS to take it,
// atomicExch to give it back; release == 0 never gives it back). The atomics are spin points.
__global__ void spin_lock_kernel(int* lock, int* count, int release) {
  while (atomicCAS(lock, 0, 1) != 0) {}  // @spin_lock
  *(volatile int*)count = *(volatile int*)count + 1;
  __threadfence();
  if (release) atomicExch(lock, 0);
}

static std::vector<float*> allocations;  // freed at exit, so LeakSanitizer only sees harness leaks
static float* dev_floats(int n, float value) {
  std::vector<float> h(n, value);
  float* d = nullptr;
  cudaMalloc((void**)&d, n * sizeof(float));
  allocations.push_back(d);
  cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  return d;
}
static std::vector<float> host_floats(const float* d, int n) {
  std::vector<float> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost);
  return h;
}

// Prints the verdict for a launch whose result is checked by 'ok' (when it did not error).
static int verdict(bool ok, const char* detail) {
  for (float* p : allocations) cudaFree(p);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    std::printf("DETECTED %s: %s\n", cudaGetErrorName(e), cudaemu::last_error_message().c_str());
  } else if (!ok) {
    std::printf("WRONG %s\n", detail);
  } else {
    std::printf("SILENT\n");
  }
  return 0;
}

static int run_case(int argc, char** argv) {
  const char* c = argc > 1 ? argv[1] : "";
  if (!std::strcmp(c, "missing_barrier")) {
    // Per-block data differs, so a stale warp_sums from the previous block is wrong too.
    const int G = 8, B = 128;
    std::vector<float> x(G * B);
    for (int i = 0; i < G * B; ++i) x[i] = (float)(i / B + 1);
    float* dx = dev_floats(G * B, 0.f);
    cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice);
    float* dp = dev_floats(G, 0.f);
    CUDAEMU_LAUNCH(missing_barrier_kernel, G, B, 0, 0, dx, dp);
    auto p = host_floats(dp, G);
    bool ok = true;
    for (int b = 0; b < G; ++b) ok &= p[b] == (float)(B * (b + 1));
    return verdict(ok, "block sums differ from the reference");
  }
  if (!std::strcmp(c, "divergent_barrier")) {
    float* d = dev_floats(128, 0.f);
    CUDAEMU_LAUNCH(divergent_barrier_kernel, 2, 128, 0, 0, d);
    return verdict(true, "");
  }
  if (!std::strcmp(c, "exit_before_barrier")) {
    float *dx = dev_floats(128, 1.f), *dy = dev_floats(128, 0.f);
    CUDAEMU_LAUNCH(exit_before_barrier_kernel, 1, 128, 0, 0, dx, dy, 100);
    return verdict(true, "");
  }
  if (!std::strcmp(c, "deadlock")) {
    float* d = dev_floats(32, 0.f);
    CUDAEMU_LAUNCH(deadlock_kernel, 1, 32, 0, 0, d);
    return verdict(true, "");
  }
  if (!std::strcmp(c, "shuffle_outside_mask")) {
    float* d = dev_floats(32, 0.f);
    CUDAEMU_LAUNCH(shuffle_outside_mask_kernel, 1, 32, 0, 0, d);
    return verdict(true, "");
  }
  if (!std::strcmp(c, "shuffle_exited_lane")) {
    float* d = dev_floats(32, 0.f);
    CUDAEMU_LAUNCH(shuffle_exited_lane_kernel, 1, 32, 0, 0, d);
    return verdict(true, "");
  }
  if (!std::strcmp(c, "uninit_smem")) {
    float* d = dev_floats(64, 0.f);
    CUDAEMU_LAUNCH(uninit_smem_kernel, 2, 64, 64 * sizeof(float), 0, d);
    auto h = host_floats(d, 64);
    bool ok = true;
    for (float v : h) ok &= std::isfinite(v);
    return verdict(ok, "output contains NaN read from unwritten shared memory");
  }
  if (!std::strcmp(c, "uninit_static_smem") || !std::strcmp(c, "uninit_static_smem_device")) {
    const int G = 3, N = 64;
    float* d = dev_floats(G * N, 0.f);
    const int which = std::strcmp(c, "uninit_static_smem_device") == 0;
    CUDAEMU_LAUNCH((uninit_static_smem_kernel<N>), G, N, 0, 0, d, which);
    auto h = host_floats(d, G * N);
    bool ok = true;
    for (float v : h) ok &= std::isfinite(v);
    return verdict(ok, "output contains NaN read from unwritten static shared memory");
  }
  if (!std::strcmp(c, "spin_volatile") || !std::strcmp(c, "spin_volatile_unreleased")) {
    const int release = !std::strcmp(c, "spin_volatile");
    int* d = nullptr;
    cudaMalloc((void**)&d, sizeof(int));
    cudaMemset(d, 0, sizeof(int));
    CUDAEMU_LAUNCH(spin_volatile_kernel, 2, 64, 0, 0, d, release);
    int h = 0;
    cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
    cudaFree(d);
    return verdict(h == 7, "thread 0 did not see the flag");
  }
  if (!std::strcmp(c, "spin_lock") || !std::strcmp(c, "spin_lock_unreleased")) {
    const int release = !std::strcmp(c, "spin_lock"), G = 2, B = 64;
    int* d = nullptr;
    cudaMalloc((void**)&d, 2 * sizeof(int));
    cudaMemset(d, 0, 2 * sizeof(int));
    CUDAEMU_LAUNCH(spin_lock_kernel, G, B, 0, 0, d, d + 1, release);
    int h[2] = {0, 0};
    cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
    cudaFree(d);
    return verdict(h[1] == G * B, "the counter missed increments");
  }
  if (!std::strcmp(c, "oob_global")) {
    const int n = 100;
    float *dx = dev_floats(n, 1.f), *dy = dev_floats(n, 0.f);
    CUDAEMU_LAUNCH(oob_global_kernel, 1, 128, 0, 0, dx, dy, n);
    return verdict(true, "");
  }
  if (!std::strcmp(c, "oob_static_smem")) {
    float* d = dev_floats(64, 0.f);
    CUDAEMU_LAUNCH(oob_static_smem_kernel, 1, 64, 0, 0, d);
    return verdict(true, "");
  }
  if (!std::strcmp(c, "oob_smem")) {
    float* d = dev_floats(64, 0.f);
    CUDAEMU_LAUNCH(oob_smem_kernel, 1, 64, 64 * sizeof(float), 0, d);
    return verdict(true, "");
  }
  std::printf("unknown case '%s'\n", c);
  return 2;
}

#ifdef BROKEN_AS_LIBRARY
// The shared-object build, loaded by dlopen_driver.cpp the way Python loads _C_emu: its static
// __shared__ variables live in dynamically allocated TLS.
extern "C" __attribute__((visibility("default"))) int broken_main(int argc, char** argv) { return run_case(argc, argv); }
#else
int main(int argc, char** argv) { return run_case(argc, argv); }
#endif
