"""Without a GPU (and without the simulator) the CUDA backend fails in one clear line.

The CUDA kernels themselves are tested in tests/cuda/ (simulator, own process)
and compiled to PTX in tests/test_cuda_ptx.py.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import scratchcnn as sc
from scratchcnn import kernels


def _gpu_or_simulator() -> bool:
    if importlib.util.find_spec("numba_cuda") is None:
        return False
    from numba import cuda

    return cuda.is_available()


needs_no_gpu = pytest.mark.skipif(_gpu_or_simulator(), reason="a CUDA GPU (or the simulator) "
                                  "is available here: the backend works")


def test_importing_the_package_does_not_import_numba_cuda():
    code = ("import sys, numpy as np, scratchcnn as sc; from scratchcnn import kernels; "
            "m = sc.reference_cnn(backend='serial'); m.forward(np.zeros((1, 3, 32, 32), "
            "np.float32)); print('numba.cuda' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@needs_no_gpu
def test_get_backend_cuda_without_gpu_is_one_clear_line():
    with pytest.raises(ValueError) as e:
        kernels.get_backend("cuda")
    msg = str(e.value)
    assert "\n" not in msg and "--backend parallel" in msg
    assert "no usable CUDA GPU" in msg or "numba-cuda is not installed" in msg
    with pytest.raises(ValueError, match="--backend parallel"):
        sc.Dense(3, 4, backend="cuda")


def test_get_backend_cuda_without_numba_cuda(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(kernels, "_cuda", None)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    with pytest.raises(ValueError, match=r"numba-cuda is not installed: pip install '\.\[cuda\]'"):
        kernels.get_backend("cuda")


@needs_no_gpu
def test_train_cli_backend_cuda_without_gpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scratchcnn.train", "--backend", "cuda",
                        "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "no usable CUDA GPU" in lines[0] or "numba-cuda is not installed" in lines[0]
    assert "--backend parallel" in lines[0]
    assert not (tmp_path / "r").exists()  # failed before loading data or making a run folder


@pytest.mark.parametrize("error, cause", [
    (AttributeError("module 'numpy' has no attribute 'row_stack'"), "does not work with numpy"),
    (OSError("libNVVM cannot be found"), "'numba-cuda[cu12]' or 'numba-cuda[cu13]'"),
])
def test_compiler_check_names_the_cause(monkeypatch, error, cause):
    """A GPU whose numba-cuda cannot compile: a version mismatch (seen: numba-cuda 0.30.4
    with numpy 2.5 on a GPU machine) and missing compiler libraries get different advice."""
    pytest.importorskip("numba_cuda")
    from scratchcnn.kernels import cuda as kcuda

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(kcuda.cuda, "compile_ptx", broken)
    with pytest.raises(ValueError) as e:
        kcuda._check_compiler()
    msg = str(e.value)
    assert "\n" not in msg and cause in msg and "--backend parallel" in msg
    assert type(error).__name__ in msg
