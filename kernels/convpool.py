"""Conv2D + ReLU + 2x2 max-pool in one kernel, forward and backward (NCHW).

The reference network follows each of its first two convolutions (with a
fused ReLU) by a 2x2, stride-2 max-pool. Run as two kernels, the convolution
writes its whole output (conv1: 3.7 MB a step at batch 32) and the pool reads it
back; backward, the pool writes a gradient of that size (3/4 of it zeros) and
the convolution reads it back. These kernels do the pooling on each group's
product while it is still in cache, in a per-thread ``tile``, and never write
the convolution's output:

- ``conv2d_relu_pool_forward``: per group, the product of ``conv2d_forward``
  into the tile, then ReLU + max-pool from the tile. Writes the pooled output
  and its argmax: the same bits as ``conv2d_forward`` (relu=True) followed by
  ``maxpool2d_forward`` (2x2, stride 2). With G > 1 the tile holds pixel rows
  (a pixel's channels side by side), and the pool's innermost loop runs over
  the channels (``relu_pool_pixel_rows``, which the compiler vectorizes); a
  tile holding a NaN or an infinity is pooled plane by plane (``window2x2``,
  whose NaN rules the layer documents). With G = 1 (conv1) the tile holds the
  sample's planes, pooled plane by plane, after one vectorized all-finite check
  of the whole tile instead of one check per plane.
- ``conv2d_relu_pool_backward``: per group, the pooled gradient is unpooled
  into the tile (the ReLU mask included), then the two products of
  ``conv2d_backward``: the same bits as ``maxpool2d_backward`` (relu=True)
  followed by ``conv2d_backward``.

``pool=False``: the pair is then a plain convolution (ReLU optional forward;
backward takes the gradient of the convolution's output), the same bits as
``conv2d_forward`` / ``conv2d_backward``. The CPU plans run *every* convolution
through this pair -- conv3, which no pool follows, included --, so a cold start
compiles two convolution kernels instead of four (each is one of the largest
compiles; ``bench/startup.py``). The flags are run-time arguments, not literals:
one compiled kernel serves both uses.

Workspaces: those of the conv kernels (``conv2d_workspace_shapes``), with
``tile`` (S, F*G*P). The groups are split into S runs of consecutive groups,
one slot each (as in ``conv2d_backward``), so the serial build reuses one tile.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._build import helper
from .conv_fast import (
    backward_group,
    conv_group_product,
    fill_wb,
    gather_dout,
    relu_in_place,
    rows_to_planes,
    sum_group_partials,
)
from .pool import window2x2

__all__ = ["conv2d_relu_pool_forward", "conv2d_relu_pool_backward"]


@helper
def all_finite(a):
    """Whether no element of the 2-D array ``a`` is a NaN or an infinity (x - x is NaN
    exactly for those). A boolean "or" over the elements, which the compiler may
    vectorize (a float sum in a fixed order it may not)."""
    zero = a.dtype.type(0)
    bad = False
    for r in range(a.shape[0]):
        row = a[r]
        for c in range(a.shape[1]):
            bad |= row[c] - row[c] != zero
    return not bad


@helper
def relu_pool_pixel_rows(rows, OH, OW, po, ao):
    """2x2, stride-2 max-pool of relu(one sample's conv output), finite values only.

    rows (OH*OW, F): the sample's output pixels as rows, its F channels side by side;
    po, ao (F, OH//2, OW//2): the pooled planes and their argmax. The same comparisons,
    in the same order, as ``window2x2`` (relu=True) makes for each plane -- row-major
    window order, a later pixel wins only if strictly greater, a window whose maximum
    is <= 0 pools to 0 at its first pixel -- so the same bits; but the innermost loop
    runs over the channels, contiguous in a pixel row, so the compiler vectorizes it
    (``window2x2`` walks one plane, reading every other pixel of short rows)."""
    F = rows.shape[1]
    PH, PW = po.shape[1], po.shape[2]
    zero = rows.dtype.type(0)
    for i in range(PH):
        for j in range(PW):
            p00 = 2 * i * OW + 2 * j
            r00, r01, r10, r11 = rows[p00], rows[p00 + 1], rows[p00 + OW], rows[p00 + OW + 1]
            for f in range(F):
                best = r00[f]
                at = p00
                v = r01[f]
                up = v > best  # selects, not branches: the loop vectorizes
                best = v if up else best
                at = p00 + 1 if up else at
                v = r10[f]
                up = v > best
                best = v if up else best
                at = p00 + OW if up else at
                v = r11[f]
                up = v > best
                best = v if up else best
                at = p00 + OW + 1 if up else at
                dead = best <= zero
                po[f, i, j] = zero if dead else best
                ao[f, i, j] = p00 if dead else at


# Ladder rung 6, vs rung 4 + ReLU + maxpool2d_forward: the pool runs on each group's
# product in a per-thread tile; the conv output is never written.
def conv2d_relu_pool_forward(x, w, b, sh, sw, ph, pw, OH, OW, relu, pool, wb, cols, tile, pout,
                             argmax):
    """relu(conv(x)) then the 2x2, stride-2 max-pool: pout (N, F, OH//2, OW//2) and
    argmax (flat indices into the OH x OW conv planes, which are never written).

    ``pool=False``: pout (N, F, OH, OW) = conv(x) (relu'd if ``relu``), argmax is not
    touched: ``conv2d_forward``'s bits. ``pool`` needs ``relu`` (the fused pool is the
    pool of relu(conv))."""
    N = x.shape[0]
    F, _, KH, KW = w.shape
    P = OH * OW
    NG = cols.shape[0]
    G = N // NG
    S = tile.shape[0]
    if pool and not relu:
        raise ValueError("conv2d_relu_pool_forward: pool=True needs relu=True")
    fill_wb(w, b, wb)  # serial helper: no hidden parallel loop
    # PARALLEL: one run of consecutive groups per iteration (as conv2d_backward):
    # run t writes cols[g] of its own groups, its own tile[t], and the pooled
    # output and argmax of its own samples; a window never leaves its (sample,
    # channel) plane, so no two runs write the same element.
    for t in prange(S):
        tt = tile[t]
        for g in range(t * NG // S, (t + 1) * NG // S):
            if G == 1 and not pool:  # the product lands in the sample's output planes
                on = pout[g].reshape(F, P)
                conv_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, wb, cols[g], on)
                if relu:
                    relu_in_place(on)
            elif G == 1:  # tile as (F, P): the sample's conv planes
                planes = tt.reshape(F, OH, OW)
                conv_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, wb, cols[g],
                                   tt.reshape(F, P))
                finite = all_finite(tt.reshape(F, P))  # one vectorized check, not F
                for f in range(F):  # relu + pool, literal arguments: specialized copy
                    window2x2(planes[f], 2, 2, True, pout[g, f], argmax[g, f], finite)
            else:  # tile as (G*P, F): pixel rows, channel f every F floats
                go = tt.reshape(G * P, F)
                conv_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, wb, cols[g], go)
                if pool:
                    finite = all_finite(go)
                    for s in range(G):
                        if finite:  # the window loop runs over the channels of a pixel row
                            relu_pool_pixel_rows(go[s * P:(s + 1) * P], OH, OW,
                                                 pout[g * G + s], argmax[g * G + s])
                            continue
                        # a NaN or inf: plane by plane, NaN rules (finite is False here; a
                        # variable, not a literal, so no second copy of window2x2 compiles)
                        pixels = tt.reshape(G, OH, OW, F)
                        for f in range(F):
                            window2x2(pixels[s, :, :, f], 2, 2, True, pout[g * G + s, f],
                                      argmax[g * G + s, f], finite)
                    continue
                for s in range(G):  # scatter (pixel, channel) rows to (sample, channel) planes
                    rows_to_planes(go, s, relu, pout[g * G + s].reshape(F, P))


@helper
def unpool_relu(dpool, argmax, pout, n0, P, dg):
    """dg (F, G*P): the gradient of samples n0 .. n0+G-1 before the pool, in the
    layout of ``gather_dout``. Each window's gradient goes to its argmax, and is
    dropped where the window's maximum is <= 0 (the ReLU's derivative): the
    arithmetic of ``maxpool2d_backward`` with relu=True, so the same bits."""
    F = dg.shape[0]
    G = dg.shape[1] // P
    PH, PW = dpool.shape[2], dpool.shape[3]
    zero = dg.dtype.type(0)
    dg[:] = 0
    for s in range(G):
        for f in range(F):
            gp = dpool[n0 + s, f]
            ap = argmax[n0 + s, f]
            op = pout[n0 + s, f]
            row = dg[f]
            for i in range(PH):
                for j in range(PW):
                    row[s * P + ap[i, j]] += zero if op[i, j] <= zero else gp[i, j]


@helper
def group_output_gradient(dpool, argmax, pout, n0, G, P, pool, dg):
    """dg (F, G*P): the gradient of samples n0 .. n0+G-1 at the convolution's output --
    unpooled (``unpool_relu``) if ``pool``, else gathered from dpool (``gather_dout``)."""
    if pool:
        unpool_relu(dpool, argmax, pout, n0, P, dg)
    else:
        gather_dout(dpool, n0, G, dg)


# Ladder rung 6, vs maxpool2d_backward + rung 5: the unpooled gradient goes to a
# per-thread tile and straight into rung 5's per-group products.
def conv2d_relu_pool_backward(dpool, argmax, pout, w, cols, sh, sw, ph, pw, OH, OW, pool,
                              need_dx, tile, partial, dcols, dw, db, dx):
    """The gradients of ``conv2d_relu_pool_forward``: dw, db and (if ``need_dx``) dx.

    ``pool=False``: dpool is the gradient of the convolution's output (N, F, OH, OW),
    any ReLU already applied to it; argmax and pout are not read: ``conv2d_backward``'s
    bits."""
    N = dpool.shape[0]
    F, C, KH, KW = w.shape
    NG, _, K1 = partial.shape
    K, P = K1 - 1, OH * OW
    G = N // NG
    S = tile.shape[0]
    w2 = w.reshape(F, K)
    dw2 = dw.reshape(F, K)
    # PARALLEL: one run of consecutive groups per iteration, as in conv2d_backward:
    # run t writes only its tile[t] and dcols[t], partial[g] of its own groups
    # and the dx of its own samples.
    for t in prange(S):
        dg = tile[t].reshape(F, G * P)
        for g in range(t * NG // S, (t + 1) * NG // S):
            group_output_gradient(dpool, argmax, pout, g * G, G, P, pool, dg)
            backward_group(dg, w2, cols[g], KH, KW, sh, sw, ph, pw, need_dx, partial[g],
                           dcols[t], dx[g * G:(g + 1) * G])
    # PARALLEL: one output channel per iteration, groups summed in a fixed order.
    for f in prange(F):
        sum_group_partials(partial, np.int64(f), dw2, db)
