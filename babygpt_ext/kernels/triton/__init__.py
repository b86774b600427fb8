"""The Triton backend: defines torch.ops.babygpt_triton.{attn_fwd, attn_bwd, lora_fwd, lora_bwd}.

The schemas are csrc/schemas.h's, character for character, so this namespace is interchangeable
with `babygpt` (the C++ kernels); babygpt_ext.ops.library.register_contract then attaches the
shared fake kernels and autograd formulas to it (the backend registry does that on first use).

Registration is `torch.library.define` + `torch.library.impl` for CPU and CUDA, not
`torch.library.triton_op` + `wrap_triton`: a triton_op's fake is traced through the kernel
launch, which fails opcheck's fake-tensor test under TRITON_INTERPRET=1 ("set the storage of a
tensor on device meta"), while an opaque op with the explicit fake of register_contract passes
all of opcheck there. The price: torch.compile treats the kernels as opaque calls (no fusion of
their launch into the graph), which is also what happens for the C++ backend.

CPU tensors only work under TRITON_INTERPRET=1 (Triton's interpreter), which must be set before
triton is imported; the backend registry refuses CPU calls otherwise.
"""

import torch

from . import attention, lora

NAMESPACE = "babygpt_triton"

# Keep in sync with csrc/schemas.h (tests/test_triton_kernels.py compares them).
SCHEMAS = {
    "attn_fwd": ("(Tensor q, Tensor k, Tensor v, float scale, bool causal, float dropout_p=0., Tensor? seed=None)"
                 " -> (Tensor o, Tensor lse, Tensor o_lo)"),
    "attn_bwd": ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor o_lo, float scale,"
                 " bool causal, float dropout_p=0., Tensor? seed=None) -> (Tensor dq, Tensor dk, Tensor dv)"),
    "lora_fwd": ("(Tensor x, Tensor weight, Tensor? bias, Tensor lora_a, Tensor lora_b, float scale)"
                 " -> (Tensor y, Tensor xa)"),
    "lora_bwd": ("(Tensor dy, Tensor x, Tensor weight, Tensor lora_a, Tensor lora_b, Tensor xa, float scale,"
                 " bool need_dweight, bool need_dbias) -> (Tensor dx, Tensor dweight, Tensor dbias,"
                 " Tensor dlora_a, Tensor dlora_b)"),
}


def _attn_fwd(q, k, v, scale, causal, dropout_p=0.0, seed=None):
    return attention.attn_fwd(q, k, v, scale, causal, dropout_p, seed)


def _attn_bwd(dout, q, k, v, o, lse, o_lo, scale, causal, dropout_p=0.0, seed=None):
    return attention.attn_bwd(dout, q, k, v, o, lse, o_lo, scale, causal, dropout_p, seed)


def _lora_fwd(x, weight, bias, lora_a, lora_b, scale):
    return lora.lora_fwd(x, weight, bias, lora_a, lora_b, scale)


def _lora_bwd(dy, x, weight, lora_a, lora_b, xa, scale, need_dweight, need_dbias):
    return lora.lora_bwd(dy, x, weight, lora_a, lora_b, xa, scale, need_dweight, need_dbias)


IMPLS = {"attn_fwd": _attn_fwd, "attn_bwd": _attn_bwd, "lora_fwd": _lora_fwd, "lora_bwd": _lora_bwd}


def _define() -> None:
    if hasattr(torch.ops, NAMESPACE) and hasattr(getattr(torch.ops, NAMESPACE), "attn_fwd"):
        return  # already defined (module reloaded)
    for name, schema in SCHEMAS.items():
        qualname = f"{NAMESPACE}::{name}"
        torch.library.define(qualname, schema)
        # The kernels launch on the tensors' device: CUDA on a GPU, CPU under the interpreter.
        torch.library.impl(qualname, ("cpu", "cuda"))(IMPLS[name])


_define()
