// The attention instance (__half, DMAX = 256) in a translation unit of its own (instances.h).
#include "../instances.cuh"

namespace babygpt::cuda {
BABYGPT_ATTN_INSTANCE(__half, 256)
}  // namespace babygpt::cuda
