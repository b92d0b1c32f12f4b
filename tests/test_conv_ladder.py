"""The convolution ladder (kernels/conv.py's readable rungs, docs/ladder.md).

Every rung against tests/reference.py in float64 (with padding and stride > 1
too), serial vs parallel bit for bit at 1, 2 and 3 threads, and bit for bit
against the other rungs wherever the arithmetic is the same:

* ``im2col_plain`` == conv_fast's ``im2col`` (rows 0..K-1): both only copy.
* ``col2im_plain`` == conv_fast's ``col2im``: both add each pixel's terms in
  (c, ki, kj) order (conv_fast's unrolled 3x3 path keeps that order).
* ``conv2d_backward_input_gemm``'s dx == ``col2im_plain`` applied to the same
  dcols: the rung is that product followed by the same col2im.
* ``conv2d_forward_gemm``'s cols == ``im2col_plain``'s: the same copy.

Not bit-equal, so compared with a tolerance only: the loop nests against the
GEMM rungs (a direct loop sums in (c, ki, kj) order, BLAS in its own blocked
order), and gather dx vs col2im dx (f-major vs (c, ki, kj)-major sums).
"""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn.kernels import parallel, serial
from scratchcnn.kernels.conv_fast import col2im as fast_col2im
from scratchcnn.kernels.conv_fast import im2col as fast_im2col

import reference as ref
from conftest import THREAD_COUNTS

