// The CUDA launchers compiled for the GPU (launchers.cuh): the dispatch to the attention instances
// (each compiled in its own instances/*.cu) and the kernels without a head dim. Kept free of torch
// headers (docs/design.md §6.1) so nvcc spends its time on the kernels; it builds in parallel with the
// instances and with ops_cuda.cu, the torch glue.
#include "launchers.cuh"
