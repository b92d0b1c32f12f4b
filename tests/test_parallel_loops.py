"""No hidden parallelism: every parallel loop of every kernel is one of its ``prange``s.

``parallel=True`` also turns array expressions and slice assignments
(``a[:] = 0``, ``wb[:, :K] = w2``) into parallel loops, each an extra fork and
join, and silently runs a ``prange`` serially when its body can raise (an
``assert``). For every kernel of the parallel backend this compiles a fresh
``parallel=True`` copy at a tiny signature, reads the parfors Numba built
(its parallel diagnostics: ``metadata["parfor_diagnostics"]``), and pins their
number, before and after fusion, to the number of ``prange`` loops in the
kernel's source.
"""

from __future__ import annotations

import ast
import inspect
import re

import numba
import numpy as np
import pytest
from numba import prange

from scratchcnn.kernels import _MODULES, KERNEL_NAMES
from scratchcnn.kernels._build import _COMMON, _renamed
from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes

from kernel_args import conv_workspaces

PRANGE_RE = re.compile(r"^\s*for .* in prange\(", re.M)


def _function_source(fn) -> str:
    """The source of ``fn``'s definition, found with ``ast`` in its module."""
    module_src = inspect.getsource(inspect.getmodule(fn))
    for node in ast.parse(module_src).body:
        if isinstance(node, ast.FunctionDef) and node.name == fn.__name__:
            return ast.get_source_segment(module_src, node)
    raise LookupError(fn.__name__)


def _sources() -> dict:
    return {name: getattr(mod, name) for mod in _MODULES for name in mod.__all__}


