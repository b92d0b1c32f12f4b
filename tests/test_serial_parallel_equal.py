"""The parallel build is bit-for-bit equal to the serial build, at 1, 2 and 3 threads.

Bit-for-bit (compared as raw bytes), not "close": every parallel loop owns its
outputs and every sum runs in a fixed order, so thread count cannot change a
single rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.kernels import parallel, serial
from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes
from scratchcnn.loop import train_step

from conftest import THREAD_COUNTS
from kernel_args import conv_workspaces


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _run(kernel_name, make_args, out_idx, threads_setter, nthreads):
    """Run the kernel in both builds on fresh copies of the args; compare the outputs."""
    threads_setter(nthreads)
    s_args, p_args = make_args(), make_args()
    getattr(serial, kernel_name)(*s_args)
    getattr(parallel, kernel_name)(*p_args)
    for i in out_idx:
        assert _same_bits(s_args[i], p_args[i]), f"{kernel_name}: output {i} differs"


# The reference network's layer shapes (batch 8) plus a strided, padded conv.
CONV_SHAPES = [
    # N, C, H, W, F, K, stride, pad
    (8, 3, 32, 32, 32, 3, 1, 0),
    (8, 32, 15, 15, 64, 3, 1, 0),
    (8, 64, 6, 6, 64, 3, 1, 0),
    (5, 3, 9, 11, 7, 3, 2, 1),
]


@pytest.mark.parametrize("nthreads", THREAD_COUNTS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=str)
def test_conv_kernels(shape, nthreads, numba_threads):
    n, c, h, w, f, k, s, p = shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((f, c, k, k), dtype=np.float32)
    b = rng.standard_normal(f, dtype=np.float32)
    dout = rng.standard_normal((n, f, oh, ow), dtype=np.float32)

    def out():
        return np.empty((n, f, oh, ow), np.float32)

    _run("conv2d_forward_direct", lambda: (x, wt, b, s, s, p, p, out()), [7], numba_threads,
         nthreads)
    # The groups the layers would use, and one sample per group (both parallel paths).
    for group in sorted({None, 1}, key=str):
        ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (s, s), (p, p),
                             np.float32, group)
        serial.conv2d_forward(x, wt, b, s, s, p, p, True, ws["wb"], ws["cols"], ws["gemm_out"],
                              out())

        def fresh(key, ws=ws):
            return ws[key].copy()

        _run("conv2d_forward",
             lambda fresh=fresh: (x, wt, b, s, s, p, p, True, fresh("wb"), fresh("cols"),
                                  fresh("gemm_out"), out()), [8, 9, 10, 11], numba_threads,
             nthreads)
        _run("conv2d_backward_input",
             lambda fresh=fresh: (dout, wt, s, s, p, p, fresh("gemm_out"), fresh("dcols"),
                                  np.empty_like(x)), [7, 8], numba_threads, nthreads)
        _run("conv2d_backward_weight",
             lambda fresh=fresh: (dout, fresh("cols"), fresh("gemm_out"), fresh("partial"),
                                  np.empty_like(wt), np.empty_like(b)), [3, 4, 5],
             numba_threads, nthreads)
        for slots in (None, 1, 2):  # scratch slots: one per group, fewer (runs of groups)
            dcols = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (s, s), (p, p),
                                    np.float32, group, slots)["dcols"]
            _run("conv2d_backward",
                 lambda fresh=fresh, dcols=dcols: (
                     dout, wt, fresh("cols"), s, s, p, p, True, fresh("gemm_out"),
                     fresh("partial"), dcols.copy(), np.empty_like(wt), np.empty_like(b),
                     np.empty_like(x)), [8, 9, 10, 11, 12, 13], numba_threads, nthreads)


@pytest.mark.parametrize("nthreads", THREAD_COUNTS)
def test_other_kernels(nthreads, numba_threads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 32, 30, 30), dtype=np.float32)
    _run("maxpool2d_forward",
         lambda: (x, 2, 2, 2, 2, np.empty((8, 32, 15, 15), np.float32),
                  np.empty((8, 32, 15, 15), np.int64)), [5, 6], numba_threads, nthreads)
    am, pooled = np.empty((8, 32, 15, 15), np.int64), np.empty((8, 32, 15, 15), np.float32)
    serial.maxpool2d_forward(x, 2, 2, 2, 2, pooled, am)
    dp = rng.standard_normal(am.shape, dtype=np.float32)
    for relu in (False, True):
        _run("maxpool2d_backward", lambda relu=relu: (dp, am, pooled, relu, np.empty_like(x)),
             [4], numba_threads, nthreads)

    flat = x.reshape(-1)
    _run("relu_forward", lambda: (flat, np.empty_like(flat)), [1], numba_threads, nthreads)
    _run("relu_backward", lambda: (flat, flat[::-1].copy(), np.empty_like(flat)), [2],
         numba_threads, nthreads)

    xd = rng.standard_normal((21, 1000), dtype=np.float32)  # several sample/feature blocks,
    wd = rng.standard_normal((1000, 64), dtype=np.float32)  # the last ones partial
    bd = rng.standard_normal(64, dtype=np.float32)
    dy = rng.standard_normal((21, 64), dtype=np.float32)
    _run("dense_forward", lambda: (xd, wd, bd, True, np.empty((21, 64), np.float32)), [4],
         numba_threads, nthreads)
    _run("dense_backward_input", lambda: (dy, wd, np.empty_like(xd)), [2], numba_threads,
         nthreads)
    _run("dense_backward_weight", lambda: (xd, dy, np.empty_like(wd), np.empty_like(bd)),
         [2, 3], numba_threads, nthreads)

    logits = rng.standard_normal((32, 10), dtype=np.float32)
    labels = rng.integers(0, 10, 32)
    _run("softmax_cross_entropy",
         lambda: (logits, labels, np.float32(1 / 32), np.empty(32, np.float32),
                  np.empty_like(logits)), [3, 4],
         numba_threads, nthreads)

    g = rng.standard_normal(5000, dtype=np.float32)
    one = np.float32
    _run("adam_update",
         lambda: (g[::-1].copy(), g, g * one(0.1), g * g, one(1e-3), one(0.9), one(0.999),
                  one(1e-7)), [0, 2, 3], numba_threads, nthreads)
    _run("sgd_update", lambda: (g[::-1].copy(), g, g * one(0.1), one(0.01), one(0.9), one(1e-4)),
         [0, 2], numba_threads, nthreads)


def _train_steps(backend: str, steps: int, x, y) -> tuple[list[float], dict]:
    model = sc.reference_cnn(seed=3, backend=backend)
    loss = sc.SoftmaxCrossEntropy(backend=backend)
    opt = sc.Adam(model.parameters(), backend=backend)
    losses = []
    for _ in range(steps):
        losses.append(train_step(model, loss, opt, x, y).loss)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    weights = {name: p.value.copy() for name, p in model.named_parameters()}
    return losses, {"grads": grads, "weights": weights}


@pytest.mark.parametrize("nthreads", THREAD_COUNTS)
def test_reference_network_step(nthreads, numba_threads):
    """Forward + backward + Adam on the full reference network: identical bits."""
    rng = np.random.default_rng(2)
    x = rng.random((8, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    want_losses, want = _train_steps("serial", 2, x, y)
    numba_threads(nthreads)
    got_losses, got = _train_steps("parallel", 2, x, y)
    assert got_losses == want_losses
    for kind in ("grads", "weights"):
        for name in want[kind]:
            assert _same_bits(got[kind][name], want[kind][name]), f"{kind} of {name} differ"


def test_conv_scratch_follows_thread_count(numba_threads):
    """The parallel backend gives conv2d_backward one dcols slot per *current* thread
    (not per thread of Numba's pool); the serial backend one slot. Same bits either way."""
    rng = np.random.default_rng(3)
    x = rng.random((8, 32, 15, 15), dtype=np.float32)
    results = {}
    for backend, nthreads in (("serial", 1), ("parallel", 1), ("parallel", 2),
                              ("parallel", 3)):
        numba_threads(nthreads)
        conv = sc.Conv2D(32, 16, 3, activation="relu", rng=np.random.default_rng(0),
                         backend=backend)
        out = conv.forward(x).copy()
        plan = conv.plan_for(x.shape)
        conv.backward(out)
        assert plan.num_groups == 4
        assert list(plan._scratch) == [1 if backend == "serial" else nthreads]
        dcols, _ = plan._scratch[nthreads]
        assert dcols.shape[0] == min(nthreads, plan.num_groups)
        results[backend, nthreads] = conv.weight.grad.tobytes() + out.tobytes()
    assert len(set(results.values())) == 1