# N, C, H, W, F, KH, KW, sh, sw, ph, pw
SHAPES = [
    (2, 3, 7, 6, 4, 3, 3, 1, 1, 0, 0),
    (3, 2, 9, 8, 5, 3, 2, 2, 1, 1, 2),
    (2, 3, 8, 9, 3, 2, 3, 3, 2, 1, 0),
]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _data(shape, dtype):
    N, C, H, W, F, KH, KW, sh, sw, ph, pw = shape
    OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((F, C, KH, KW)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    dout = rng.standard_normal((N, F, OH, OW)).astype(dtype)
    return x, w, b, dout, (OH, OW)


def _rungs(be, shape, dtype):
    """Run every rung of backend ``be``; returns a dict of named outputs."""
    N, C, H, W, F, KH, KW, sh, sw, ph, pw = shape
    x, w, b, dout, (OH, OW) = _data(shape, dtype)
    K, P = C * KH * KW, OH * OW
    r = {}
    r["fwd_direct"] = np.full((N, F, OH, OW), np.nan, dtype)
    be.conv2d_forward_direct(x, w, b, sh, sw, ph, pw, r["fwd_direct"])
    r["dx_direct"] = np.full(x.shape, np.nan, dtype)
    be.conv2d_backward_input_direct(dout, w, sh, sw, ph, pw, r["dx_direct"])
    r["dw_direct"] = np.full(w.shape, np.nan, dtype)
    r["db_direct"] = np.full(F, np.nan, dtype)
    be.conv2d_backward_weight_direct(x, dout, sh, sw, ph, pw, r["dw_direct"], r["db_direct"])
    r["im2col"] = np.full((N, K, P), np.nan, dtype)
    be.im2col_plain(x, KH, KW, sh, sw, ph, pw, r["im2col"])
    rng = np.random.default_rng(2)
    r["dcols_in"] = rng.standard_normal((N, K, P)).astype(dtype)
    r["col2im"] = np.full(x.shape, np.nan, dtype)
    be.col2im_plain(r["dcols_in"], KH, KW, sh, sw, ph, pw, r["col2im"])
    r["cols_gemm"] = np.full((N, K, P), np.nan, dtype)
    r["fwd_gemm"] = np.full((N, F, OH, OW), np.nan, dtype)
    be.conv2d_forward_gemm(x, w, b, sh, sw, ph, pw, r["cols_gemm"], r["fwd_gemm"])
    r["dcols_gemm"] = np.full((N, K, P), np.nan, dtype)
    r["dx_gemm"] = np.full(x.shape, np.nan, dtype)
    be.conv2d_backward_input_gemm(dout, w, sh, sw, ph, pw, r["dcols_gemm"], r["dx_gemm"])
    r["partial"] = np.full((N, F, K), np.nan, dtype)
    r["dw_gemm"] = np.full(w.shape, np.nan, dtype)
    r["db_gemm"] = np.full(F, np.nan, dtype)
    be.conv2d_backward_weight_gemm(dout, r["cols_gemm"], r["partial"], r["dw_gemm"],
                                   r["db_gemm"])
    return r


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rungs_match_reference(shape):
    N, C, H, W, F, KH, KW, sh, sw, ph, pw = shape
    x, w, b, dout, _ = _data(shape, np.float64)
    want = ref.conv2d_forward(x, w, b, (sh, sw), (ph, pw))
    dx, dw, db = ref.conv2d_backward(x, w, dout, (sh, sw), (ph, pw))
    for be in (serial, parallel):
        r = _rungs(be, shape, np.float64)
        tol = dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r["fwd_direct"], want, **tol)
        np.testing.assert_allclose(r["fwd_gemm"], want, **tol)
        np.testing.assert_allclose(r["dx_direct"], dx, **tol)
        np.testing.assert_allclose(r["dx_gemm"], dx, **tol)
        np.testing.assert_allclose(r["dw_direct"], dw, **tol)
        np.testing.assert_allclose(r["dw_gemm"], dw, **tol)
        np.testing.assert_allclose(r["db_direct"], db, **tol)
        np.testing.assert_allclose(r["db_gemm"], db, **tol)
        # im2col then the plain product is the convolution; col2im is its adjoint:
        # <im2col(x), D> == <x, col2im(D)>.
        cols = r["im2col"]
        np.testing.assert_allclose(
            np.einsum("fk,nkp->nfp", w.reshape(F, -1), cols) + b[None, :, None],
            want.reshape(N, F, -1), **tol)
        np.testing.assert_allclose(np.vdot(cols, r["dcols_in"]), np.vdot(x, r["col2im"]),
                                   rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rungs_bit_equal_where_same_arithmetic(shape, dtype):
    N, C, H, W, F, KH, KW, sh, sw, ph, pw = shape
    x, *_ = _data(shape, dtype)
    r = _rungs(serial, shape, dtype)
    K, P = r["im2col"].shape[1:]
    assert _same_bits(r["cols_gemm"], r["im2col"])
    dx = np.empty_like(x)
    serial.col2im_plain(r["dcols_gemm"], KH, KW, sh, sw, ph, pw, dx)
    assert _same_bits(r["dx_gemm"], dx)
    for n in range(N):
        fast = np.full((K + 1, P), np.nan, dtype)
        fast_im2col(x[n], KH, KW, sh, sw, ph, pw, fast, 0)
        assert _same_bits(np.ascontiguousarray(fast[:K]), r["im2col"][n])
        fdx = np.full(x.shape[1:], np.nan, dtype)
        fast_col2im(r["dcols_in"][n], 0, KH, KW, sh, sw, ph, pw, fdx)
        assert _same_bits(fdx, r["col2im"][n])


def test_col2im_unrolled_path_bit_equal():
    """conv_fast's col2im special-cases unpadded unit-stride 3x3 (the first SHAPES
    entry covers it above); a wider plane exercises its inner loop too."""
    rng = np.random.default_rng(3)
    C, H, W, KH, KW = 2, 9, 12, 3, 3
    K, P = C * KH * KW, (H - 2) * (W - 2)
    dcols = rng.standard_normal((1, K, P)).astype(np.float32)
    dx = np.empty((1, C, H, W), np.float32)
    serial.col2im_plain(dcols, KH, KW, 1, 1, 0, 0, dx)
    fdx = np.empty((C, H, W), np.float32)
    fast_col2im(dcols[0], 0, KH, KW, 1, 1, 0, 0, fdx)
    assert _same_bits(fdx, dx[0])


@pytest.mark.parametrize("nthreads", THREAD_COUNTS)
@pytest.mark.parametrize("shape", SHAPES[1:2], ids=str)
def test_rungs_serial_parallel_bit_equal(shape, nthreads, numba_threads):
    numba_threads(nthreads)
    s = _rungs(serial, shape, np.float32)
    p = _rungs(parallel, shape, np.float32)
    for key in s:
        assert _same_bits(s[key], p[key]), key
