// The attention instance (__half, DMAX = 64) in a translation unit of its own (instances.h).
#include "../instances.cuh"

namespace babygpt::cuda {
BABYGPT_ATTN_INSTANCE(__half, 64)
}  // namespace babygpt::cuda
