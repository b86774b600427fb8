// tests/emu/tsan.cu -- ThreadSanitizer driver (thread mode: build with -DCUDAEMU_THREADS
// -fsanitize=thread). 'reduce' runs the correct block reduction (TSan must stay quiet);
// 'racy' runs it without its __syncthreads (TSan must report the shared-memory race).
#include "kernels.cuh"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

__global__ void racy_reduce_kernel(const float* x, float* partial, float* total, int n) {
  __shared__ float warp_sums[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float acc = 0.f;
  for (int i = blockIdx.x * blockDim.x + tid; i < n; i += gridDim.x * blockDim.x) acc += x[i] * x[i];
  acc = warp_sum(acc);
  if (lane == 0) warp_sums[warp] = acc;  // @racy_write
  /* __syncthreads() missing: warp 0 reads what the other warps write */
  if (warp == 0) {
    float v = warp_sum(lane < (int)(blockDim.x / 32) ? warp_sums[lane] : 0.f);  // @racy_read
    if (lane == 0) { partial[blockIdx.x] = v; atomicAdd(total, v); }
  }
}

int main(int argc, char** argv) {
  const bool racy = argc > 1 && !std::strcmp(argv[1], "racy");
  const int G = 4, B = 128, n = G * B * 2;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = std::sin(0.37f * i);
  float *dx, *dp, *dt;
  cudaMalloc((void**)&dx, n * sizeof(float));
  cudaMalloc((void**)&dp, G * sizeof(float));
  cudaMalloc((void**)&dt, sizeof(float));
  cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemset(dt, 0, sizeof(float));
  if (racy) CUDAEMU_LAUNCH(racy_reduce_kernel, G, B, 0, 0, dx, dp, dt, n);
  else CUDAEMU_LAUNCH(block_reduce_kernel, G, B, 0, 0, dx, dp, dt, n);
  cudaError_t e = cudaGetLastError();
  float total = 0;
  cudaMemcpy(&total, dt, sizeof(float), cudaMemcpyDeviceToHost);
  double ref = 0;
  for (float v : x) ref += (double)v * v;
  double err = std::abs(total - ref) / ref;
  std::printf("%s %s err=%.3e %s\n", racy ? "racy" : "reduce", err < 1e-5 ? "PASS" : "FAIL", err,
              e == cudaSuccess ? "" : cudaemu::last_error_message().c_str());
  cudaFree(dx); cudaFree(dp); cudaFree(dt);
  return e == cudaSuccess && err < 1e-5 ? 0 : 1;
}
