"""The attention engine's static choice (the suite runs with BABYGPT_TUNE=0; tests/test_tuning.py
covers measuring): explicit backend=, BABYGPT_BACKEND, the static policy, one-time warnings when a
backend is skipped, and errors that say how to get a backend."""

import warnings

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import engine, registry
from babygpt_ext.ops.spec import Call


pytestmark = pytest.mark.usefixtures("fresh_engine")  # conftest.py: no env override, nothing decided or warned


def qkv(d=16, dtype=torch.float32):
    return (torch.randn(1, 2, 5, d, dtype=dtype) for _ in range(3))


def test_cpu_tensors_use_the_cpu_kernels_when_built():
    assert "cpu" in ops.available_backends("cpu")
    e = ops.explain(*qkv())
    assert e.backend == "cpu" and e.skipped == []
    assert e.how == "static policy for cpu tensors: BABYGPT_TUNE=0 turns measuring off" and e.times == {}


def test_env_var_overrides_the_policy(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "eager")
    e = ops.explain(*qkv())
    assert (e.backend, e.how) == ("eager", "requested with BABYGPT_BACKEND=eager")


def test_env_var_is_read_when_a_key_is_decided_not_on_every_call(monkeypatch):
    ops.causal_attention(*qkv())
    monkeypatch.setenv(registry.ENV_VAR, "eager")
    assert ops.explain(*qkv()).backend == "cpu"  # decided before the variable was set
    engine.reset()
    assert ops.explain(*qkv()).backend == "eager"


def test_env_var_naming_a_backend_that_cannot_take_the_call_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "cuda")  # no GPU here, and these are CPU tensors anyway
    with pytest.warns(RuntimeWarning, match="backend 'cuda' skipped"):
        o = ops.causal_attention(*qkv())
    assert o.shape == (1, 2, 5, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must be silent
        ops.causal_attention(*qkv())


def test_unknown_env_backend_is_an_error(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "turbo")
    with pytest.raises(ValueError, match="unknown backend 'turbo'"):
        ops.causal_attention(*qkv())


def test_head_dim_beyond_the_kernels_falls_back_to_sdpa_and_says_so_once():
    with pytest.warns(RuntimeWarning, match=r"backend 'cpu' skipped .*D=300 exceeds its maximum 256; using 'sdpa'"):
        ops.causal_attention(*qkv(d=300))
    e = ops.explain(*qkv(d=300))
    assert e.backend == "sdpa" and e.skipped[0][0] == "cpu"


def test_explicit_request_for_a_backend_that_cannot_take_the_call_is_an_error():
    with pytest.raises(ValueError, match=r"backend 'cpu' cannot run .*D=300 exceeds its maximum 256"):
        ops.causal_attention(*qkv(d=300), backend="cpu")


def test_explicit_request_for_an_unavailable_backend_says_how_to_get_it():
    why = ops.BACKENDS["cuda"].why_unavailable()
    assert why is not None, "this test expects a machine without a CUDA device"
    with pytest.raises(ops.BackendUnavailableError, match="backend 'cuda' cannot run"):
        ops.causal_attention(*qkv(), backend="cuda")


def test_lora_policy_skips_sdpa_which_has_no_lora():
    x, w, a, bm = torch.randn(2, 4), torch.randn(3, 4), torch.randn(1, 4), torch.randn(3, 1)
    chosen, skipped, _ = registry.decide(Call("lora", "cpu", torch.float32), None)
    assert chosen.name == "cpu" and skipped == []
    with pytest.raises(ValueError, match="backend 'sdpa' cannot run this lora call.*no lora implementation"):
        ops.lora_linear(x, w, None, a, bm, 1.0, backend="sdpa")


def test_explanation_prints_the_choice_and_the_skips():
    text = str(ops.explain(*qkv(d=300)))
    assert text.splitlines()[0] == "backend: sdpa (static policy for cpu tensors: BABYGPT_TUNE=0 turns measuring off)"
    assert "key: attention cpu (" in text and "D=300 H=2 Hkv=2 causal=True Tq<=8 Tk<=8 B<=1 fwd" in text
    assert "skipped cpu: head dim D=300 exceeds its maximum 256" in text


def test_a_backend_registers_one_implementation_per_op_and_refuses_in_one_place():
    b = ops.BACKENDS["sdpa"]
    assert set(b.impls) == {"attention", "qkv_attention"} and b.refuses(Call("lora", "cpu", torch.float32)) == "it has no lora implementation"
    assert ops.BACKENDS["cpu"].refuses(Call("attention", "cuda", torch.float32, 64)) == "it runs on cpu tensors, not cuda"
    assert ops.available_backends("cpu", op="lora") == [n for n in ops.available_backends("cpu") if n != "sdpa"]
