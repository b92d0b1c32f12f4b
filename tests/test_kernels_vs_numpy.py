"""Every kernel, in both builds, against the plain NumPy reference in tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn.kernels import parallel, serial
from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes

import reference as ref
from kernel_args import conv_workspaces

BACKENDS = [serial, parallel]
DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-10, np.float32: 2e-5}

# (N, C, H, W, F, KH, KW, sh, sw, ph, pw)
CONV_CASES = [
    (1, 1, 5, 5, 1, 3, 3, 1, 1, 0, 0),  # batch 1, one channel
    (2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1),  # non-square image, "same" padding
    (3, 2, 8, 6, 5, 3, 3, 2, 2, 1, 1),  # stride 2 with padding
    (2, 3, 9, 7, 2, 5, 3, 2, 1, 2, 0),  # non-square kernel, mixed stride and padding
    (1, 4, 6, 6, 3, 1, 1, 1, 1, 0, 0),  # 1x1 kernel
    (2, 2, 11, 5, 3, 4, 2, 3, 2, 0, 1),  # even kernel, stride 3
    # the unpadded unit-stride 3-wide fast paths of im2col/col2im, and their edges:
    (2, 3, 3, 3, 2, 3, 3, 1, 1, 0, 0),  # one output pixel (OW = 1: generic path)
    (2, 2, 6, 4, 3, 3, 3, 2, 1, 0, 0),  # OW = 2, vertical stride 2
    (4, 5, 8, 15, 6, 3, 3, 1, 1, 0, 0),  # like conv2: odd width, several rows
]


def _random_conv_cases(count: int, seed: int = 1234) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kh, kw = rng.integers(1, 6, size=2)
        sh, sw = rng.integers(1, 4, size=2)
        ph, pw = rng.integers(0, 3, size=2)
        h, w = rng.integers(1, 13, size=2)
        if h + 2 * ph < kh or w + 2 * pw < kw:
            continue
        n, c, f = rng.integers(1, 4), rng.integers(1, 5), rng.integers(1, 6)
        cases.append(tuple(int(v) for v in (n, c, h, w, f, kh, kw, sh, sw, ph, pw)))
    return cases


ALL_CONV = CONV_CASES + _random_conv_cases(6)


def _conv_inputs(case, dtype, seed=0):
    n, c, h, w, f, kh, kw, sh, sw, ph, pw = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    oh, ow = ref.out_size(h, kh, sh, ph), ref.out_size(w, kw, sw, pw)
    dout = rng.standard_normal((n, f, oh, ow)).astype(dtype)
    return x, wt, b, dout


def _close(got, want, dtype):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale)


def _divisors(n: int) -> list[int]:
    return [g for g in range(1, n + 1) if n % g == 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("case", ALL_CONV, ids=str)
def test_conv2d(case, be, dtype):
    n, c, h, w, f, kh, kw, sh, sw, ph, pw = case
    x, wt, b, dout = _conv_inputs(case, dtype)
    want = ref.conv2d_forward(x, wt, b, (sh, sw), (ph, pw))
    out = np.full(want.shape, np.nan, dtype)
    be.conv2d_forward_direct(x, wt, b, sh, sw, ph, pw, out)
    _close(out, want, dtype)

    dx_want, dw_want, db_want = ref.conv2d_backward(x, wt, dout, (sh, sw), (ph, pw))
    # Every sample-group size the fast kernels may use: 1 (a product per
    # sample), N (one product for the batch) and any divisor in between.
    for group in _divisors(n):
        ws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (sh, sw), (ph, pw),
                             dtype, group)
        for relu in (False, True):
            out = np.full(want.shape, np.nan, dtype)
            be.conv2d_forward(x, wt, b, sh, sw, ph, pw, relu, ws["wb"], ws["cols"],
                              ws["gemm_out"], out)
            _close(out, np.maximum(want, 0) if relu else want, dtype)
        dx = np.full(x.shape, np.nan, dtype)
        be.conv2d_backward_input(dout, wt, sh, sw, ph, pw, ws["gemm_out"], ws["dcols"], dx)
        _close(dx, dx_want, dtype)
        dw, db = np.full(wt.shape, np.nan, dtype), np.full(b.shape, np.nan, dtype)
        be.conv2d_backward_weight(dout, ws["cols"], ws["gemm_out"], ws["partial"], dw, db)
        _close(dw, dw_want, dtype)
        _close(db, db_want, dtype)
        # the fused kernel the layer calls: the same bits as the two kernels above,
        # with one scratch slot per group, a single slot, or runs of uneven length
        for need_dx, slots in ((True, None), (False, None), (True, 1), (True, 3)):
            sws = conv_workspaces(conv2d_workspace_shapes, x.shape, wt.shape, (sh, sw),
                                  (ph, pw), dtype, group, slots)
            sws["cols"][...] = ws["cols"]  # from the forward pass above
            dx2 = np.full(x.shape, np.nan, dtype)
            dw2, db2 = np.full(wt.shape, np.nan, dtype), np.full(b.shape, np.nan, dtype)
            be.conv2d_backward(dout, wt, sws["cols"], sh, sw, ph, pw, need_dx,
                               sws["gemm_out"], sws["partial"], sws["dcols"], dw2, db2, dx2)
            assert dw2.tobytes() == dw.tobytes() and db2.tobytes() == db.tobytes()
            if need_dx:
                assert dx2.tobytes() == dx.tobytes()
            else:
                assert np.isnan(dx2).all()  # not touched


# (N, C, H, W, KH, KW, sh, sw)
POOL_CASES = [
    (1, 1, 4, 4, 2, 2, 2, 2),  # batch 1, one channel
    (2, 3, 7, 5, 2, 2, 2, 2),  # odd, non-square: last row/column dropped
    (2, 2, 9, 8, 3, 3, 2, 2),  # overlapping windows (stride < window)
    (3, 2, 6, 9, 3, 2, 3, 1),  # non-square window and stride
    (2, 3, 7, 6, 2, 2, 1, 1),  # 2x2 fast path with overlapping windows
    (1, 2, 9, 9, 2, 2, 3, 2),  # 2x2 fast path, stride > window (gaps)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool2d(case, be, dtype):
    n, c, h, w, kh, kw, sh, sw = case
    rng = np.random.default_rng(1)
    # Small integers: plenty of ties, which must go to the first maximum, and of
    # windows whose maximum is <= 0 (dropped by the fused-ReLU backward).
    x = rng.integers(-2, 3, size=(n, c, h, w)).astype(dtype)
    want, where = ref.maxpool2d_forward(x, (kh, kw), (sh, sw))
    out = np.full(want.shape, np.nan, dtype)
    argmax = np.full(want.shape, -1, np.int64)
    be.maxpool2d_forward(x, kh, kw, sh, sw, out, argmax)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(argmax, where)

    dout = rng.standard_normal(want.shape).astype(dtype)
    for relu in (False, True):
        dx = np.full(x.shape, np.nan, dtype)
        be.maxpool2d_backward(dout, argmax, out, relu, dx)
        # relu: the layer before had a fused ReLU, whose derivative is 0 where x <= 0
        want_dx = ref.maxpool2d_backward(dout, where, x.shape)
        _close(dx, ref.relu_backward(x, want_dx) if relu else want_dx, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 7, 3), (5, 13, 4), (4, 33, 10),
                                   (19, 300, 5)], ids=str)  # several blocks, last partial
def test_dense(shape, be, dtype):
    n, i, o = shape
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, i)).astype(dtype)
    w = rng.standard_normal((i, o)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    dy = rng.standard_normal((n, o)).astype(dtype)
    for relu in (False, True):
        out = np.full((n, o), np.nan, dtype)
        be.dense_forward(x, w, b, relu, out)
        want = ref.dense_forward(x, w, b)
        _close(out, np.maximum(want, 0) if relu else want, dtype)
    dx_want, dw_want, db_want = ref.dense_backward(x, w, dy)
    dx = np.full(x.shape, np.nan, dtype)
    be.dense_backward_input(dy, w, dx)
    _close(dx, dx_want, dtype)
    dw, db = np.full(w.shape, np.nan, dtype), np.full(b.shape, np.nan, dtype)
    be.dense_backward_weight(x, dy, dw, db)
    _close(dw, dw_want, dtype)
    _close(db, db_want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("size", [1, 7, 1000])
def test_relu(size, be, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(size).astype(dtype)
    x[0] = 0.0  # the gradient at exactly 0 is 0
    dout = rng.standard_normal(size).astype(dtype)
    out, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
    be.relu_forward(x, out)
    be.relu_backward(x, dout, dx)
    np.testing.assert_array_equal(out, ref.relu_forward(x))
    np.testing.assert_array_equal(dx, ref.relu_backward(x, dout))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("shape", [(1, 2), (1, 10), (7, 3), (32, 10)], ids=str)
def test_softmax_cross_entropy(shape, be, dtype):
    n, k = shape
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((n, k)) * 5).astype(dtype)
    logits[0, 0] = 80.0  # exp(80) overflows float32: needs the max shift
    labels = rng.integers(0, k, n).astype(np.int64)
    losses, dlogits = np.full(n, np.nan, dtype), np.full((n, k), np.nan, dtype)
    be.softmax_cross_entropy(logits, labels, dtype(1) / dtype(len(labels)), losses, dlogits)
    want_l, want_d = ref.softmax_cross_entropy(logits, labels)
    assert np.isfinite(losses).all()
    _close(losses, want_l, dtype)
    _close(dlogits, want_d, dtype)


@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
def test_adam_and_sgd_updates(be):
    dtype = np.float32
    rng = np.random.default_rng(5)
    p, g = rng.standard_normal(257).astype(dtype), rng.standard_normal(257).astype(dtype)
    m, v = rng.standard_normal(257).astype(dtype), rng.random(257).astype(dtype)
    t, lr, b1, b2, eps = 3, 1e-3, 0.9, 0.999, 1e-7
    want = ref.adam_update(p.astype(np.float64), g, m, v, lr, b1, b2, eps, t)
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    pa, ma, va = p.copy(), m.copy(), v.copy()
    be.adam_update(pa, g, ma, va, dtype(alpha), dtype(b1), dtype(b2), dtype(eps))
    for got, exp in zip((pa, ma, va), want):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)

    vel = rng.standard_normal(257).astype(dtype)
    want_p, want_v = ref.sgd_update(p.astype(np.float64), g, vel, 0.05, 0.9, 1e-4)
    ps, vs = p.copy(), vel.copy()
    be.sgd_update(ps, g, vs, dtype(0.05), dtype(0.9), dtype(1e-4))
    np.testing.assert_allclose(ps, want_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vs, want_v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("be", BACKENDS, ids=lambda b: b.name)
def test_optimizer_state_flushes_subnormals(be):
    """Decaying momenta must reach 0, not linger as (slow) subnormal floats."""
    f32 = np.float32
    p, g = np.ones(64, f32), np.zeros(64, f32)  # a dead unit: its gradient stays 0
    m = np.full(64, 1e-37, f32)
    v = np.full(64, 1e-37, f32)
    for _ in range(50):  # 0.9**50 * 1e-37 would be subnormal without the flush
        be.adam_update(p, g, m, v, f32(1e-3), f32(0.9), f32(0.999), f32(1e-7))
    assert not m.any() and (v == 0).sum() + (v >= np.finfo(f32).tiny).sum() == 64
    vel = np.full(64, 1e-37, f32)
    for _ in range(50):
        be.sgd_update(p, g, vel, f32(0.01), f32(0.9), f32(0))
    assert not vel.any()
    assert np.isfinite(p).all() and (p == 1).all()  # zero state moves nothing


def _float64_ops(fn, *args) -> list[str]:
    """The float64 arithmetic lines in the LLVM IR of a fresh (uncached) compile of fn(*args)."""
    import re

    import numba

    jitted = numba.njit(error_model="numpy")(getattr(fn, "py_func", fn))
    jitted(*args)
    ir = jitted.inspect_llvm(jitted.signatures[0])
    # the native function only: its Python wrapper boxes a float32 result as a double
    native = [f for f in ir.split("\ndefine ")[1:] if "@_ZN7cpython" not in f.split("\n")[0]]
    return [ln for f in native for ln in f.splitlines()
            if re.search(r"= (fadd|fsub|fmul|fdiv|fcmp \w+|fpext float) .*double", ln)]


def test_float32_optimizer_kernels_do_not_promote_to_float64():
    """float32 * int is float64 in Numba (docs/numba-facts.md): a stray ``x * 0`` in the flush
    made the whole Adam loop compute in float64, 4x slower. Check the compiled code."""
    from scratchcnn.kernels import optim

    f32 = np.float32
    p, g, m, v = (np.ones(16, f32) for _ in range(4))
    assert _float64_ops(optim.flush, f32(1e-39), f32(optim.TINY)) == []
    assert _float64_ops(optim.adam_update, p, g, m, v, f32(1e-3), f32(0.9), f32(0.999),
                        f32(1e-7)) == []
    assert _float64_ops(optim.sgd_update, p, g, m, f32(0.01), f32(0.9), f32(0)) == []
