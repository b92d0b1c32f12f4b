"""Would fewer multiplications pay? Winograd F(2x2, 3x3) against our convolution, both ways.

    python bench/winograd.py --out docs/results/winograd

Why ask: the BLAS products already run at ~70% of the GEMM peak and the glue
around them resists tuning (``bench/products.py``, ``bench/numba_gemm.py``),
so the one route left inside "NumPy + Numba + BLAS" is to do *less
arithmetic*. Winograd's minimal filtering algorithm F(2x2, 3x3) computes each
2x2 tile of a 3x3, stride-1 convolution's output with 16 multiplications per
(input channel, output channel) instead of 36: the input is cut into 4x4
tiles that overlap by 2, each tile and each filter is transformed (only
additions, and halves for the filter), and the convolution becomes 16
independent matrix products, one per position of the 4x4 transformed tile::

    V[k] (T, C)  = the k-th element of B^T d B for every tile (T tiles) and channel
    U[k] (C, F)  = the k-th element of G g G^T for every filter
    M[k] (T, F)  = V[k] @ U[k]                      (BLAS, 16 calls)
    out          = A^T m A for every tile and filter, + bias

This benchmark times that forward pass, one thread, at conv2 and conv3 of the
reference network (conv1, whose 16 products would sum over only 3 input
channels, is left out), next to the forward the CPU plans run now (``im2row``
+ one BLAS product per sample group, bias included, the output scattered to
NCHW planes; ``pool=False``, no ReLU, so both write the same thing). The
Winograd time includes the filter transform, which a training step must redo
after every weight update; each of its four parts is also timed alone. Both
forwards are checked against each other (float32: largest difference; float64:
relative).

The backward (weight, bias and input gradients) is the adjoint of each
forward stage in reverse order -- A y A^T for the output gradient's 2x2
tiles, 32 BLAS products (dU[k] = V[k]^T dM[k] summed over all the batch's
tiles, dV[k] = dM[k] U[k]^T), B dV B^T added back into the overlapping input
windows, G^T dU G for the filters -- reusing the forward's transformed input
tiles, as the current kernels reuse their patches; it is timed against the
current backward, which computes the three gradients in one pass.

What it does not do: the fused pool, or a parallel build. The step-level
estimate (from ``bench/products.py``'s parts) is therefore an estimate. The
bits are not those of the current kernels (the sums are reordered), so a
Winograd kernel would be a new serial/parallel pair, not a drop-in.

Writes ``winograd.json`` and ``winograd.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    best_seconds,
    gemm_peak,
    machine_summary,
    micro_bench_parser,
    parse_micro_bench,
    write_report,
)
from numba import njit  # noqa: E402

PROG = "python bench/winograd.py"

#: (name, N, C, H, F): the 3x3, stride-1, unpadded convolutions of the reference network
#: at batch 32 that Winograd F(2x2, 3x3) applies to.
LAYERS = [("conv2", 32, 32, 15, 64), ("conv3", 32, 64, 6, 64)]

@njit(cache=True, nogil=True)
def transform_filters(w, U):
    """U (16, C [+ padding], F): G g G^T of every 3x3 filter g = w[f, c]; U[4 * i + j, c, f] is
    element (i, j) of the 4x4 result. G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5],
    [0, 0, 1]]: G g combines rows (h), (G g) G^T columns, in w's dtype. Needed again
    after every weight update, i.e. once per training step, so it is timed as part of
    the forward. The innermost loop runs over the filters, contiguous in U."""
    F, C = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    for c in range(C):
        for f in range(F):
            for i in range(4):
                # row i of G g, its 3 columns
                if i == 0:
                    h0, h1, h2 = w[f, c, 0, 0], w[f, c, 0, 1], w[f, c, 0, 2]
                elif i == 3:
                    h0, h1, h2 = w[f, c, 2, 0], w[f, c, 2, 1], w[f, c, 2, 2]
                else:
                    s = w.dtype.type(1) if i == 1 else w.dtype.type(-1)
                    h0 = (w[f, c, 0, 0] + s * w[f, c, 1, 0] + w[f, c, 2, 0]) * half
                    h1 = (w[f, c, 0, 1] + s * w[f, c, 1, 1] + w[f, c, 2, 1]) * half
                    h2 = (w[f, c, 0, 2] + s * w[f, c, 1, 2] + w[f, c, 2, 2]) * half
                U[4 * i + 0, c, f] = h0
                U[4 * i + 1, c, f] = (h0 + h1 + h2) * half
                U[4 * i + 2, c, f] = (h0 - h1 + h2) * half
                U[4 * i + 3, c, f] = h2


#: B^T of F(2x2, 3x3) as (first row, second row, sign of the second) per output row:
#: row i of B^T d is d[FIRST[i]] + SIGN[i] * d[SECOND[i]]; the same pairs combine columns.
B_FIRST = np.array([0, 1, 2, 1], np.int64)
B_SECOND = np.array([2, 2, 1, 3], np.int64)
B_SIGN = np.array([-1.0, 1.0, -1.0, -1.0])


@njit(cache=True, nogil=True, inline="always")
def tile_rows(pixels, ty, tx, i, j, first, second, sign):
    """What element (i, j) of tile (ty, tx)'s B^T d B combines: the four pixel rows
    (channel vectors) p00, p01, p10, p11 and the signs si, sj, the element being
    (p00 + sj * p01) + si * (p10 + sj * p11). ``transform_input`` reads this way and
    ``input_transform_adjoint`` adds back the same way, so the two stay each other's
    adjoint. Inlined where it is called."""
    r0, r1 = 2 * ty + first[i], 2 * ty + second[i]
    c0, c1 = 2 * tx + first[j], 2 * tx + second[j]
    return (pixels[r0, c0], pixels[r0, c1], pixels[r1, c0], pixels[r1, c1], sign[i],
            sign[j])


@njit(cache=True, nogil=True)
def transform_input(x, TH, TW, first, second, sign, pixels, V):
    """V (16, N*TH*TW [+ padding], C): B^T d B of every 4x4 input tile d (rows 2*ty..,
    columns 2*tx..) of every channel. Per sample, the input is first copied into
    ``pixels`` (2*TH+2, 2*TW+2, C): its pixels as rows of C channels, zeros past the
    edge, so the tile loop has no edge tests. Each of a tile's 16 values is then one
    loop over the channels with 4 loads and 1 store, all contiguous, which the compiler
    vectorizes (one loop storing all 16 values ran ~5x slower, measured before V was
    padded). ``sign`` (+-1, in x's dtype) multiplies exactly: additions only."""
    N, C, H, W = x.shape
    TT = TH * TW
    pixels[:, :, :] = 0
    for n in range(N):
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    pixels[i, j, c] = x[n, c, i, j]
        for ty in range(TH):
            for tx in range(TW):
                t = n * TT + ty * TW + tx
                for i in range(4):
                    for j in range(4):
                        p00, p01, p10, p11, si, sj = tile_rows(pixels, ty, tx, i, j, first,
                                                               second, sign)
                        dst = V[4 * i + j, t]
                        for c in range(C):
                            dst[c] = (p00[c] + sj * p01[c]) + si * (p10[c] + sj * p11[c])


@njit(cache=True, nogil=True)
def tile_products(V, U, M):
    """M[k] = V[k] @ U[k] for the 16 positions k: 16 BLAS products (T, C) x (C, F). The
    arrays carry one padding row per k (see ``winograd_workspaces``), left out here."""
    T, C = V.shape[1] - 1, U.shape[1] - 1
    for k in range(16):
        np.dot(V[k, :T], U[k, :C], M[k, :T])


@njit(cache=True, nogil=True)
def transform_output(M, b, TH, TW, pixels, out):
    """out (N, F, OH, OW) = A^T m A + b for every tile m = M[:, t, f]. Per sample, the
    output is built in ``pixels`` (2*TH, 2*TW, F) as rows of F channels, the innermost
    loop over the channels (contiguous in M and in pixels: vectorized), then its OH x OW
    corner is copied out to the NCHW planes (an odd size's last tile row or column is
    dropped). A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: additions only."""
    N, F, OH, OW = out.shape
    TT = TH * TW
    for n in range(N):
        for ty in range(TH):
            for tx in range(TW):
                t = n * TT + ty * TW + tx
                a, q = 2 * ty, 2 * tx
                for f in range(F):
                    # A^T m: its two rows at column j are s0<j>, s1<j>
                    s00 = M[0, t, f] + M[4, t, f] + M[8, t, f]
                    s01 = M[1, t, f] + M[5, t, f] + M[9, t, f]
                    s02 = M[2, t, f] + M[6, t, f] + M[10, t, f]
                    s03 = M[3, t, f] + M[7, t, f] + M[11, t, f]
                    s10 = M[4, t, f] - M[8, t, f] - M[12, t, f]
                    s11 = M[5, t, f] - M[9, t, f] - M[13, t, f]
                    s12 = M[6, t, f] - M[10, t, f] - M[14, t, f]
                    s13 = M[7, t, f] - M[11, t, f] - M[15, t, f]
                    bias = b[f]
                    pixels[a, q, f] = s00 + s01 + s02 + bias
                    pixels[a, q + 1, f] = s01 - s02 - s03 + bias
                    pixels[a + 1, q, f] = s10 + s11 + s12 + bias
                    pixels[a + 1, q + 1, f] = s11 - s12 - s13 + bias
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    out[n, f, i, j] = pixels[i, j, f]


# -- backward: the adjoint of each forward stage, in reverse order ----------------------
@njit(cache=True, nogil=True)
def output_transform_adjoint(dy, TH, TW, pixels, dM, db):
    """dM (16, N*TH*TW [+ padding], F) = A y A^T for every 2x2 tile y of the output gradient
    dy (N, F, OH, OW) (zeros past its edge), the adjoint of ``transform_output``; and
    db = the sum of dy per filter. Per sample, dy is first copied into ``pixels``
    (2*TH, 2*TW, F) as rows of F channels; the innermost loops run over the channels.
    A = [[1, 0], [1, 1], [1, -1], [0, -1]]: additions only."""
    N, F, OH, OW = dy.shape
    TT = TH * TW
    pixels[:, :, :] = 0
    db[:] = 0
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                for f in range(F):
                    pixels[i, j, f] = dy[n, f, i, j]
                    db[f] += dy[n, f, i, j]
        for ty in range(TH):
            for tx in range(TW):
                t = n * TT + ty * TW + tx
                a, q = 2 * ty, 2 * tx
                y00, y01 = pixels[a, q], pixels[a, q + 1]
                y10, y11 = pixels[a + 1, q], pixels[a + 1, q + 1]
                for f in range(F):
                    # A y: rows r<i> (2 columns each)
                    r00, r01 = y00[f], y01[f]
                    r10, r11 = y00[f] + y10[f], y01[f] + y11[f]
                    r20, r21 = y00[f] - y10[f], y01[f] - y11[f]
                    r30, r31 = -y10[f], -y11[f]
                    dM[0, t, f], dM[1, t, f] = r00, r00 + r01
                    dM[2, t, f], dM[3, t, f] = r00 - r01, -r01
                    dM[4, t, f], dM[5, t, f] = r10, r10 + r11
                    dM[6, t, f], dM[7, t, f] = r10 - r11, -r11
                    dM[8, t, f], dM[9, t, f] = r20, r20 + r21
                    dM[10, t, f], dM[11, t, f] = r20 - r21, -r21
                    dM[12, t, f], dM[13, t, f] = r30, r30 + r31
                    dM[14, t, f], dM[15, t, f] = r30 - r31, -r31


@njit(cache=True, nogil=True)
def backward_products(V, dM, U, dU, dV):
    """The adjoint of ``tile_products``, 32 BLAS products: dU[k] = V[k]^T @ dM[k]
    (C, T) x (T, F), summed over all the batch's tiles; dV[k] = dM[k] @ U[k]^T
    (T, F) x (F, C)."""
    T, C = V.shape[1] - 1, U.shape[1] - 1
    for k in range(16):
        np.dot(V[k, :T].T, dM[k, :T], dU[k, :C])
        np.dot(dM[k, :T], U[k, :C].T, dV[k, :T])


@njit(cache=True, nogil=True)
def input_transform_adjoint(dV, TH, TW, first, second, sign, pixels, dx):
    """dx (N, C, H, W): the adjoint of ``transform_input``, B dV B^T of every tile added
    into its 4x4 window of the input (windows overlap by 2, so each pixel sums up to 4
    tiles, always in the same order). Per sample the sums are built in ``pixels``
    (2*TH+2, 2*TW+2, C), innermost loop over the channels, then copied out."""
    N, C, H, W = dx.shape
    TT = TH * TW
    for n in range(N):
        pixels[:, :, :] = 0
        for ty in range(TH):
            for tx in range(TW):
                t = n * TT + ty * TW + tx
                for i in range(4):
                    for j in range(4):
                        p00, p01, p10, p11, si, sj = tile_rows(pixels, ty, tx, i, j, first,
                                                               second, sign)
                        src = dV[4 * i + j, t]
                        for c in range(C):
                            g = src[c]
                            p00[c] += g
                            p01[c] += sj * g
                            p10[c] += si * g
                            p11[c] += (si * sj) * g
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    dx[n, c, i, j] = pixels[i, j, c]


@njit(cache=True, nogil=True)
def filter_transform_adjoint(dU, dw):
    """dw (F, C, 3, 3) = G^T dU G for every filter, the adjoint of ``transform_filters``
    (dU (16, C [+ padding], F) as U is laid out)."""
    F, C = dw.shape[0], dw.shape[1]
    half = dw.dtype.type(0.5)
    dh = np.empty((4, 3), dw.dtype)
    for c in range(C):
        for f in range(F):
            for i in range(4):  # dh = dU G: row i
                u0, u1 = dU[4 * i, c, f], dU[4 * i + 1, c, f]
                u2, u3 = dU[4 * i + 2, c, f], dU[4 * i + 3, c, f]
                dh[i, 0] = u0 + (u1 + u2) * half
                dh[i, 1] = (u1 - u2) * half
                dh[i, 2] = (u1 + u2) * half + u3
            for j in range(3):  # G^T dh: column j
                dw[f, c, 0, j] = dh[0, j] + (dh[1, j] + dh[2, j]) * half
                dw[f, c, 1, j] = (dh[1, j] - dh[2, j]) * half
                dw[f, c, 2, j] = (dh[1, j] + dh[2, j]) * half + dh[3, j]


def winograd_workspaces(x_shape: tuple, F: int, dtype) -> dict:
    """The arrays one Winograd forward and backward need: U, V, M (forward), dM, dU, dV
    (backward), the two per-sample pixel buffers, and the tile counts TH, TW.

    U, V, M (and dU, dV, dM) each get one padding row per position k, (16, C + 1, F),
    (16, T + 1, C), (16, T + 1, F). Unpadded, two positions' rows were a multiple of
    4 KiB apart (conv2's V: T * C * 4 bytes = 49 pages), so a filter's or a tile's 16
    values all fell in one set of the L1 cache, which holds fewer lines than that, and
    evicted each other: the filter transform ran ~10x slower."""
    N, C, H, W = x_shape
    OH, OW = H - 2, W - 2
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    T = N * TH * TW
    return {"TH": TH, "TW": TW, "U": np.zeros((16, C + 1, F), dtype),
            "V": np.zeros((16, T + 1, C), dtype), "M": np.zeros((16, T + 1, F), dtype),
            "dM": np.zeros((16, T + 1, F), dtype), "dU": np.zeros((16, C + 1, F), dtype),
            "dV": np.zeros((16, T + 1, C), dtype),
            "in_pixels": np.empty((2 * TH + 2, 2 * TW + 2, C), dtype),
            "out_pixels": np.empty((2 * TH, 2 * TW, F), dtype)}


def conv2d_winograd(x, w, b, ws, out) -> None:
    """out = conv(x, w) + b (3x3, stride 1, no padding) by F(2x2, 3x3), filters
    transformed too (as a training step must, its weights having changed); ws from
    ``winograd_workspaces``."""
    transform_filters(w, ws["U"])
    transform_input(x, ws["TH"], ws["TW"], B_FIRST, B_SECOND, B_SIGN.astype(x.dtype),
                    ws["in_pixels"], ws["V"])
    tile_products(ws["V"], ws["U"], ws["M"])
    transform_output(ws["M"], b, ws["TH"], ws["TW"], ws["out_pixels"], out)


def conv2d_winograd_backward(dy, w, ws, dw, db, dx) -> None:
    """dw, db, dx of ``conv2d_winograd`` from d(loss)/d(out) ``dy``; reads the V and U
    that the last forward left in ``ws`` (as the current kernels keep their patches)."""
    TH, TW = ws["TH"], ws["TW"]
    output_transform_adjoint(dy, TH, TW, ws["out_pixels"], ws["dM"], db)
    backward_products(ws["V"], ws["dM"], ws["U"], ws["dU"], ws["dV"])
    input_transform_adjoint(ws["dV"], TH, TW, B_FIRST, B_SECOND, B_SIGN.astype(dy.dtype),
                            ws["in_pixels"], dx)
    filter_transform_adjoint(ws["dU"], dw)


def _layer(N: int, C: int, H: int, F: int, dtype, rng):
    """Random input, weights and bias of one layer, the current plan, both outputs."""
    from scratchcnn.kernels import serial

    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    plan = serial.conv2d_plan(x.shape, w.shape, (1, 1), (0, 0), dtype)
    ws = winograd_workspaces(x.shape, F, dtype)
    return x, w, b, plan, ws, np.empty(plan.out_shape, dtype), np.empty(plan.out_shape, dtype)


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - ref).max() / np.abs(ref).max())


