// The CUDA kernels compiled for the GPU: the launchers of launchers.cuh and, through them, every
// kernel instance. Kept free of torch headers (docs/design.md §6.1) so nvcc spends its time on the
// kernels; it builds in parallel with ops_cuda.cu, the torch glue.
#include "launchers.cuh"
