"""Conv2D kernels, readable versions (NCHW): x (N, C, H, W), w (F, C, KH, KW), b (F,).

The first rungs of the guide's convolution ladder (docs/ladder.md), each a
small kernel that changes one thing against the rung before it. They are the
reference every faster kernel (``conv_fast.py``, ``convpool.py``) is checked
against; the layers never call them.

1. Plain loop nests: ``conv2d_forward_direct``, ``conv2d_backward_input_direct``
   (dx by gather), ``conv2d_backward_weight_direct`` (dw, db by own-output loops).
2. Plain unrolling of patches: ``im2col_plain`` and its adjoint ``col2im_plain``.
3. im2col + matrix product, one sample per iteration: ``conv2d_forward_gemm``,
   ``conv2d_backward_input_gemm``, ``conv2d_backward_weight_gemm``.

Sizes: OH = (H + 2*ph - KH) // sh + 1, OW likewise; K = C*KH*KW, P = OH*OW.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._build import helper

__all__ = [
    "conv2d_forward_direct",
    "conv2d_backward_input_direct",
    "conv2d_backward_weight_direct",
    "im2col_plain",
    "col2im_plain",
    "conv2d_forward_gemm",
    "conv2d_backward_input_gemm",
    "conv2d_backward_weight_gemm",
]


# --------------------------------------------------------------------------
# 1. The plain loop nests (reference; slow)
# --------------------------------------------------------------------------
def conv2d_forward_direct(x, w, b, sh, sw, ph, pw, out):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    # PARALLEL: split the (sample, output channel) pairs. Every pair writes only
    # its own output plane out[n, f], and reads x and w, which nobody writes:
    # no two threads ever touch the same output element. Splitting the channel
    # loop `c` instead would make all its iterations add into the same `acc`:
    # Numba turns that `acc += ...` into a reduction (private partial sums
    # combined at the end), so the sum is right but its order, and so its bits,
    # change with the thread count (docs/examples/split_channel_loop.py).
    for nf in prange(N * F):
        n = nf // F
        f = nf % F
        for i in range(OH):
            for j in range(OW):
                acc = b[f]
                for c in range(C):
                    for ki in range(KH):
                        hi = i * sh - ph + ki
                        if hi < 0 or hi >= H:
                            continue
                        for kj in range(KW):
                            wj = j * sw - pw + kj
                            if wj < 0 or wj >= W:
                                continue
                            acc += x[n, c, hi, wj] * w[f, c, ki, kj]
                out[n, f, i, j] = acc


def conv2d_backward_input_direct(dout, w, sh, sw, ph, pw, dx):
    """dx by *gather* (vs the forward: loops over inputs, not outputs): each dx
    element sums, in (f, ki, kj) order, the outputs whose windows read it."""
    N, C, H, W = dx.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    zero = dx.dtype.type(0)
    # PARALLEL: split the (sample, input channel) pairs. Pair (n, c) writes only
    # dx[n, c] and reads dout and w, which nobody writes: race-free. A *scatter*
    # instead (loop over outputs, add into the inputs each one read) split over
    # output pixels or channels f would make threads add into the same dx
    # element at once: a race (lost updates).
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for h in range(H):
            for wi in range(W):
                acc = zero
                for f in range(F):
                    for ki in range(KH):
                        t = h + ph - ki  # = i * sh for the output row i that reads h
                        if t < 0 or t % sh != 0 or t // sh >= OH:
                            continue
                        i = t // sh
                        for kj in range(KW):
                            u = wi + pw - kj
                            if u < 0 or u % sw != 0 or u // sw >= OW:
                                continue
                            acc += dout[n, f, i, u // sw] * w[f, c, ki, kj]
                dx[n, c, h, wi] = acc


def conv2d_backward_weight_direct(x, dout, sh, sw, ph, pw, dw, db):
    """dw and db by *own-output* loops (vs dx: the sum runs over samples and
    pixels): each dw[f, c, ki, kj] and db[f] is summed by one iteration, in
    (n, i, j) order."""
    N, C, H, W = x.shape
    F, _, KH, KW = dw.shape
    _, _, OH, OW = dout.shape
    zero = dw.dtype.type(0)
    # PARALLEL: split the output channels f. Iteration f writes only dw[f] and
    # db[f]. Splitting the samples n instead would make every thread add into
    # the same dw[f, c, ki, kj]: a race without per-thread partial sums (and
    # with them, a sum whose order follows the thread count).
    for f in prange(F):
        for c in range(C):
            for ki in range(KH):
                for kj in range(KW):
                    acc = zero
                    for n in range(N):
                        for i in range(OH):
                            hi = i * sh - ph + ki
                            if hi < 0 or hi >= H:
                                continue
                            for j in range(OW):
                                wj = j * sw - pw + kj
                                if wj < 0 or wj >= W:
                                    continue
                                acc += x[n, c, hi, wj] * dout[n, f, i, j]
                    dw[f, c, ki, kj] = acc
        acc = zero
        for n in range(N):
            for i in range(OH):
                for j in range(OW):
                    acc += dout[n, f, i, j]
        db[f] = acc


# --------------------------------------------------------------------------
# 2. Plain im2col / col2im: the patches unrolled into a matrix, and back
# --------------------------------------------------------------------------
@helper
def im2col_sample(xn, KH, KW, sh, sw, ph, pw, cols):
    """cols (K, P) of one sample: cols[(c, ki, kj), (i, j)] = xn[c, i*sh-ph+ki,
    j*sw-pw+kj], 0 in the padding. One loop nest, no special cases."""
    C, H, W = xn.shape
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    zero = xn.dtype.type(0)
    for c in range(C):
        for ki in range(KH):
            for kj in range(KW):
                row = (c * KH + ki) * KW + kj
                for i in range(OH):
                    hi = i * sh - ph + ki
                    for j in range(OW):
                        wj = j * sw - pw + kj
                        if hi < 0 or hi >= H or wj < 0 or wj >= W:
                            cols[row, i * OW + j] = zero
                        else:
                            cols[row, i * OW + j] = xn[c, hi, wj]


@helper
def col2im_sample(dcols, KH, KW, sh, sw, ph, pw, dxn):
    """The adjoint of ``im2col_sample``: dxn (overwritten) gets each column's
    entries added back where they were read, in (c, ki, kj, i, j) order."""
    C, H, W = dxn.shape
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    zero = dxn.dtype.type(0)
    for c in range(C):  # a loop, not `dxn[:] = 0`: no array expression anywhere
        for h in range(H):
            for wi in range(W):
                dxn[c, h, wi] = zero
    for c in range(C):
        for ki in range(KH):
            for kj in range(KW):
                row = (c * KH + ki) * KW + kj
                for i in range(OH):
                    hi = i * sh - ph + ki
                    if hi < 0 or hi >= H:
                        continue
                    for j in range(OW):
                        wj = j * sw - pw + kj
                        if wj < 0 or wj >= W:
                            continue
                        dxn[c, hi, wj] += dcols[row, i * OW + j]


def im2col_plain(x, KH, KW, sh, sw, ph, pw, cols):
    """cols (N, K, P): every sample's patches as columns (memory-bound: copies only)."""
    N = x.shape[0]
    # PARALLEL: one sample per iteration; sample n writes only cols[n]. Every
    # element of cols is written exactly once, so any split would be race-free;
    # whole samples keep each thread's writes contiguous.
    for n in prange(N):
        im2col_sample(x[n], KH, KW, sh, sw, ph, pw, cols[n])