def check(N: int, C: int, H: int, F: int, dtype, seed: int = 0) -> dict:
    """The largest differences between the Winograd forward and backward and the plan's,
    each relative to the largest magnitude of its reference: ``forward`` (the output),
    ``dw``, ``db``, ``dx``."""
    rng = np.random.default_rng(seed)
    x, w, b, plan, ws, ref, out = _layer(N, C, H, F, dtype, rng)
    dy = rng.standard_normal(plan.out_shape).astype(dtype)
    grads = [(np.empty_like(w), np.empty_like(b), np.empty_like(x)) for _ in range(2)]
    plan.forward(x, w, b, ref)
    plan.backward(dy, w, *grads[0])
    conv2d_winograd(x, w, b, ws, out)
    conv2d_winograd_backward(dy, w, ws, *grads[1])
    return {"forward": _rel(out, ref),
            **{k: _rel(ours, theirs) for k, ours, theirs in zip(("dw", "db", "dx"), *grads)}}


def measure(repeats: int, layers=LAYERS) -> list[dict]:
    """One row per layer: milliseconds (best of ``repeats``) of the plan's forward and
    backward (both gradients) and of the Winograd forward and backward and their parts,
    the products' and the forward's multiply-add counts, and the relative differences
    (``check``) in float32 and float64."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for name, N, C, H, F in layers:
            x, w, b, plan, ws, ref, out = _layer(N, C, H, F, np.float32, rng)
            dy = rng.standard_normal(plan.out_shape).astype(np.float32)
            dw, db, dx = np.empty_like(w), np.empty_like(b), np.empty_like(x)
            U = ws["U"]
            transform_filters(w, U)
            OH = H - 2
            T = ws["V"].shape[1] - 1
            TH, TW = ws["TH"], ws["TW"]
            sign = B_SIGN.astype(x.dtype)
            ms = {
                "im2row + BLAS (now)": best_seconds(partial(plan.forward, x, w, b, ref), repeats),
                "winograd": best_seconds(partial(conv2d_winograd, x, w, b, ws, out), repeats),
                "input transform": best_seconds(partial(
                    transform_input, x, TH, TW, B_FIRST, B_SECOND, sign, ws["in_pixels"],
                    ws["V"]), repeats),
                "16 products": best_seconds(partial(tile_products, ws["V"], U, ws["M"]),
                                            repeats),
                "output transform": best_seconds(partial(
                    transform_output, ws["M"], b, TH, TW, ws["out_pixels"], out), repeats),
                "filter transform": best_seconds(partial(transform_filters, w, U), repeats),
            }
            ms_back = {  # both backwards read what the timed forwards left (patches, V, U)
                "now (both gradients)": best_seconds(partial(plan.backward, dy, w, dw, db, dx),
                                                     repeats),
                "winograd": best_seconds(partial(conv2d_winograd_backward, dy, w, ws, dw, db,
                                                 dx), repeats),
                "output adjoint": best_seconds(partial(
                    output_transform_adjoint, dy, TH, TW, ws["out_pixels"], ws["dM"], db),
                    repeats),
                "32 products": best_seconds(partial(backward_products, ws["V"], ws["dM"], U,
                                                    ws["dU"], ws["dV"]), repeats),
                "input adjoint": best_seconds(partial(
                    input_transform_adjoint, ws["dV"], TH, TW, B_FIRST, B_SECOND, sign,
                    ws["in_pixels"], dx), repeats),
                "filter adjoint": best_seconds(partial(filter_transform_adjoint, ws["dU"], dw),
                                               repeats),
            }
            rows.append({
                "layer": name, "N": N, "C": C, "H": H, "F": F, "OH": OH, "tiles": T,
                "ms": {k: v * 1e3 for k, v in ms.items()},
                "ms_backward": {k: v * 1e3 for k, v in ms_back.items()},
                "flops_direct": 2 * N * F * C * 9 * OH * OH,
                "flops_winograd_products": 2 * 16 * T * C * F,
                "ratio": ms["winograd"] / ms["im2row + BLAS (now)"],
                "backward_ratio": ms_back["winograd"] / ms_back["now (both gradients)"],
                "max_rel_diff_float32": check(N, C, H, F, np.float32),
                "max_rel_diff_float64": check(N, C, H, F, np.float64),
            })
    return rows


def summarize(rows: list[dict]) -> dict:
    """The figures the README quotes, per layer: the Winograd/now time ratio of the forward
    and of the backward, the forward products' share of the direct multiply-adds and
    their GFLOP/s, the three forward transforms' ms (each timed alone) and the whole
    Winograd forward's; and whether Winograd was faster at every layer, both ways."""
    out = {}
    for r in rows:
        out[r["layer"]] = {
            "ratio": r["ratio"],
            "multiplication_ratio": r["flops_winograd_products"] / r["flops_direct"],
            "products_gflops": r["flops_winograd_products"] / (r["ms"]["16 products"] * 1e-3)
            / 1e9,
            "transforms_ms": sum(r["ms"][f"{part} transform"]
                                 for part in ("input", "output", "filter")),
            "winograd_ms": r["ms"]["winograd"],
            "backward_ratio": r["backward_ratio"],
            "products_ratio": r["ms"]["16 products"] / r["ms"]["im2row + BLAS (now)"],
            "backward_products_ratio": r["ms_backward"]["32 products"]
            / r["ms_backward"]["now (both gradients)"],
        }
    out["winograd_faster_everywhere"] = all(r["ratio"] < 1 and r["backward_ratio"] < 1
                                            for r in rows)
    return out


