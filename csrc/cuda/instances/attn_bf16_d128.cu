// The attention instance (__nv_bfloat16, DMAX = 128) in a translation unit of its own (instances.h).
#include "../instances.cuh"

namespace babygpt::cuda {
BABYGPT_ATTN_INSTANCE(__nv_bfloat16, 128)
}  // namespace babygpt::cuda