def _args() -> dict:
    """Tiny arguments for every kernel (float64; the loop structure does not depend on them)."""
    rng = np.random.default_rng(0)
    n, c, h, w, f, k = 2, 2, 6, 6, 3, 3
    oh, ow, K, P = h - k + 1, w - k + 1, c * k * k, (h - k + 1) * (w - k + 1)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, k, k))
    b = rng.standard_normal(f)
    dout = rng.standard_normal((n, f, oh, ow))
    out = np.empty((n, f, oh, ow))
    ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (1, 1), (0, 0),
                         np.float64)
    pshape = (n, f, oh // 2, ow // 2)
    pout, am = np.zeros(pshape), np.zeros(pshape, np.int32)
    flat = x.reshape(-1)
    xd, wd, bd, dy = (rng.standard_normal(s) for s in ((3, 5), (5, 4), (4,), (3, 4)))
    logits = rng.standard_normal((3, 4))
    labels = np.array([0, 3, 1])
    g = rng.standard_normal(7)
    cols = np.empty((n, K, P))
    return {
        "conv2d_forward_direct": (x, wt, b, 1, 1, 0, 0, out),
        "conv2d_backward_input_direct": (dout, wt, 1, 1, 0, 0, np.empty_like(x)),
        "conv2d_backward_weight_direct": (x, dout, 1, 1, 0, 0, np.empty_like(wt),
                                          np.empty_like(b)),
        "im2col_plain": (x, k, k, 1, 1, 0, 0, cols),
        "col2im_plain": (cols, k, k, 1, 1, 0, 0, np.empty_like(x)),
        "conv2d_forward_gemm": (x, wt, b, 1, 1, 0, 0, cols, out),
        "conv2d_backward_input_gemm": (dout, wt, 1, 1, 0, 0, cols.copy(), np.empty_like(x)),
        "conv2d_backward_weight_gemm": (dout, cols, np.empty((n, f, K)), np.empty_like(wt),
                                        np.empty_like(b)),
        "conv2d_forward": (x, wt, b, 1, 1, 0, 0, True, ws["wb"], ws["cols"], ws["gemm_out"],
                           out),
        "conv2d_backward_input": (dout, wt, 1, 1, 0, 0, ws["gemm_out"], ws["dcols"],
                                  np.empty_like(x)),
        "conv2d_backward_weight": (dout, ws["cols"], ws["gemm_out"], ws["partial"],
                                   np.empty_like(wt), np.empty_like(b)),
        "conv2d_backward": (dout, wt, ws["cols"], 1, 1, 0, 0, True, ws["gemm_out"],
                            ws["partial"], ws["dcols"], np.empty_like(wt), np.empty_like(b),
                            np.empty_like(x)),
        "conv2d_sum_group_partials": (ws["partial"], np.empty_like(wt), np.empty_like(b)),
        "conv2d_relu_pool_forward": (x, wt, b, 1, 1, 0, 0, oh, ow, True, True, ws["wb"],
                                     ws["cols"], ws["tile"], pout, am),
        "conv2d_relu_pool_backward": (pout, am, pout, wt, ws["cols"], 1, 1, 0, 0, oh, ow,
                                      True, True, ws["tile"], ws["partial"], ws["dcols"],
                                      np.empty_like(wt), np.empty_like(b), np.empty_like(x)),
        "maxpool2d_forward": (out, 2, 2, 2, 2, pout, am),
        "maxpool2d_backward": (pout, am, pout, True, np.empty_like(out)),
        "relu_forward": (flat, np.empty_like(flat)),
        "relu_backward": (flat, flat, np.empty_like(flat)),
        "dense_forward": (xd, wd, bd, True, np.empty((3, 4))),
        "dense_backward_input": (dy, wd, np.empty_like(xd)),
        "dense_backward_weight": (xd, dy, np.empty_like(wd), np.empty_like(bd)),
        "softmax_cross_entropy": (logits, labels, 1 / 3, np.empty(3), np.empty_like(logits)),
        "adam_update": (g.copy(), g, g * 0.1, g * g, 1e-3, 0.9, 0.999, 1e-7),
        "sgd_update": (g.copy(), g, g * 0.1, 0.01, 0.9, 1e-4),
    }


def parfor_counts(fn, args) -> tuple[int, int]:
    """(parfors before fusion, parfors after) of a fresh parallel build of ``fn``."""
    flags = dict(_COMMON, cache=False)
    disp = numba.njit(parallel=True, **flags)(_renamed(fn, "__loops"))
    disp(*args)
    diag = disp.overloads[disp.signatures[0]].metadata["parfor_diagnostics"]
    return len(diag.initial_parfors), diag.count_parfors()


def test_every_kernel_has_arguments():
    assert set(_args()) == set(KERNEL_NAMES)


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_parallel_loops_are_the_pranges(name):
    fn = _sources()[name]
    pranges = len(PRANGE_RE.findall(_function_source(fn)))
    assert pranges >= 1
    before, after = parfor_counts(fn, _args()[name])
    assert (before, after) == (pranges, pranges), (
        f"{name}: {pranges} prange loop(s) in the source, but Numba built {before} parallel "
        f"loop(s) ({after} after fusion): an array expression or slice assignment became "
        "a hidden parallel loop, or a prange was run serially (e.g. an assert in its body)")


def test_counting_sees_a_serialized_prange():
    """The check can fail: a raise in a prange body makes Numba run the loop serially,
    and a slice assignment is a parallel loop of its own."""
    def relu_with_assert(x, out):
        for i in prange(x.size):
            if x[i] != x[i]:
                raise ValueError("NaN")
            out[i] = x[i]

    def relu_with_fill(x, out):
        out[:] = 0
        for i in prange(x.size):
            out[i] = x[i]

    x = np.arange(4.0)
    from numba.core.errors import NumbaPerformanceWarning

    with pytest.warns(NumbaPerformanceWarning) as caught:  # Numba says so, twice
        assert parfor_counts(relu_with_assert, (x, np.empty_like(x))) == (0, 0)
    assert any("will not be executed in parallel" in str(w.message) for w in caught)
    assert parfor_counts(relu_with_fill, (x, np.empty_like(x)))[0] == 2
