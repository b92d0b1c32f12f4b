"""The conv + ReLU + max-pool kernels (kernels/convpool.py) and their use by Sequential:
the same results as the separate conv, ReLU and pool kernels, forward and backward.

The fused pair computes only the conv outputs its pool reads, in window-major order
(kernels/windows.py), so its weight and input gradients are sums of fewer terms in
another order: equal to the separate kernels' to rounding, not bit for bit. What stays
bit for bit: the unrolled patches (copies), the argmax, the pooled output wherever BLAS
computes each output element alike (float32 here), the ties, and (tests/
test_serial_parallel_equal.py) serial = parallel at every thread count."""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.fusion import ConvReLUPool
from scratchcnn.kernels import CPU_ONLY, parallel, serial
from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes
from scratchcnn.model import reference_cnn

from kernel_args import conv_workspaces, plane_argmax, window_order

# (N, C, H, W, F, K, stride, pad): the reference network's first two layers
# (batch 8), odd conv outputs (the pool drops the last row/column), padding and stride
CASES = [
    (8, 3, 32, 32, 32, 3, 1, 0),
    (8, 32, 15, 15, 64, 3, 1, 0),
    (4, 2, 9, 8, 3, 3, 1, 0),
    (6, 3, 8, 11, 5, 3, 2, 1),
    (3, 4, 7, 7, 2, 2, 1, 1),
]


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _close(a: np.ndarray, ref: np.ndarray, dtype) -> None:
    """a equals ref to the rounding of sums taken in another order."""
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(a, ref, rtol=tol, atol=tol * float(np.abs(ref).max()))