def step_estimate(products: dict, summary: dict) -> list[dict]:
    """What a whole training step would reach if every conv2 and conv3 part of it shrank by
    the Winograd ratio measured here (forward parts by the forward's, backward parts by the
    backward's; their glue, such as the fused pool, included), and -- the *bound* -- if
    they shrank to the Winograd products alone, every transform free: per configuration
    of ``bench/products.py``'s JSON (``products``), the step's ms and % of the GEMM peak
    now, so estimated, and so bounded. Estimates: ratios from one thread, applied to every
    configuration, the pool fusion left as it is."""
    out = []
    for conf in products["configurations"]:
        step, total = conf["step_ms"], conf["totals"]
        saved = saved_bound = 0.0
        for part, ms in step.items():
            layer, _, kind = part.partition(" ")
            if layer in summary:
                back = "" if kind == "forward" else "backward_"
                saved += ms * (1 - summary[layer][back + "ratio"])
                saved_bound += ms * (1 - summary[layer][back + "products_ratio"])
        now, pct = total["step_ms"], 100 * total["step_peak_fraction"]
        out.append({"name": conf["name"], "threads": conf["threads"], "step_ms": now,
                    "step_ms_estimate": now - saved, "step_ms_bound": now - saved_bound,
                    "step_peak_percent": pct,
                    "step_peak_percent_estimate": pct * now / (now - saved),
                    "step_peak_percent_bound": pct * now / (now - saved_bound)})
    return out


