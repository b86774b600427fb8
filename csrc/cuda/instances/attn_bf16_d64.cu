// The attention instance (__nv_bfloat16, DMAX = 64) in a translation unit of its own (instances.h).
#include "../instances.cuh"

namespace babygpt::cuda {
BABYGPT_ATTN_INSTANCE(__nv_bfloat16, 64)
}  // namespace babygpt::cuda
