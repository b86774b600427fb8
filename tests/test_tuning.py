"""The engine's measured choice: timing candidates, the margin, the per-key lookup, the tuning cache
on disk, what turns measuring off, and torch.compile. Fake backends whose cost a fake clock
controls make the decisions deterministic; the real CPU backends show the mechanism end to end."""

import json
import warnings

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import engine, measure, reference, registry, tuning_cache
from babygpt_ext.ops.registry import Backend, limits


@pytest.fixture(autouse=True)
def tuning_on(monkeypatch, tmp_path, fresh_engine):
    """Measuring on, a private cache directory, nothing decided or warned yet (fresh_engine: conftest.py)."""
    monkeypatch.setenv("BABYGPT_TUNE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(measure, "cpu_oversubscribed", lambda: None)  # the suite's own load must not matter


class FakeClock(measure.WallClock):
    """Time passes only when a fake backend runs: each call costs what the test says."""

    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t


@pytest.fixture
def fakes(monkeypatch):
    """install({name: seconds per call, a function of the call's index giving them, or an exception
    to raise}): fake backends computing the reference, as the whole CPU chain (the first one is the
    static choice). Returns the calls each got."""
    clock = FakeClock()
    monkeypatch.setattr(measure, "clock_for", lambda device: clock)
    calls = {}

    def install(costs):
        for name, cost in costs.items():
            def impl(q, k, v, scale, causal, dropout_p, seed, name=name, cost=cost):
                calls[name].append(q)
                if isinstance(cost, Exception):
                    raise cost
                clock.t += cost(len(calls[name]) - 1) if callable(cost) else cost
                return reference.attention(q, k, v, scale, causal, dropout_p, seed)
            calls[name] = []
            monkeypatch.setitem(registry.BACKENDS, name, Backend(name, "a fake", ("cpu",), {"attention": impl},
                                                                 refuse=limits((torch.float32,))))
        monkeypatch.setitem(registry.POLICY, "cpu", tuple(costs))
        engine.reset()
        return calls
    return install


def qkv(t=5, grad=False):
    return tuple(torch.randn(1, 2, t, 8, requires_grad=grad) for _ in range(3))


def test_a_slower_backend_is_never_chosen(fakes):
    fakes({"static": 10e-3, "slow": 30e-3})
    e = ops.explain(*qkv())
    assert e.backend == "static" and e.how == "measured: the static choice 'static' is fastest"
    assert e.times == pytest.approx({"static": 10e-3, "slow": 30e-3})


def test_a_faster_backend_displaces_the_static_choice(fakes):
    fakes({"static": 10e-3, "fast": 5e-3, "slow": 40e-3})
    e = ops.explain(*qkv())
    assert e.backend == "fast" and e.how == "measured: 'fast' is 2.00x the static choice 'static'"
    assert "measured fast: 5.00 ms" in str(e) and "key: attention cpu" in str(e)


def test_a_tie_within_the_margin_keeps_the_static_order(fakes):
    fakes({"static": 10e-3, "fast": 9.7e-3})
    e = ops.explain(*qkv())
    assert e.backend == "static" and "within 5% of the static choice 'static'" in e.how


def test_one_lucky_sample_does_not_displace_the_static_choice(fakes):
    # 'lucky' has the fastest single sample (one call at 4 ms) but is slower in every other round:
    # the rounds compared side by side keep the static choice.
    fakes({"static": 10e-3, "lucky": lambda i: 4e-3 if i == 3 else 12e-3})
    e = ops.explain(*qkv())
    assert e.times["lucky"] < e.times["static"] / 1.05
    assert e.backend == "static" and "round by round it is only 0.83x the static choice 'static'" in e.how


def test_an_oversubscribed_cpu_keeps_the_static_choice_and_caches_nothing(fakes, monkeypatch, tmp_path):
    calls = fakes({"static": 10e-3, "fast": 5e-3})
    monkeypatch.setattr(measure, "cpu_oversubscribed", lambda: "the machine is oversubscribed (load average 9.0 on 2 cores)")
    e = ops.explain(*qkv())
    assert e.backend == "static" and e.times == {} and "oversubscribed (load average 9.0 on 2 cores)" in e.how
    assert calls["fast"] == [] and not (tmp_path / "babygpt_ext" / "tuning.json").exists()


def test_a_key_whose_static_call_is_long_times_no_other_candidate(fakes):
    calls = fakes({"static": 5 * measure.BUDGET_S, "fast": 1e-3})
    e = ops.explain(*qkv())
    # twice: a first call may carry the process's start-up (next test)
    assert e.backend == "static" and calls["fast"] == [] and len(calls["static"]) == 2
    assert "so the others are not timed" in e.how


def test_a_cold_first_call_does_not_make_a_key_long(fakes):
    """The process's first kernel call (thread pool, first-touch pages) took ~1 s at a shape whose
    warm call takes ~5 ms: the second call decides whether the key is long."""
    calls = fakes({"static": lambda i: 5 * measure.BUDGET_S if i == 0 else 2e-3, "fast": 1e-3})
    e = ops.explain(*qkv())
    assert calls["fast"] and e.backend == "fast" and "measured" in e.how


def test_a_long_key_times_the_backends_that_competed_at_the_nearest_smaller_size(fakes):
    calls = {}

    def cost(name, short, long):  # seconds per call: `long` for the larger sequence
        return lambda i: long if calls[name][i].shape[2] > 8 else short
    calls.update(fakes({"static": cost("static", 10e-3, 5 * measure.BUDGET_S),
                        "close": cost("close", 11e-3, 2 * measure.BUDGET_S),
                        "slow": cost("slow", 40e-3, 50 * measure.BUDGET_S)}))
    assert ops.explain(*qkv(t=8)).backend == "static"  # the smaller size, timed in full
    slow_calls = len(calls["slow"])
    e = ops.explain(*qkv(t=16))
    assert e.backend == "close" and set(e.times) == {"static", "close"}
    assert len(calls["slow"]) == slow_calls  # 4x slower at the smaller size: never called at the long one


def test_a_failing_candidate_is_skipped_with_a_warning_and_the_call_succeeds(fakes):
    fakes({"broken": RuntimeError("kernel exploded"), "static": 10e-3, "fast": 5e-3})
    q, k, v = qkv()
    with pytest.warns(RuntimeWarning, match=r"backend 'broken' failed while being timed .*kernel exploded.*left out"):
        o = ops.causal_attention(q, k, v)
    assert ops.explain(q, k, v).backend == "fast"
    torch.testing.assert_close(o, reference.attention(q, k, v, 8 ** -0.5, True))


def test_later_calls_of_a_key_are_a_lookup_and_buckets_share_a_decision(fakes):
    calls = fakes({"static": 10e-3, "fast": 5e-3})
    ops.causal_attention(*qkv(t=5))
    measured = len(calls["fast"])
    assert measured > 2  # warm-ups and rounds
    for t in (5, 6, 8):  # the same power-of-two bucket (5..8)
        ops.causal_attention(*qkv(t=t))
    assert len(calls["fast"]) == measured + 3 and len(calls["static"]) > 0
    ops.causal_attention(*qkv(t=9))  # a new bucket is measured
    assert len(calls["fast"]) > measured + 4


def test_timing_runs_on_copies_and_changes_no_result(fakes):
    calls = fakes({"static": 10e-3, "fast": 5e-3})
    q, k, v = qkv(grad=True)
    rng = torch.get_rng_state()
    o = ops.causal_attention(q, k, v)
    assert torch.equal(torch.get_rng_state(), rng), "measuring drew from the global RNG"
    assert all(seen is not q for seen in calls["fast"][:-1]) and calls["fast"][-1] is q
    assert o.grad_fn is not None and q.grad is None  # the timed backward runs touched no user tensor
    assert "fwd+bwd" in ops.explain(q, k, v).key


def test_decisions_persist_and_a_new_process_reads_them(fakes, tmp_path):
    calls = fakes({"static": 10e-3, "fast": 5e-3})
    ops.causal_attention(*qkv())
    data = json.loads((tmp_path / "babygpt_ext" / "tuning.json").read_text())
    assert data["format"] == tuning_cache.FORMAT and data["fingerprint"] == tuning_cache.fingerprint()
    (entry,) = data["decisions"].values()
    assert entry["backend"] == "fast" and entry["times_us"] == pytest.approx({"static": 10e3, "fast": 5e3})
    engine.reset()  # as a new process would start
    before = len(calls["fast"])
    e = ops.explain(*qkv())
    assert e.backend == "fast" and "read from the tuning cache" in e.how and len(calls["fast"]) == before


@pytest.mark.parametrize("content,why", [("{not json", "unreadable or not JSON"),
                                         ('{"format": "something else"}', "not a 'babygpt_ext tuning cache 1' file"),
                                         ("FOREIGN", "written on another machine or build (differs in: cpu)")])
def test_a_corrupt_or_foreign_cache_is_ignored_with_one_warning_and_rewritten(fakes, tmp_path, content, why):
    fakes({"static": 10e-3, "fast": 5e-3})
    path = tmp_path / "babygpt_ext" / "tuning.json"
    path.parent.mkdir()
    if content == "FOREIGN":
        content = json.dumps({"format": tuning_cache.FORMAT, "decisions": {},
                              "fingerprint": {**tuning_cache.fingerprint(), "cpu": "another CPU"}})
    path.write_text(content)
    with pytest.warns(RuntimeWarning) as caught:
        ops.causal_attention(*qkv())
    (w,) = [w for w in caught if "tuning cache" in str(w.message)]
    assert str(w.message).startswith(f"babygpt_ext: ignoring the tuning cache {path}: {why}")
    assert "\n" not in str(w.message)
    data = json.loads(path.read_text())
    assert data["fingerprint"] == tuning_cache.fingerprint() and len(data["decisions"]) == 1


def test_an_unwritable_cache_keeps_decisions_in_memory(fakes, tmp_path, monkeypatch):
    fakes({"static": 10e-3, "fast": 5e-3})
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file where a directory should be
    with pytest.warns(RuntimeWarning) as caught:
        assert ops.explain(*qkv()).backend == "fast"
    messages = [str(w.message) for w in caught]
    assert any("ignoring the tuning cache" in m and "unreadable" in m for m in messages)
    assert any("cannot write the tuning cache" in m for m in messages)


def test_tune_off_requested_backends_and_the_env_var_do_not_measure(fakes, monkeypatch):
    calls = fakes({"static": 10e-3, "fast": 5e-3})
    monkeypatch.setenv("BABYGPT_TUNE", "0")
    e = ops.explain(*qkv())
    assert (e.backend, e.times) == ("static", {}) and e.how.endswith("BABYGPT_TUNE=0 turns measuring off")
    monkeypatch.setenv("BABYGPT_TUNE", "1")
    engine.reset()
    assert ops.explain(*qkv(), backend="static").how == "requested with backend="
    monkeypatch.setenv(registry.ENV_VAR, "static")
    assert ops.explain(*qkv()).how == "requested with BABYGPT_BACKEND=static"
    assert calls["fast"] == []


def test_a_single_candidate_is_not_measured(fakes):
    fakes({"static": 10e-3})
    assert ops.explain(*qkv()).how.endswith("only static can take this call, nothing to compare")


def test_the_real_cpu_backends_measured_end_to_end():
    q, k, v = qkv(t=33, grad=True)
    rng = torch.get_rng_state()
    o = ops.causal_attention(q, k, v)
    e = ops.explain(q, k, v)
    assert torch.equal(torch.get_rng_state(), rng)
    assert e.how.startswith("measured") and e.backend in e.times and set(e.times) <= {"cpu", "sdpa", "eager"}
    assert torch.equal(o, ops.causal_attention(q, k, v, backend=e.backend))
    dq = torch.autograd.grad(o.sum(), q)[0]
    torch.testing.assert_close(dq, torch.autograd.grad(reference.attention(q, k, v, 8 ** -0.5, True).sum(), q)[0])


def test_under_torch_compile_nothing_is_timed_and_a_measured_decision_is_used(monkeypatch):
    q, k, v = qkv(t=17)
    measured = ops.explain(q, k, v).backend  # measured in eager mode
    monkeypatch.setattr(measure, "time_candidates", lambda *a, **kw: pytest.fail("timed under tracing"))
    torch._dynamo.reset()
    f = torch.compile(lambda q, k, v: ops.causal_attention(q, k, v), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(q, k, v), ops.causal_attention(q, k, v, backend=measured))
    probe = (q.device, q.dtype, False, (8, (("causal", True),)), None)
    assert engine._traced_choice("attention", *probe) == measured
    engine.reset()
    tuning_cache.path().unlink()  # the decision on disk too: on a loaded machine it can be sdpa's
    assert engine._traced_choice("attention", *probe) == "cpu"  # no decision: the static policy
    q2, k2, v2 = qkv(t=40)  # a key never measured, traced with symbolic sizes
    f2 = torch.compile(lambda q, k, v: ops.causal_attention(q, k, v), fullgraph=True, backend="aot_eager",
                       dynamic=True)
    torch.testing.assert_close(f2(q2, k2, v2), ops.causal_attention(q2, k2, v2, backend="cpu"))


def test_a_traced_call_takes_only_decisions_measured_with_its_dropout_fact(fakes):
    fakes({"static": 10e-3, "fast": 5e-3})
    q, k, v = qkv(t=9)
    assert ops.explain(q, k, v, dropout_p=0.1).backend == "fast"  # measures a dropout key
    for p, chosen in ((0.0, "static"), (0.1, "fast")):
        facts = ops.OPS["attention"].traced_facts(q, k, v, 8 ** -0.5, True, p, None)
        assert engine._traced_choice("attention", q.device, q.dtype, False, facts, None) == chosen


def test_fake_tensors_are_not_timed():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        q, k, v = qkv()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            e = ops.explain(q, k, v)
    assert e.how.endswith("the inputs are not plain tensors (fake, functional or a subclass), so they cannot be timed")
