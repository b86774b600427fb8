"""Shared fixtures: which backends are under test, the shapes each one gets, and seeded RNG.

Every backend usable on CPU tensors here is tested by the same tests: eager, sdpa and cpu always;
triton through Triton's interpreter (TRITON_INTERPRET=1 is set below, before anything can import
triton); cuda_emu when babygpt_ext._C_emu was built (BABYGPT_EXT_EMU=1). A new backend joins the
suite by registering in babygpt_ext.ops and becoming available.

The engine's measured choice is off for the suite (BABYGPT_TUNE=0: the static policy, so a test
runs the backend it names and takes no time measuring; tests/test_tuning.py turns it on for the
mechanism itself), and its cache lives in a temporary directory, never the user's; so does
torch.compile's.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any `import triton`
os.environ["BABYGPT_TUNE"] = "0"  # subprocesses of the tests inherit both
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="babygpt_test_cache_")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
# Inductor's on-disk cache (/tmp/torchinductor_<user> by default) is keyed without the custom ops'
# schemas: a graph compiled against an earlier build of the extension would call the old signature.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="babygpt_test_inductor_")
atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from babygpt_ext import ops  # noqa: E402
from babygpt_ext.ops.spec import Call  # noqa: E402

CPU_BACKENDS = ops.available_backends("cpu")
# The Triton interpreter and the CUDA emulator run a kernel thread by thread in Python/fibers:
# correct but slow, so they get the small shape list.
SLOW_BACKENDS = {"triton", "cuda_emu"}

# (B, H, Hkv, Tq, Tk, D, causal). Odd sizes on purpose: T and D that are not multiples of any
# block size, Tq < Tk (KV-cache decoding), Tq != Tk non-causal (cross attention), GQA and MQA.
ATTN_SHAPES_FULL = [
    (1, 1, 1, 1, 1, 1, True),
    (2, 2, 2, 2, 2, 8, True),
    (2, 4, 2, 17, 17, 59, True),
    (1, 2, 2, 64, 64, 64, True),
    (1, 4, 1, 127, 127, 32, True),
    (1, 2, 2, 129, 129, 128, True),
    (1, 2, 1, 1, 129, 64, True),
    (2, 2, 2, 17, 64, 8, True),
    (1, 2, 2, 33, 33, 256, True),
    (2, 2, 2, 17, 5, 59, False),
    (1, 4, 2, 64, 1, 16, False),
    (1, 2, 2, 3, 129, 64, False),
]
ATTN_SHAPES_SMALL = [
    (1, 1, 1, 1, 1, 1, True),
    (1, 2, 1, 17, 17, 59, True),
    (1, 2, 2, 5, 33, 16, True),
    (1, 2, 2, 65, 65, 64, True),
    (1, 4, 2, 9, 20, 8, False),
]
# (lead shape of x, in, out, r, bias)
LORA_SHAPES_FULL = [((1,), 1, 1, 1, True), ((3, 5), 16, 48, 4, True), ((7,), 59, 33, 3, False),
                    ((2, 65), 128, 384, 8, True), ((130,), 64, 257, 16, True)]
LORA_SHAPES_SMALL = [((1,), 1, 1, 1, True), ((3, 5), 16, 48, 4, True), ((7,), 59, 33, 3, False),
                     ((37,), 64, 72, 16, True)]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def attn_shapes(backend):
    return ATTN_SHAPES_SMALL if backend in SLOW_BACKENDS else ATTN_SHAPES_FULL


def lora_shapes(backend):
    return LORA_SHAPES_SMALL if backend in SLOW_BACKENDS else LORA_SHAPES_FULL


def takes(backend, op, dtype, head_dim=8):
    """Whether the backend takes this kind of call on CPU tensors here."""
    return ops.BACKENDS[backend].refuses(Call(op, "cpu", dtype, head_dim)) is None


def dtypes_for(backend, op="attention"):
    """The dtypes the backend computes in (its other refusals become skips with their reason)."""
    return [d for d in DTYPES if "does not support" not in (ops.BACKENDS[backend].refuses(Call(op, "cpu", d, 8)) or "")]


def backend_param(op, backend, dtype, head_dim, *values, id):
    """pytest.param(backend, *values, dtype), skipped with the backend's own reason when it refuses
    this kind of call here (e.g. bfloat16 in Triton's interpreter)."""
    why = ops.BACKENDS[backend].refuses(Call(op, "cpu", dtype, head_dim))
    marks = [pytest.mark.skip(reason=f"backend {backend} cannot run this here: {why}")] if why else []
    return pytest.param(backend, *values, dtype, id=id, marks=marks)


def attn_id(s):
    b, h, hkv, tq, tk, d, causal = s
    return f"B{b}H{h}kv{hkv}-Tq{tq}Tk{tk}-D{d}-{'causal' if causal else 'full'}"


def pytest_report_header(config):
    return f"babygpt_ext backends under test (CPU tensors): {', '.join(CPU_BACKENDS)}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def _attn_call(h, hkv, tq, tk, d, causal, b=1, dropout=False):
    dims = (("H", h), ("Hkv", hkv), ("causal", causal), ("Tq<=", tq), ("Tk<=", tk), ("B<=", b))
    return Call("attention", "cpu", torch.float32, d, dims + ((("dropout", True),) if dropout else ()))


def _qkv_call(h, hkv, t, d, b=1, dropout=False):
    dims = (("H", h), ("Hkv", hkv), ("causal", True), ("Tq<=", t), ("Tk<=", t), ("B<=", b))
    return Call("qkv_attention", "cpu", torch.float32, d, dims + ((("dropout", True),) if dropout else ()))


def _lora_call(n, d_in, d_out, r, bias, base_grad):
    return Call("lora", "cpu", torch.float32, 0, (("in", d_in), ("out", d_out), ("r", r), ("bias", bias),
                                                   ("base_grad", base_grad), ("N<=", n)))


def _bias_gelu_call(n, f, bias):
    return Call("bias_gelu", "cpu", torch.float32, 0, (("F<=", f), ("bias", bias), ("N<=", n)))


def _layer_norm_call(n, c, weight, bias, out="float32"):
    return Call("layer_norm", "cpu", torch.float32, 0, (("C<=", c), ("weight", weight), ("bias", bias), ("out", out),
                                                         ("N<=", n)))


# Small calls of every op in the table, for the tests that iterate over it (opcheck, compile):
# spec.make_args(call, device, dtype, requires_grad) builds their inputs. A new op adds its own.
OP_SAMPLES = {
    "attention": [_attn_call(2, 1, 5, 5, 8, True), _attn_call(2, 2, 3, 7, 16, True), _attn_call(4, 2, 6, 3, 8, False),
                  _attn_call(2, 1, 9, 9, 8, True, b=2, dropout=True)],
    "qkv_attention": [_qkv_call(2, 1, 5, 8), _qkv_call(2, 2, 7, 16, b=2), _qkv_call(2, 1, 9, 8, b=2, dropout=True)],
    "lora": [_lora_call(5, 8, 6, 2, True, False), _lora_call(5, 8, 6, 2, False, False), _lora_call(5, 8, 6, 2, True, True)],
    "bias_gelu": [_bias_gelu_call(5, 12, True), _bias_gelu_call(3, 8, False)],
    # The last one is an autocast call: float32 x, bf16 output.
    "layer_norm": [_layer_norm_call(5, 12, True, True), _layer_norm_call(3, 8, True, False),
                   _layer_norm_call(4, 19, False, False), _layer_norm_call(6, 16, True, True, "bfloat16")],
}


@pytest.fixture
def fresh_engine(monkeypatch):
    """No BABYGPT_BACKEND override, no decided call keys and no spent one-time warnings, before and
    after the test (the engine's state is per process)."""
    from babygpt_ext.ops import engine, registry

    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    engine.reset()
    registry._warned.clear()
    yield
    engine.reset()
    registry._warned.clear()
