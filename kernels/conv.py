"""Conv2D kernels, NCHW layout: x (N, C, H, W), w (F, C, KH, KW), b (F,).

Two forward kernels sit side by side so a reader can diff them:

1. ``conv2d_forward_direct``: the plain seven-loop nest, the teaching reference.
2. ``conv2d_forward``: im2col + one matrix product per sample (BLAS through
   ``np.dot``, pinned to one thread), the version the layers use.

Backward is split in the two gradients, each with its own parallel axis:

- ``conv2d_backward_input``: dx, parallel over samples (each thread owns dx[n]).
- ``conv2d_backward_weight``: dw and db, per-sample partial products summed in a
  fixed order, so the result does not depend on the number of threads.

Sizes: OH = (H + 2*ph - KH) // sh + 1, OW likewise; K = C*KH*KW, P = OH*OW.
Workspaces (allocated once by the layer, reused every batch): ``cols`` (N, K, P)
holds the unrolled input patches, ``dcols`` (N, K, P) their gradient,
``dw_partial`` (N, F, K) the per-sample weight gradients.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._build import helper

__all__ = [
    "conv2d_forward_direct",
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
]


# --------------------------------------------------------------------------
# 1. The plain loop nest (reference; slow: ~7 GFLOP/s on one core)
# --------------------------------------------------------------------------
def conv2d_forward_direct(x, w, b, sh, sw, ph, pw, out):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    # PARALLEL: split the (sample, output channel) pairs. Every pair writes only
    # its own output plane out[n, f], and reads x and w, which nobody writes:
    # no two threads ever touch the same output element. Splitting the channel
    # loop `c` (or kh, kw) instead would make threads add into the same
    # `acc`/out[n, f, i, j] at once: a race.
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


# --------------------------------------------------------------------------
# 2. im2col + matrix product
# --------------------------------------------------------------------------
@helper
def im2col(xn, KH, KW, sh, sw, ph, pw, cols):
    """Unroll the patches of one sample: cols[(c, ki, kj), (i, j)] = x[c, i*sh-ph+ki, j*sw-pw+kj]."""
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
                    base = i * OW
                    if hi < 0 or hi >= H:
                        for j in range(OW):
                            cols[row, base + j] = zero
                        continue
                    for j in range(OW):
                        wj = j * sw - pw + kj
                        if wj < 0 or wj >= W:
                            cols[row, base + j] = zero
                        else:
                            cols[row, base + j] = xn[c, hi, wj]


@helper
def col2im(dcols, KH, KW, sh, sw, ph, pw, dxn):
    """Scatter-add patch gradients back to one sample: the adjoint of im2col.

    dxn is overwritten. A pixel covered by several patches receives the sum of
    their gradients, added in a fixed (c, ki, kj, i, j) order.
    """
    C, H, W = dxn.shape
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    dxn[:] = 0
    for c in range(C):
        for ki in range(KH):
            for kj in range(KW):
                row = (c * KH + ki) * KW + kj
                for i in range(OH):
                    hi = i * sh - ph + ki
                    if hi < 0 or hi >= H:
                        continue
                    base = i * OW
                    for j in range(OW):
                        wj = j * sw - pw + kj
                        if wj >= 0 and wj < W:
                            dxn[c, hi, wj] += dcols[row, base + j]


def conv2d_forward(x, w, b, sh, sw, ph, pw, cols, out):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    w2 = w.reshape(F, C * KH * KW)
    # PARALLEL: one sample per iteration. Sample n reads x[n], writes only its
    # own workspace cols[n] and its own output out[n]; the weights are only read.
    # (Splitting a loop inside the matrix product would need a reduction over
    # K shared by threads; splitting samples needs none.)
    for n in prange(N):
        im2col(x[n], KH, KW, sh, sw, ph, pw, cols[n])
        on = out[n].reshape(F, OH * OW)
        np.dot(w2, cols[n], on)  # (F, K) @ (K, P): BLAS, one thread
        for f in range(F):
            on[f, :] += b[f]


def conv2d_backward_input(dout, w, sh, sw, ph, pw, dcols, dx):
    N, F, OH, OW = dout.shape
    _, C, KH, KW = w.shape
    w2t = w.reshape(F, C * KH * KW).T
    # PARALLEL: one sample per iteration. dx[n] depends only on dout[n] and the
    # weights; the scatter-add of col2im touches only dx[n], so threads never
    # add into the same pixel. (Splitting over output channels f instead would
    # make several threads add into the same dx pixels: a race.)
    for n in prange(N):
        np.dot(w2t, dout[n].reshape(F, OH * OW), dcols[n])  # (K, F) @ (F, P)
        col2im(dcols[n], KH, KW, sh, sw, ph, pw, dx[n])


def conv2d_backward_weight(dout, cols, dw_partial, dw, db):
    N, F, OH, OW = dout.shape
    K = cols.shape[1]
    P = OH * OW
    dw2 = dw.reshape(F, K)
    # PARALLEL (1): one sample per iteration, each into its own partial buffer
    # dw_partial[n]. Summing straight into dw from several samples at once
    # (`dw += ...` inside this loop) is the classic race: two threads read the
    # same dw element, both add, one write is lost.
    for n in prange(N):
        np.dot(dout[n].reshape(F, P), cols[n].T, dw_partial[n])  # (F, P) @ (P, K)
    # PARALLEL (2): one output channel per iteration; each thread owns row dw[f]
    # and db[f] and sums the samples in the fixed order n = 0, 1, ..., N-1, so
    # the result is bit-for-bit the same whatever the number of threads.
    for f in prange(F):
        for k in range(K):
            dw2[f, k] = dw_partial[0, f, k]
        for n in range(1, N):
            for k in range(K):
                dw2[f, k] += dw_partial[n, f, k]
        acc = dout.dtype.type(0)
        for n in range(N):
            for i in range(OH):
                for j in range(OW):
                    acc += dout[n, f, i, j]
        db[f] = acc
