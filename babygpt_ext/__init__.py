"""babygpt_ext: fused causal attention and LoRA kernels (Triton, CUDA C++, C++ for the CPU) for small
GPT models, with drop-in modules, models, tokenizers, training, generation and benchmarks.

    import babygpt_ext
    babygpt_ext.ops.causal_attention(q, k, v)
"""

__version__ = "0.1.0"

from . import ops  # noqa: E402,F401
from .patching import patch, unpatch  # noqa: E402,F401
