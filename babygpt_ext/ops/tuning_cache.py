"""The engine's measured decisions on disk: $XDG_CACHE_HOME/babygpt_ext/tuning.json
(~/.cache/babygpt_ext/tuning.json by default).

A decision holds only for the machine and the build that measured it, so the file carries a
fingerprint (CPU model and the ISA flags the kernels care about, GPU names and compute
capabilities, torch, babygpt_ext and the compiled extension's build) and a file with another
fingerprint is foreign. A foreign or corrupt file is ignored with a one-line warning and replaced
at the next write. Writes are atomic (a temp file in the same directory, then os.replace) and merge
what another process wrote meanwhile.

    {"format": "babygpt_ext tuning cache 1", "fingerprint": {...},
     "decisions": {"<Call.label()>": {"call": {...}, "backend": "cpu", "static": "cpu",
                                      "times_us": {"cpu": 41.2, "sdpa": 55.0}, "rounds": 9}}}
"""

import contextlib
import functools
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Dict, Optional

import torch

from .spec import Call

FORMAT = "babygpt_ext tuning cache 1"
# The flags that select or speed up kernel copies: a CPU differing in these may rank backends differently.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
             "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")

_state: Dict[str, object] = {}  # "decisions": {label: entry}, "status": str; loaded once per process


def path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "babygpt_ext" / "tuning.json"


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple:
    """(model name, sorted ISA flags of ISA_FLAGS) of this CPU, from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, ()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and value.strip():
            model = value.strip()
        elif name in ("flags", "Features"):
            flags = set(value.split())
            break
    return model, tuple(f for f in ISA_FLAGS if f in flags)


def cpu_model() -> str:
    return _cpuinfo()[0]


def _extension_build() -> str:
    try:
        from .. import _C
    except ImportError:
        return "not built"
    info, stat = _C.build_info(), os.stat(_C.__file__)
    # The file's size and time tell one build from the next at the same version.
    return (f"{info['compiler']}, torch {info['torch_version']}, cuda {info['cuda']}, cpu isa "
            f"{info['cpu_attention_isa']}, {stat.st_size} bytes, mtime {int(stat.st_mtime)}")


@functools.lru_cache(maxsize=None)
def fingerprint() -> dict:
    from .. import __version__
    model, flags = _cpuinfo()
    gpus = ([f"{torch.cuda.get_device_name(i)} (cc {'.'.join(map(str, torch.cuda.get_device_capability(i)))})"
             for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    return {"cpu": model, "isa": list(flags), "gpus": gpus, "torch": torch.__version__,
            "babygpt_ext": __version__, "extension": _extension_build()}


def _read(p: Path):
    """(decisions, None) from a file of ours, or (None, why it is not usable)."""
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"unreadable or not JSON ({type(e).__name__})"
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("decisions"), dict):
        return None, f"not a {FORMAT!r} file"
    if data.get("fingerprint") != fingerprint():
        ours, theirs = fingerprint(), data.get("fingerprint") or {}
        differ = [k for k in ours if theirs.get(k) != ours[k]] if isinstance(theirs, dict) else ["all"]
        return None, f"written on another machine or build (differs in: {', '.join(differ)})"
    return data["decisions"], None


def _load() -> dict:
    if "decisions" not in _state:
        decisions, why = _read(path())
        if why is not None:
            warnings.warn(f"babygpt_ext: ignoring the tuning cache {path()}: {why}; it is rewritten at the next "
                          "measured decision", RuntimeWarning, stacklevel=2)
        _state["decisions"], _state["status"] = decisions or {}, why or "ok"
    return _state["decisions"]


def forget() -> None:
    """Drop what was loaded (the next lookup reads the file again): for tests and `babygpt tune`."""
    _state.clear()


def status() -> str:
    _load()
    return _state["status"]


def entries() -> dict:
    """{label: entry} of this machine and build."""
    return dict(_load())


def to_call(entry: dict) -> Call:
    c = entry["call"]
    return Call(c["op"], c["device"], getattr(torch, c["dtype"]), c["head_dim"], tuple(map(tuple, c["dims"])),
                c["needs_grad"], c["device_name"])


def lookup(call: Call) -> Optional[dict]:
    return _load().get(call.label())


def store(call: Call, backend: str, static: str, times: Dict[str, float], rounds: int) -> None:
    """Record a decision, merged into what the file holds now, written atomically."""
    entry = {"call": {"op": call.op, "device": call.device, "dtype": str(call.dtype).replace("torch.", ""),
                      "head_dim": call.head_dim, "dims": [list(d) for d in call.dims],
                      "needs_grad": call.needs_grad, "device_name": call.device_name},
             "backend": backend, "static": static, "rounds": rounds,
             "times_us": {n: round(t * 1e6, 3) for n, t in times.items()}}
    decisions = _load()
    decisions[call.label()] = entry
    p = path()
    on_disk, _ = _read(p)
    merged = {**(on_disk or {}), **decisions}
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:  # plain open: the file's mode follows the umask
            json.dump({"format": FORMAT, "fingerprint": fingerprint(), "decisions": merged}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _state.get("status") != "unwritable":
            warnings.warn(f"babygpt_ext: cannot write the tuning cache {p} ({e}); decisions stay in memory for "
                          "this process", RuntimeWarning, stacklevel=2)
        _state["status"] = "unwritable"
        return
    decisions.update(merged)
    _state["status"] = "ok"
