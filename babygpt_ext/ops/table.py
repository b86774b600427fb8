"""The op table: every op of the contract, by name. The backends, the engine, the fakes and the
autograd registration, the CLI's tuning and the shared test-suite all iterate over it."""

from .attention_op import ATTENTION
from .bias_gelu_op import BIAS_GELU
from .layer_norm_op import LAYER_NORM
from .lora_op import LORA
from .qkv_attention_op import QKV_ATTENTION

OPS = {spec.name: spec for spec in (ATTENTION, QKV_ATTENTION, LORA, BIAS_GELU, LAYER_NORM)}