def report(rows: list[dict], peak: dict, command: str, machine: dict,
           estimate: list[dict] | None = None, products_path: str = "") -> str:
    """The Markdown report: per layer, the forward's and the backward's timings and their
    ratios to the current kernels; with ``estimate`` (``step_estimate``), the step-level
    estimate."""
    one = peak["one_thread_gflops"]
    sm = summarize(rows)
    kinds = list(rows[0]["ms"])
    back = list(rows[0]["ms_backward"])

    def diffs(r: dict, keys) -> str:
        return "; ".join(f"{k} {r['max_rel_diff_float32'][k]:.1e}, "
                         f"{r['max_rel_diff_float64'][k]:.1e}" for k in keys)

    def layer(r: dict) -> str:
        return f"{r['layer']} ({r['C']}→{r['F']}, {r['H']}² → {r['OH']}²)"

    lines = [
        "### Winograd F(2x2, 3x3) vs the current im2row + BLAS convolution",
        "",
        f"`{command}`",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} cores, Numba "
        f"{machine.get('numba', '?')}, NumPy {machine.get('numpy', '?')}; float32 GEMM peak "
        f"(NumPy's BLAS, {peak['size']}², one thread): {one:.0f} GFLOP/s. Batch 32, one "
        "thread, float32; best of the repeats, in ms. \"winograd\" is the whole pass, "
        "filter transform included (a training step changes the weights, so it transforms "
        "them every step); its parts are also timed alone. Differences are relative to the "
        "largest magnitude of the current kernel's result, float32 then float64.",
        "",
        "Forward:",
        "",
        "| layer | " + " | ".join(kinds) + " | winograd / now | products' multiplications "
        "| products GFLOP/s | largest difference |",
        "|---|" + "---:|" * (len(kinds) + 3) + "---|",
    ]
    for r in rows:
        s = sm[r["layer"]]
        lines.append(
            f"| {layer(r)} | " + " | ".join(f"{r['ms'][k]:.3f}" for k in kinds)
            + f" | {r['ratio']:.2f} | {s['multiplication_ratio']:.2f}× | "
            f"{s['products_gflops']:.0f} | {diffs(r, ['forward'])} |")
    lines += [
        "",
        "Backward (weight, bias and input gradients; the current kernel computes them in one "
        "pass, Winograd as the adjoint of each forward stage, reusing the forward's "
        "transformed tiles):",
        "",
        "| layer | " + " | ".join(back) + " | winograd / now | largest difference |",
        "|---|" + "---:|" * (len(back) + 1) + "---|",
    ]
    for r in rows:
        lines.append(
            f"| {layer(r)} | " + " | ".join(f"{r['ms_backward'][k]:.3f}" for k in back)
            + f" | {r['backward_ratio']:.2f} | {diffs(r, ['dw', 'db', 'dx'])} |")
    verdict = ("Winograd is faster at every layer, forward and backward."
               if sm["winograd_faster_everywhere"]
               else "Winograd is not faster at every layer, forward and backward.")
    lines += ["", verdict, ""]
    if estimate:
        lines += [
            f"If every conv2 and conv3 part of a training step shrank by these ratios (forward "
            f"parts by the forward's, backward parts by the backward's; their glue, such as "
            f"the fused pool, included), the steps of `{products_path}` would become "
            f"\"estimated\"; if they shrank to the Winograd products alone, every transform "
            f"free, \"bound\" (estimates, from one thread):",
            "",
            "| configuration | step ms now | estimated | bound | % of the GEMM peak now "
            "| estimated | bound |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {e['name']} | {e['step_ms']:.2f} | {e['step_ms_estimate']:.2f} | "
                  f"{e['step_ms_bound']:.2f} | {e['step_peak_percent']:.0f}% | "
                  f"{e['step_peak_percent_estimate']:.0f}% | {e['step_peak_percent_bound']:.0f}% |"
                  for e in estimate]
        lines.append("")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = micro_bench_parser(PROG, __doc__, "winograd", "calls per timing; the best counts")
    p.add_argument("--products", type=Path, default=Path("docs/results/products/products.json"),
                   help="bench/products.py's JSON, for the step-level estimate (skipped if absent)")
    return parse_micro_bench(p, argv)


def main(argv: list[str] | None = None) -> None:
    a = _parse(argv)
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    peak = gemm_peak(a.gemm_size)
    rows = measure(a.repeats)
    summary = summarize(rows)
    estimate = None
    if a.products.is_file():
        import json
        estimate = step_estimate(json.loads(a.products.read_text()), summary)
    machine = machine_summary()
    md = report(rows, peak, command, machine, estimate, str(a.products))
    write_report(a.out, "winograd", {"command": command, "machine": machine,
                                     "gemm_peak": peak, "summary": summary, "rows": rows,
                                     "products": str(a.products), "step_estimate": estimate},
                 md)


if __name__ == "__main__":
    main()