def _conv_inputs(case, dtype, seed):
    """(rng, x, w, b, OH, OW) of a CASES entry, random normal; rng continues after them."""
    n, c, h, w, f, k, s, p = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    return rng, x, wt, b, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("be", [serial, parallel], ids=lambda b: b.name)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_kernels_match_separate_kernels(case, be, dtype, numba_threads):
    n, c, h, w, f, k, s, p = case
    numba_threads(2)
    rng, x, wt, b, oh, ow = _conv_inputs(case, dtype, seed=0)
    pshape = (n, f, oh // 2, ow // 2)
    dpool = rng.standard_normal(pshape).astype(dtype)
    groups = [g for g in range(1, n + 1) if n % g == 0]
    for group in groups:
        for slots in (None, 1, 2):
            # separate: conv (+ReLU), max-pool; backward: pool (+ReLU mask), conv
            ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (s, s), (p, p),
                                 dtype, group, slots)
            out = np.full((n, f, oh, ow), np.nan, dtype)
            be.conv2d_forward(x, wt, b, s, s, p, p, True, ws["wb"], ws["cols"],
                              ws["gemm_out"], out)
            pout, am = np.full(pshape, np.nan, dtype), np.full(pshape, -1, np.int32)
            be.maxpool2d_forward(out, 2, 2, 2, 2, pout, am)
            dconv = np.full(out.shape, np.nan, dtype)
            be.maxpool2d_backward(dpool, am, pout, True, dconv)
            dx, dw, db = (np.full(a.shape, np.nan, dtype) for a in (x, wt, b))
            be.conv2d_backward(dconv, wt, ws["cols"], s, s, p, p, True, ws["gemm_out"],
                               ws["partial"], ws["dcols"], dw, db, dx)
            # fused
            fws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (s, s),
                                  (p, p), dtype, group, slots)
            fpout, fam = np.full(pshape, np.nan, dtype), np.full(pshape, -1, np.int32)
            be.conv2d_relu_pool_forward(x, wt, b, s, s, p, p, oh, ow, True, True, fws["wb"],
                                        fws["cols"], fws["tile"], fpout, fam)
            _close(fpout, pout, dtype)
            assert _bits(plane_argmax(fam, oh, ow)) == _bits(am)
            # the patches kept for backward: the pooled pixels' patches, window-major
            order, k1, p4 = window_order(oh, ow), c * k * k + 1, 4 * (oh // 2) * (ow // 2)
            g_ = n // ws["cols"].shape[0]
            for fc, sc_ in zip(fws["cols"], ws["cols"]):
                if g_ == 1:
                    kept, want = fc.reshape(-1)[:k1 * p4].reshape(k1, p4), sc_[:, order]
                else:
                    kept = fc.reshape(-1)[:g_ * p4 * k1].reshape(g_, p4, k1)
                    want = sc_.reshape(g_, oh * ow, k1)[:, order]
                assert _bits(kept) == _bits(want)
            for need_dx in (True, False):
                fdx, fdw, fdb = (np.full(a.shape, np.nan, dtype) for a in (x, wt, b))
                be.conv2d_relu_pool_backward(dpool, fam, fpout, wt, fws["cols"], s, s, p, p,
                                             oh, ow, True, need_dx, fws["tile"], fws["partial"],
                                             fws["dcols"], fdw, fdb, fdx)
                _close(fdw, dw, dtype)
                _close(fdb, db, dtype)
                if need_dx:
                    _close(fdx, dx, dtype)
                else:
                    assert np.isnan(fdx).all()  # not touched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("be", [serial, parallel], ids=lambda b: b.name)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_kernels_without_pool_equal_conv_kernels(case, be, dtype, numba_threads):
    """pool=False (how the plans run a convolution no pool follows): the bits of
    conv2d_forward and conv2d_backward, with and without the ReLU, every group size and
    slot count; argmax is never touched."""
    n, c, h, w, f, k, s, p = case
    numba_threads(2)
    rng, x, wt, b, oh, ow = _conv_inputs(case, dtype, seed=2)
    dout = rng.standard_normal((n, f, oh, ow)).astype(dtype)
    no_argmax = np.full((1, 1, 1, 1), -7, np.int32)
    for group in [g for g in range(1, n + 1) if n % g == 0]:
        for slots in (None, 1, 2):
            for relu in (True, False):
                ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (s, s),
                                     (p, p), dtype, group, slots)
                out = np.full(dout.shape, np.nan, dtype)
                be.conv2d_forward(x, wt, b, s, s, p, p, relu, ws["wb"], ws["cols"],
                                  ws["gemm_out"], out)
                dx, dw, db = (np.full(a.shape, np.nan, dtype) for a in (x, wt, b))
                be.conv2d_backward(dout, wt, ws["cols"], s, s, p, p, True, ws["gemm_out"],
                                   ws["partial"], ws["dcols"], dw, db, dx)
                fws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (s, s),
                                      (p, p), dtype, group, slots)
                fout = np.full(dout.shape, np.nan, dtype)
                be.conv2d_relu_pool_forward(x, wt, b, s, s, p, p, oh, ow, relu, False,
                                            fws["wb"], fws["cols"], fws["tile"], fout,
                                            no_argmax)
                assert _bits(fout) == _bits(out)
                assert _bits(fws["cols"]) == _bits(ws["cols"])
                fdx, fdw, fdb = (np.full(a.shape, np.nan, dtype) for a in (x, wt, b))
                be.conv2d_relu_pool_backward(dout, no_argmax, dout, wt, fws["cols"], s, s, p,
                                             p, oh, ow, False, True, fws["tile"],
                                             fws["partial"], fws["dcols"], fdw, fdb, fdx)
                assert _bits(fdw) == _bits(dw) and _bits(fdb) == _bits(db)
                assert _bits(fdx) == _bits(dx)
    assert no_argmax.ravel().tolist() == [-7]


