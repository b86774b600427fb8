// The attention instance (__nv_bfloat16, DMAX = 256) in a translation unit of its own (instances.h).
#include "../instances.cuh"

namespace babygpt::cuda {
BABYGPT_ATTN_INSTANCE(__nv_bfloat16, 256)
}  // namespace babygpt::cuda
