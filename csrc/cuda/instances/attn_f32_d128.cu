// The attention instance (float, DMAX = 128) in a translation unit of its own (instances.h).
#include "../instances.cuh"

namespace babygpt::cuda {
BABYGPT_ATTN_INSTANCE(float, 128)
}  // namespace babygpt::cuda