@pytest.mark.parametrize("be", [serial, parallel], ids=lambda b: b.name)
def test_fused_pool_breaks_ties_like_the_separate_pool(be, numba_threads):
    """Small integers: most windows hold their maximum twice or more (and many are all
    <= 0). The channel-wise pool of pixel rows (G > 1) and the plane-wise one (G = 1)
    must pick the argmax the separate pool picks: the first maximum, row-major."""
    numba_threads(2)
    rng = np.random.default_rng(3)
    n, c, h, w, f = 4, 2, 9, 8, 16
    x = rng.integers(-1, 2, (n, c, h, w)).astype(np.float32)
    wt = rng.integers(-1, 2, (f, c, 3, 3)).astype(np.float32)
    b = np.zeros(f, np.float32)
    oh, ow = h - 2, w - 2
    pshape = (n, f, oh // 2, ow // 2)
    for group in (1, 2, 4):
        ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (1, 1), (0, 0),
                             np.float32, group)
        out = np.empty((n, f, oh, ow), np.float32)
        be.conv2d_forward(x, wt, b, 1, 1, 0, 0, True, ws["wb"], ws["cols"], ws["gemm_out"],
                          out)
        pout, am = np.empty(pshape, np.float32), np.empty(pshape, np.int32)
        be.maxpool2d_forward(out, 2, 2, 2, 2, pout, am)
        fpout, fam = np.full(pshape, np.nan, np.float32), np.full(pshape, -1, np.int32)
        be.conv2d_relu_pool_forward(x, wt, b, 1, 1, 0, 0, oh, ow, True, True, ws["wb"],
                                    ws["cols"], ws["tile"], fpout, fam)
        # small integers: every product is exact, so the same bits
        assert _bits(fpout) == _bits(pout) and _bits(plane_argmax(fam, oh, ow)) == _bits(am)
        windows = out[:, :, :oh // 2 * 2, :ow // 2 * 2].reshape(n, f, oh // 2, 2, ow // 2, 2)
        ties = (windows == pout[:, :, :, None, :, None]).sum(axis=(3, 5)) > 1
        assert ties.mean() > 0.15  # the case really has ties (here about a quarter)


def test_fused_forward_refuses_a_pool_without_relu():
    x = np.ones((2, 1, 4, 4), np.float32)
    wt, b = np.ones((1, 1, 3, 3), np.float32), np.zeros(1, np.float32)
    ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (1, 1), (0, 0),
                         np.float32)
    pout, am = np.empty((2, 1, 1, 1), np.float32), np.empty((2, 1, 1, 1), np.int32)
    with pytest.raises(ValueError, match="pool=True needs relu=True"):
        serial.conv2d_relu_pool_forward(x, wt, b, 1, 1, 0, 0, 2, 2, False, True, ws["wb"],
                                        ws["cols"], ws["tile"], pout, am)


def test_plans_run_every_convolution_through_the_fused_pair(monkeypatch):
    """The reference network's training step calls no other convolution kernel (so a cold
    start compiles two conv kernels); that conv3's pool=False calls keep conv2d_forward /
    conv2d_backward's bits is test_fused_kernels_without_pool_equal_conv_kernels."""
    calls = []
    for name in ("conv2d_forward", "conv2d_backward", "conv2d_relu_pool_forward",
                 "conv2d_relu_pool_backward"):
        kernel = getattr(serial, name)
        monkeypatch.setattr(serial, name,
                            lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    _step("serial", True)
    assert set(calls) == {"conv2d_relu_pool_forward", "conv2d_relu_pool_backward"}
    assert len(calls) == 6  # conv1+pool1, conv2+pool2, conv3: forward and backward


def _step(backend: str, fuse: bool, dtype=np.float32):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 32, 32)).astype(dtype)
    y = rng.integers(0, 10, 8)
    model = reference_cnn(seed=0, backend=backend, dtype=dtype)
    model.fuse_conv_pool = fuse
    loss = sc.SoftmaxCrossEntropy(backend=backend, dtype=dtype)
    logits = model.forward(x)
    loss.forward(logits, y)
    dx = model.backward(loss.backward(), need_input_grad=True)
    grads = [p.grad.copy() for p in model.parameters()]
    return model, logits, dx, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["serial", "parallel"])
def test_sequential_fuses_conv_relu_pool(backend, dtype):
    fused, logits, dx, grads = _step(backend, True, dtype)
    plain, logits0, dx0, grads0 = _step(backend, False, dtype)
    assert [s.name for s in fused.steps][:2] == ["conv1+pool1", "conv2+pool2"]
    assert plain.steps == plain.layers
    _close(logits, logits0, dtype)
    _close(dx, dx0, dtype)
    for g, g0 in zip(grads, grads0):
        _close(g, g0, dtype)
    # the fused steps keep the argmax the separate pools computed (window-major)
    for step, pool, (oh, ow) in ((0, 1, (30, 30)), (1, 3, (13, 13))):
        fam = fused.steps[step]._argmax
        assert _bits(plane_argmax(fam, oh, ow)) == _bits(plain.layers[pool]._argmax)
    assert "conv1+pool1" in fused.summary() and "fused" in fused.summary()
    assert "fused" not in plain.summary()


