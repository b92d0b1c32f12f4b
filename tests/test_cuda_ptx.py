"""The CUDA kernels compile for a real GPU, checked without one: NVVM turns each into PTX.

The simulator (tests/cuda/) runs the kernels as plain Python, so it never
type-checks or compiles them. Here every kernel is compiled to PTX with the
argument types its launcher passes (NumPy stand-ins have the same Numba types
as C-contiguous device arrays), at the real block sizes, and its PTX is checked
for float64 arithmetic (none: float32 throughout). Needs the CUDA compiler
libraries (NVVM, NVRTC), e.g. ``pip install 'numba-cuda[cu13]'`` or a CUDA
toolkit; skips with the reason otherwise, and under the simulator.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

F32 = np.float32


def _compiler_unavailable() -> str | None:
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed"
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        return "the CUDA simulator is on (it does not compile)"

    def probe(a):
        a[0] = 1

    try:
        cuda.compile_ptx(probe, "void(float32[::1])", cc=(7, 5))
    except Exception as e:  # NVVM or NVRTC missing: pathfinder, NvvmSupportError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return (f"cannot compile CUDA kernels here ({type(e).__name__}: {first}); "
                f"pip install 'numba-cuda[cu13]' (or [cu12]) to run this check")
    return None


def _launch_everything(m) -> None:
    """Call every launcher as the layers do, on NumPy stand-ins."""
    n, c, h, w, f, k, s, p = 2, 3, 7, 6, 4, 3, 2, 1
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x, wt, b = np.zeros((n, c, h, w), F32), np.zeros((f, c, k, k), F32), np.zeros(f, F32)
    cols = np.zeros((n, c * k * k, oh * ow), F32)
    out = np.zeros((n, f, oh, ow), F32)
    m.conv2d_forward(x, wt, b, s, s, p, p, True, cols, out)
    m.conv2d_forward_direct(x, wt, b, s, s, p, p, out)
    m.conv2d_backward_input(out, wt, s, s, p, p, x)
    m.conv2d_backward_weight(out, cols, wt, b)
    pooled, argmax = np.zeros((n, c, 3, 3), F32), np.zeros((n, c, 3, 3), np.int64)
    m.maxpool2d_forward(x, 2, 2, 2, 2, pooled, argmax)
    m.maxpool2d_backward(pooled, argmax, pooled, True, x)
    xd, wd, bd, yd = (np.zeros(shape, F32) for shape in ((n, 5), (5, 4), (4,), (n, 4)))
    m.dense_forward(xd, wd, bd, True, yd)
    m.dense_backward_input(yd, wd, xd)
    m.dense_backward_weight(xd, yd, wd, bd)
    flat = x.reshape(-1)
    m.relu_forward(flat, flat)
    m.relu_backward(flat, flat, flat)
    m.softmax_cross_entropy(yd, np.zeros(n, np.int64), F32(1 / n), np.zeros(n, F32), yd)
    q = np.zeros(10, F32)
    m.adam_update(q, q, q, q, F32(1e-3), F32(0.9), F32(0.999), F32(1e-7))
    m.sgd_update(q, q, q, F32(0.01), F32(0.9), F32(0))


def test_every_cuda_kernel_compiles_to_ptx_in_float32(monkeypatch):
    reason = _compiler_unavailable()
    if reason:
        pytest.skip(reason)
    from numba import cuda, typeof

    from scratchcnn.kernels import cuda as m  # importing compiles nothing

    launches = []

    class Recorder:  # stands in for a kernel: kernel[grid, block](*args) records the call
        def __init__(self, dispatcher):
            self.dispatcher = dispatcher

        def __getitem__(self, config):
            return lambda *args: launches.append((self.dispatcher, config, args))

    kernels = {name: obj for name, obj in vars(m).items()
               if name.endswith("_k") and hasattr(obj, "py_func")}
    for name, obj in kernels.items():
        monkeypatch.setattr(m, name, Recorder(obj))
    _launch_everything(m)
    assert {d.py_func.__name__ for d, _, _ in launches} == set(kernels)

    seen = set()
    for dispatcher, _, args in launches:
        sig = tuple(typeof(a) for a in args)
        if (dispatcher, sig) in seen:
            continue
        seen.add((dispatcher, sig))
        ptx, _ = cuda.compile_ptx(dispatcher.py_func, sig, cc=(7, 5))
        name = dispatcher.py_func.__name__
        assert not re.search(r"\.f64\b", ptx), f"{name} computes in float64"
        if name in ("_conv_dw_k", "_maxpool_dx_k"):
            assert re.search(r"\b(atom|red)\.", ptx), f"{name}: no atomic instruction"
