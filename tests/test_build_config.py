"""setup.py's decisions, checked without compiling: where the CUDA toolkit is, when CUDA is
built, and the error for an nvcc whose major version does not match torch's CUDA."""

import importlib.util
import os
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_py(monkeypatch):
    for var in ("CUDA_HOME", "CUDA_PATH", "BABYGPT_EXT_CUDA"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location("babygpt_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the functions; the build itself only runs as __main__
    return module


def fake_toolkit(root: Path, release: str) -> Path:
    """A directory that looks like a CUDA toolkit whose nvcc reports `release`."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.0'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return root


def test_a_wrapper_nvcc_on_path_leads_to_the_real_toolkit(setup_py, tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path / "cuda-12.9", "12.9")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    wrapper = wrappers / "nvcc"  # like /usr/local/bin/nvcc here: a script, not a symlink
    wrapper.write_text(f"#!/bin/sh\nexec {toolkit}/bin/nvcc \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}{os.environ['PATH']}")
    assert setup_py.find_cuda_home() == toolkit.resolve()


def test_cuda_home_wins_when_it_is_a_toolkit(setup_py, tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path / "tk", "13.0")
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert setup_py.find_cuda_home() == toolkit.resolve()
    assert setup_py.nvcc_version(toolkit) == "13.0"


def test_mismatched_nvcc_major_stops_the_build_naming_both_versions(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(fake_toolkit(tmp_path / "tk", "12.4")))
    with pytest.raises(SystemExit, match=r"nvcc 12\.4 .* torch's CUDA 13\.0 differ in their major version.*Fix:"):
        setup_py.want_cuda("13.0")


def test_cpu_only_torch_builds_without_cuda_and_without_complaint(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(fake_toolkit(tmp_path / "tk", "13.0")))
    assert setup_py.want_cuda(None) is None


def test_requiring_cuda_on_a_cpu_only_torch_explains_how(setup_py, monkeypatch):
    monkeypatch.setenv("BABYGPT_EXT_CUDA", "1")
    with pytest.raises(SystemExit, match="CPU-only build.*BABYGPT_EXT_CUDA=0"):
        setup_py.want_cuda(None)


def test_cuda_switch_off_and_bad_values(setup_py, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(fake_toolkit(tmp_path / "tk", "13.0")))
    monkeypatch.setenv("BABYGPT_EXT_CUDA", "0")
    assert setup_py.want_cuda("13.0") is None
    monkeypatch.setenv("BABYGPT_EXT_CUDA", "yes")
    with pytest.raises(SystemExit, match="must be auto, 0 or 1"):
        setup_py.want_cuda("13.0")
    monkeypatch.setenv("BABYGPT_EXT_CUDA", "auto")
    assert setup_py.want_cuda("13.0") == (tmp_path / "tk").resolve()


def test_the_installed_extension_was_built_as_setup_py_decides(setup_py):
    """Here torch has CUDA and nvcc is found, so the CUDA part must really be in _C."""
    import torch
    from babygpt_ext import _C
    expected = setup_py.want_cuda(torch.version.cuda) is not None
    assert _C.build_info()["cuda"] == expected


def test_without_torch_the_build_stops_with_the_commands_to_run(tmp_path):
    """What plain `pip install .` meets: setup.py runs in an isolated environment with no torch."""
    import subprocess
    import sys

    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', 'egg_info']; "
            f"runpy.run_path({str(ROOT / 'setup.py')!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "pip install torch\n" in p.stderr and "pip install --no-build-isolation .\n" in p.stderr