def test_which_pairs_fuse():
    conv = sc.Conv2D(3, 4, 3, activation="relu", backend="serial")
    fuses = ConvReLUPool.can_fuse
    assert fuses(conv, sc.MaxPool2D(2, backend="serial"))
    assert not fuses(conv, sc.MaxPool2D(3, backend="serial"))  # 3x3 window
    assert not fuses(conv, sc.MaxPool2D(2, stride=1, backend="serial"))
    assert not fuses(conv, sc.MaxPool2D(2, backend="parallel"))  # other backend
    assert not fuses(conv, sc.Flatten(backend="serial"))
    assert not fuses(sc.Conv2D(3, 4, 3, backend="serial"),
                     sc.MaxPool2D(2, backend="serial"))  # no ReLU
    assert {"conv2d_relu_pool_forward", "conv2d_relu_pool_backward"} <= set(CPU_ONLY)
    model = sc.Sequential([conv, sc.MaxPool2D(2, backend="serial")])
    assert len(model.steps) == 1
    model.fuse_conv_pool = False  # the build step follows the flag
    assert model.steps == model.layers


def test_fused_layer_checks_its_use():
    conv = sc.Conv2D(3, 4, 3, activation="relu", backend="serial", name="c")
    pool = sc.MaxPool2D(2, backend="serial", name="p")
    fused = ConvReLUPool(conv, pool)
    assert fused.name == "c+p" and fused.params() == conv.params()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(RuntimeError, match="before forward"):
        fused.backward(np.zeros((2, 4, 3, 3), np.float32))
    out = fused.forward(x)
    assert out.shape == (2, 4, 3, 3) == (2, *fused.output_shape((3, 8, 8)))
    with pytest.raises(ValueError, match=r"c\+p \(backward\).*expected shape"):
        fused.backward(np.zeros((2, 4, 6, 6), np.float32))
    with pytest.raises(ValueError, match="2x2, stride-2"):
        ConvReLUPool(sc.Conv2D(3, 4, 3, backend="serial"), pool)
    with pytest.raises(ValueError, match="smaller than the 2x2 pooling window"):
        fused.forward(np.ascontiguousarray(x[:, :, :3, :3]))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_window_major_patches_are_the_plane_order_ones_permuted(case):
    """kernels/windows.py against conv_fast's plane-order helpers: im2col_windows /
    im2row_windows write the patches of the pooled pixels, window-major (the same copies,
    so the same bits), and col2im_windows / row2im_windows are their adjoints:
    <unroll(x), d> == <x, fold(d)> (float64, to rounding)."""
    from scratchcnn.kernels.conv_fast import im2col, im2row
    from scratchcnn.kernels.windows import (
        col2im_windows,
        im2col_windows,
        im2row_windows,
        row2im_windows,
    )

    _, c, h, w, _, k, s, p = case
    rng = np.random.default_rng(5)
    x = rng.standard_normal((c, h, w))
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    ph, pw = oh // 2, ow // 2
    kk, p4 = c * k * k, 4 * ph * pw
    order = window_order(oh, ow)
    cols, wcols = np.zeros((kk + 1, oh * ow)), np.zeros((kk + 1, p4))
    im2col(x, k, k, s, s, p, p, cols, 0)
    im2col_windows(x, k, k, s, s, p, p, ph, pw, wcols)
    assert _bits(wcols[:kk]) == _bits(cols[:kk, order]) and (wcols[kk] == 1).all()
    rows, wrows = np.zeros((oh * ow, kk + 1)), np.zeros((p4, kk + 1))
    im2row(x, k, k, s, s, p, p, rows, 0)
    im2row_windows(x, k, k, s, s, p, p, ph, pw, wrows, 0)
    assert _bits(wrows) == _bits(rows[order])
    d = rng.standard_normal((kk, p4))
    dx = np.full_like(x, np.nan)
    col2im_windows(d, k, k, s, s, p, p, ph, pw, dx)
    assert np.isclose((wcols[:kk] * d).sum(), (x * dx).sum(), rtol=1e-12)
    dx = np.full_like(x, np.nan)
    row2im_windows(d.T.copy(), 0, k, k, s, s, p, p, ph, pw, dx)
    assert np.isclose((wrows[:, :kk] * d.T).sum(), (x * dx).sum(), rtol=1e-12)