def col2im_plain(dcols, KH, KW, sh, sw, ph, pw, dx):
    """dx (N, C, H, W) from dcols (N, K, P): the adjoint of ``im2col_plain``."""
    N = dx.shape[0]
    # PARALLEL: one sample per iteration; sample n writes only dx[n]. Splitting
    # the rows of dcols (c, ki, kj) instead would race: rows of neighbouring
    # kernel offsets add into the same dx pixels.
    for n in prange(N):
        col2im_sample(dcols[n], KH, KW, sh, sw, ph, pw, dx[n])


# --------------------------------------------------------------------------
# 3. im2col + matrix product, one sample per iteration
# --------------------------------------------------------------------------
def conv2d_forward_gemm(x, w, b, sh, sw, ph, pw, cols, out):
    """vs the loop nest: patches unrolled (``im2col_sample``), then one BLAS
    product (F, K) @ (K, P) per sample, then the bias. cols (N, K, P) is the
    workspace (kept for the weight gradient)."""
    N = x.shape[0]
    F, C, KH, KW = w.shape
    _, _, OH, OW = out.shape
    K, P = C * KH * KW, OH * OW
    w2 = w.reshape(F, K)
    # PARALLEL: one sample per iteration; sample n writes only cols[n] and
    # out[n]. Splitting inside the product instead (its K sum) would need
    # partial sums per thread, and a thread-count-dependent summation order.
    for n in prange(N):
        im2col_sample(x[n], KH, KW, sh, sw, ph, pw, cols[n])
        on = out[n].reshape(F, P)
        np.dot(w2, cols[n], on)
        for f in range(F):
            bf = b[f]
            for p in range(P):
                on[f, p] += bf


def conv2d_backward_input_gemm(dout, w, sh, sw, ph, pw, dcols, dx):
    """vs the gather loop nest: dcols[n] = w^T (K, F) @ dout[n] (F, P), one BLAS
    product per sample, then ``col2im_sample`` adds the columns back into dx.
    dcols (N, K, P) is the workspace."""
    N = dout.shape[0]
    F, C, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    K, P = C * KH * KW, OH * OW
    wt = w.reshape(F, K).T
    # PARALLEL: one sample per iteration; sample n writes only dcols[n] and
    # dx[n]. (col2im's scatter-add stays inside one sample: a split over
    # output pixels would race on the dx pixels their patches share.)
    for n in prange(N):
        np.dot(wt, dout[n].reshape(F, P), dcols[n])
        col2im_sample(dcols[n], KH, KW, sh, sw, ph, pw, dx[n])


def conv2d_backward_weight_gemm(dout, cols, partial, dw, db):
    """vs the own-output loop nest: one BLAS product partial[n] = dout[n] (F, P)
    @ cols[n]^T (P, K) per sample (cols from ``conv2d_forward_gemm``), then
    the partials summed over n in a fixed order 0, 1, ..., N-1, with db."""
    N, F, OH, OW = dout.shape
    K = partial.shape[2]
    P = OH * OW
    dw2 = dw.reshape(F, K)
    zero = dw.dtype.type(0)
    # PARALLEL: one sample per iteration; sample n writes only partial[n].
    # Adding straight into dw instead would be a race on every dw element.
    for n in prange(N):
        np.dot(dout[n].reshape(F, P), cols[n].T, partial[n])
    # PARALLEL: one output channel per iteration; f writes only dw[f] and db[f],
    # and sums the samples in the order 0..N-1 whatever the thread count.
    # Splitting n here instead would be a race (or a reduction whose order
    # follows the thread count).
    for f in prange(F):
        for k in range(K):
            acc = zero
            for n in range(N):
                acc += partial[n, f, k]
            dw2[f, k] = acc
        acc = zero
        for n in range(N):
            for i in range(OH):
                for j in range(OW):
                    acc += dout[n, f, i, j]
        db[f] = acc
