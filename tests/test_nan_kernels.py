"""NaN is never hidden: ReLU, conv + ReLU, max-pool and conv + ReLU + pool
propagate NaN as IEEE arithmetic and PyTorch do, serial and parallel; finite
inputs give the same bits as before (the old selects are written out below)."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn.kernels import parallel, serial
from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes

import reference as ref
from kernel_args import conv_workspaces, plane_argmax

BACKENDS = [serial, parallel]


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
def test_relu_nan_and_finite_bits(be, dtype):
    x = np.array([np.nan, -np.nan, 1.5, -2.0, 0.0, -0.0, np.inf, -np.inf], dtype)
    out = np.full_like(x, 7)
    be.relu_forward(x, out)
    assert np.isnan(out[:2]).all()
    finite = x[2:]
    old = np.where(finite > 0, finite, dtype(0))  # the old select: -0.0 -> +0.0
    assert _bits(out[2:]) == _bits(old)
    dout = np.arange(1, 9).astype(dtype)
    dx = np.full_like(x, 7)
    be.relu_backward(x, dout, dx)
    assert _bits(dx[:2]) == _bits(dout[:2])  # NaN input: the gradient passes, as PyTorch
    assert _bits(dx[2:]) == _bits(np.where(finite > 0, dout[2:], dtype(0)))


def _pool(be, x, k, s):
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    out = np.full((n, c, oh, ow), 7, x.dtype)
    am = np.full((n, c, oh, ow), -1, np.int32)
    be.maxpool2d_forward(x, k, k, s, s, out, am)
    return out, am


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("k, s", [(2, 2), (2, 1), (3, 2)])
def test_maxpool_nan_window(be, dtype, k, s):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    x[0, 0, 1, 1] = 3.0 * x.max()  # a large maximum next to a NaN
    x[0, 0, 1, 0] = np.nan  # first in some windows, not first in others
    x[1, 2, 4, 5] = np.nan
    x[1, 2, 4, 6] = np.nan  # two NaN in one window: the first wins
    out, am = _pool(be, x, k, s)
    n, c, oh, ow = out.shape
    flat = x.reshape(n, c, -1)
    for idx in np.ndindex(n, c, oh, ow):
        a, b, i, j = idx
        win = x[a, b, i * s:i * s + k, j * s:j * s + k]
        if np.isnan(win).any():
            assert np.isnan(out[idx]), idx
            first = np.flatnonzero(np.isnan(win.reshape(-1)))[0]
            want_at = (i * s + first // k) * x.shape[3] + (j * s + first % k)
            assert am[idx] == want_at, idx
            assert np.isnan(flat[a, b, am[idx]])
        else:
            assert not np.isnan(out[idx])
    # finite planes: the reference (first maximum in row-major order) bit for bit
    xf = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    xf[0, 0, :2, :2] = 1.0  # ties
    xf[1, 1, 2:4, 2:4] = -0.0
    xf[1, 1, 2, 3] = 0.0
    out, am = _pool(be, xf, k, s)
    want, where = ref.maxpool2d_forward(xf, (k, k), (s, s))
    assert _bits(out) == _bits(want) and (am == where).all()


def _conv_pool_case(dtype, group):
    rng = np.random.default_rng(1)
    n, c, h, w, f = 4, 2, 8, 9, 3
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    x[1, 0, 3, 4] = np.nan  # reaches conv outputs (1, :, 1..3, 2..4)
    ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (1, 1), (0, 0), dtype,
                         group)
    return x, wt, b, ws


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("group", [1, 2])
def test_conv_relu_and_fused_pool_propagate_nan(be, dtype, group):
    x, wt, b, ws = _conv_pool_case(dtype, group)
    n, f = x.shape[0], wt.shape[0]
    oh, ow = x.shape[2] - 2, x.shape[3] - 2
    out = np.full((n, f, oh, ow), 7, dtype)
    be.conv2d_forward(x, wt, b, 1, 1, 0, 0, True, ws["wb"], ws["cols"], ws["gemm_out"], out)
    hit = np.zeros(out.shape, bool)
    hit[1, :, 1:4, 2:5] = True
    assert np.isnan(out[hit]).all()
    assert not np.isnan(out[~hit]).any() and (out[~hit] >= 0).all()
    pshape = (n, f, oh // 2, ow // 2)
    pout, am = np.full(pshape, 7, dtype), np.full(pshape, -1, np.int32)
    be.maxpool2d_forward(out, 2, 2, 2, 2, pout, am)
    fws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (1, 1), (0, 0), dtype,
                          group)
    fpout, fam = np.full(pshape, 7, dtype), np.full(pshape, -1, np.int32)
    be.conv2d_relu_pool_forward(x, wt, b, 1, 1, 0, 0, oh, ow, True, True, fws["wb"],
                                fws["cols"], fws["tile"], fpout, fam)
    # the same NaNs and argmax; the numbers to rounding (BLAS may round an output element
    # differently at another place in the product: float64 here)
    np.testing.assert_allclose(fpout, pout, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert _bits(plane_argmax(fam, oh, ow)) == _bits(am)
    phit = np.zeros(pshape, bool)
    phit[1, :, 0:2, 1:3] = True  # the pooled windows over rows 0..3, columns 2..5
    assert np.isnan(fpout[phit]).all() and not np.isnan(fpout[~phit]).any()
    assert np.isnan(out.reshape(n, f, -1)[1, 0, plane_argmax(fam, oh, ow)[1, 0, 0, 1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_relu_pool_finite_zero_windows(dtype):
    """Finite inputs: a window whose maximum is <= 0 (-0.0 included) pools to +0.0
    at its first pixel, as before."""
    n, c, h, w = 1, 1, 4, 4
    x = np.zeros((n, c, h, w), dtype)
    wt = np.ones((1, c, 1, 1), dtype)
    b = np.array([-0.0], dtype)
    x[0, 0, 0, 0] = -0.0
    x[0, 0, 2:, :2] = -1.0
    x[0, 0, 3, 3] = 2.0
    ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (1, 1), (0, 0), dtype)
    pout = np.full((n, 1, 2, 2), 7, dtype)
    am = np.full((n, 1, 2, 2), -1, np.int32)
    serial.conv2d_relu_pool_forward(x, wt, b, 1, 1, 0, 0, h, w, True, True, ws["wb"],
                                    ws["cols"], ws["tile"], pout, am)
    assert _bits(pout) == _bits(np.array([[[[0.0, 0.0], [0.0, 2.0]]]], dtype))
    assert am.ravel().tolist() == [0, 1, 2, 15]  # window-major: the 4th place of window 3
    assert plane_argmax(am, h, w).ravel().tolist() == [0, 2, 8, 15]
