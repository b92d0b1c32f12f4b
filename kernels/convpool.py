"""Conv2D + ReLU + 2x2 max-pool in one kernel, forward and backward (NCHW).

The reference network follows each of its first two convolutions (with a
fused ReLU) by a 2x2, stride-2 max-pool. Run as two kernels, the convolution
writes its whole output (conv1: 3.7 MB a step at batch 32) and the pool reads it
back; backward, the pool writes a gradient of that size (3/4 of it zeros) and
the convolution reads it back. These kernels do the pooling on each group's
product while it is still in cache, in a per-thread ``tile``, never write the
convolution's output, and compute only the part of it the pool reads:

- **Only the pooled pixels.** A 2x2, stride-2 pool reads the top-left
  2*PH x 2*PW pixels of an OH x OW output (PH = OH // 2): conv2's 13 x 13 output
  loses its last row and column, 25 of 169 pixels, and those outputs are never
  computed, forward or backward (their gradient is zero: they are in no window).
- **Window-major order** (``windows.py``): the patches are unrolled so that the
  product's pixel t = q*PP + w is place q of window w (PP = PH*PW). A window's
  four pixels are then PP apart, and the pool is an element-wise maximum of four
  contiguous runs, which the compiler vectorizes -- over the windows of a plane
  for G = 1 (conv1: ``relu_pool_planes``), over the channels of four pixel rows
  for G > 1 (conv2: ``relu_pool_rows``); the unpool writes every element of four
  runs with selects (``unpool_relu``), with no zeroing pass and no scatter. The
  argmax is the window-major index q*PP + w of the window's maximum.
- ``conv2d_relu_pool_forward``: per group, the pooled pixels' patches and their
  product into the tile, then ReLU + max-pool from the tile: the comparisons of
  ``maxpool2d_forward`` (2x2, stride 2) in the same order, so the same ties and
  NaN rules (a tile holding a NaN or an infinity, found by one vectorized check,
  is pooled by ``relu_pool_nan``).
- ``conv2d_relu_pool_backward``: per group, the pooled gradient is unpooled into
  the tile (the ReLU mask included), then the two products of ``conv2d_backward``
  over the pooled pixels' rows (or columns) only.

Bits: the pooled output and argmax are those of ``conv2d_forward`` (relu=True)
then ``maxpool2d_forward`` wherever BLAS rounds an output element alike at
another place in a product (float32 here: everywhere); the gradients are sums of
fewer terms (no zero terms from the dropped pixels) in another order, so they
equal the separate kernels' to rounding, not bit for bit
(``tests/test_convpool.py``). Serial and parallel builds, at any thread count,
still give one set of bits (``tests/test_serial_parallel_equal.py``). Measured on
the reference network (batch 32, one thread), against the same kernels over
every pixel in plane order: conv1 forward and backward ~0.8x, conv2 forward and
backward ~0.85x of the time.

``pool=False``: the pair is then a plain convolution (ReLU optional forward;
backward takes the gradient of the convolution's output), the same bits as
``conv2d_forward`` / ``conv2d_backward``. The CPU plans run *every* convolution
through this pair -- conv3, which no pool follows, included --, so a cold start
compiles two convolution kernels instead of four (each is one of the largest
compiles; ``bench/startup.py``). The flags are run-time arguments, not literals:
one compiled kernel serves both uses.

Workspaces: those of the conv kernels (``conv2d_workspace_shapes``), with
``tile`` (S, F*G*P); the pooled path uses the first G*4*PP pixels' worth of each
(``pooled_view``). The groups are split into S runs of consecutive groups, one
slot each (as in ``conv2d_backward``), so the serial build reuses one tile.
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
    unpadded_3x3,
)
from .windows import col2im_windows, im2col_windows, im2row_windows, row2im_windows

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
def relu_pool_planes(tile, po, ao):
    """ReLU + 2x2 max-pool of one sample's conv output planes in window-major order
    (``windows.py``), finite values only: tile (F, 4*PP); po, ao (F, PP) the pooled
    planes and their argmax (the window-major index q*PP + w of the window's maximum).

    The four places of a window, in row-major order; a later place wins only if
    strictly greater (ties keep the first maximum), a window whose maximum is <= 0 pools
    to 0 at its first place -- ``window2x2``'s rules (relu=True). Each place is a
    contiguous run of PP, so the loop over the windows vectorizes (selects, not
    branches)."""
    F, PP = po.shape
    zero = tile.dtype.type(0)
    for f in range(F):
        t, o, a = tile[f], po[f], ao[f]
        for w in range(PP):
            best = t[w]
            at = w
            v = t[PP + w]
            up = v > best
            best = v if up else best
            at = PP + w if up else at
            v = t[2 * PP + w]
            up = v > best
            best = v if up else best
            at = 2 * PP + w if up else at
            v = t[3 * PP + w]
            up = v > best
            best = v if up else best
            at = 3 * PP + w if up else at
            dead = best <= zero
            o[w] = zero if dead else best
            a[w] = w if dead else at


@helper
def relu_pool_rows(rows, po, ao):
    """``relu_pool_planes`` for one sample's conv output as pixel rows (G > 1): rows
    (4*PP, F), a pixel's F channels side by side, window-major; po, ao (F, PH, PW). The
    same comparisons in the same order, so the same bits, but the innermost loop runs
    over the channels of the window's four rows (contiguous: it vectorizes)."""
    F, PH, PW = po.shape
    PP = PH * PW
    zero = rows.dtype.type(0)
    for i in range(PH):  # (i, j) loops and 3-D outputs: 2x faster than one flat loop
        for j in range(PW):  # over the windows with (F, PP) views, as measured
            w = i * PW + j
            r0, r1, r2, r3 = rows[w], rows[PP + w], rows[2 * PP + w], rows[3 * PP + w]
            for f in range(F):
                best = r0[f]
                at = w
                v = r1[f]
                up = v > best
                best = v if up else best
                at = PP + w if up else at
                v = r2[f]
                up = v > best
                best = v if up else best
                at = 2 * PP + w if up else at
                v = r3[f]
                up = v > best
                best = v if up else best
                at = 3 * PP + w if up else at
                dead = best <= zero
                po[f, i, j] = zero if dead else best
                ao[f, i, j] = w if dead else at


@helper
def relu_pool_nan(t, sq, sw, sf, po, ao):
    """``relu_pool_planes`` / ``relu_pool_rows`` for a tile that holds a NaN or an
    infinity (every comparison with a NaN is false, so the selects above would hide
    one): place q of window w of channel f is t[q*sq + w*sw + f*sf], t flat. The NaN
    rule of the pool layer: a window holding a NaN pools to NaN, its argmax the first
    NaN (``window2x2_nan``); relu(NaN) = NaN. Branches: this path is rare."""
    F, PH, PW = po.shape
    PP = PH * PW
    zero = t.dtype.type(0)
    for f in range(F):
        for w in range(PP):
            best = t[w * sw + f * sf]
            at = w
            for q in range(1, 4):
                v = t[q * sq + w * sw + f * sf]
                if v > best or (v != v and best == best):  # first maximum; first NaN
                    best = v
                    at = q * PP + w
            if best <= zero:  # a NaN maximum stays NaN
                best = zero
                at = w
            po[f, w // PW, w % PW] = best
            ao[f, w // PW, w % PW] = at


@helper
def pooled_group_product(x, n0, G, KH, KW, sh, sw, ph, pw, PH, PW, wb, cg, prod):
    """``conv_group_product`` for the pooled pixels only, window-major (``windows.py``):
    samples n0 .. n0+G-1, bias included. G = 1: cg (K+1, 4*PP) patches as columns, prod
    (F, 4*PP); G > 1: cg (G*4*PP, K+1) patches as rows, prod (G*4*PP, F)."""
    if G == 1:
        if unpadded_3x3(KH, KW, sh, sw, ph, pw):  # literals: the unrolled 3x3 copy
            im2col_windows(x[n0], 3, 3, 1, 1, 0, 0, PH, PW, cg)
        else:
            im2col_windows(x[n0], KH, KW, sh, sw, ph, pw, PH, PW, cg)
        np.dot(wb, cg, prod)  # (F, K+1) @ (K+1, 4*PP): BLAS, one thread
        return
    P4 = cg.shape[0] // G
    for s in range(G):  # im2row_windows also sets the bias column
        if unpadded_3x3(KH, KW, sh, sw, ph, pw):
            im2row_windows(x[n0 + s], 3, 3, 1, 1, 0, 0, PH, PW, cg, s * P4)
        else:
            im2row_windows(x[n0 + s], KH, KW, sh, sw, ph, pw, PH, PW, cg, s * P4)
    np.dot(cg, wb.T, prod)  # (G*4*PP, K+1) @ (K+1, F)


@helper
def pooled_view(a, rows, cols):
    """The first rows*cols elements of the contiguous array ``a`` as a (rows, cols) array
    (a workspace sized for every conv output pixel, used for the pooled ones)."""
    return a.reshape(-1)[:rows * cols].reshape(rows, cols)


# Ladder rung 6, vs rung 4 + ReLU + maxpool2d_forward: the pool runs on each group's
# product in a per-thread tile; the conv output is never written, and only the pixels
# the pool reads are computed, window-major.
def conv2d_relu_pool_forward(x, w, b, sh, sw, ph, pw, OH, OW, relu, pool, wb, cols, tile, pout,
                             argmax):
    """relu(conv(x)) then the 2x2, stride-2 max-pool: pout (N, F, OH//2, OW//2) and
    argmax (the window-major index q*PP + w of each window's maximum, ``windows.py``).
    Only the 4*PP pooled pixels of each conv plane are computed; cols keeps their
    patches, window-major, for the backward.

    ``pool=False``: pout (N, F, OH, OW) = conv(x) (relu'd if ``relu``), argmax is not
    touched: ``conv2d_forward``'s bits. ``pool`` needs ``relu`` (the fused pool is the
    pool of relu(conv))."""
    N = x.shape[0]
    F, C, KH, KW = w.shape
    K, P = C * KH * KW, OH * OW
    PH, PW = OH // 2, OW // 2
    PP = PH * PW
    P4 = 4 * PP
    NG = cols.shape[0]
    G = N // NG
    S = tile.shape[0]
    unit = np.int64(1)  # a unit stride that is not a literal: one compile of relu_pool_nan
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
            if pool and G == 1:  # tile as (F, 4*PP): the sample's pooled pixels, by plane
                prod = pooled_view(tt, F, P4)
                pooled_group_product(x, g, G, KH, KW, sh, sw, ph, pw, PH, PW, wb,
                                     pooled_view(cols[g], K + 1, P4), prod)
                po, ao = pout[g].reshape(F, PP), argmax[g].reshape(F, PP)
                if all_finite(prod):  # one vectorized check per sample
                    relu_pool_planes(prod, po, ao)
                else:  # a NaN or inf: the NaN rules (places PP apart, planes 4*PP apart)
                    relu_pool_nan(prod.reshape(-1), PP, unit, P4, pout[g], argmax[g])
            elif pool:  # tile as (G*4*PP, F): pixel rows, channel f every F floats
                go = pooled_view(tt, G * P4, F)
                pooled_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, PH, PW, wb,
                                     pooled_view(cols[g], G * P4, K + 1), go)
                finite = all_finite(go)
                for s in range(G):
                    rows = go[s * P4:(s + 1) * P4]
                    if finite:  # the window loop runs over the channels of a pixel row
                        relu_pool_rows(rows, pout[g * G + s], argmax[g * G + s])
                    else:  # places PP rows apart, windows one row, channels one float
                        relu_pool_nan(rows.reshape(-1), PP * F, F, unit, pout[g * G + s],
                                      argmax[g * G + s])
            elif G == 1:  # the product lands in the sample's output planes
                on = pout[g].reshape(F, P)
                conv_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, wb, cols[g], on)
                if relu:
                    relu_in_place(on)
            else:  # tile as (G*P, F): pixel rows, scattered to (sample, channel) planes
                go = tt.reshape(G * P, F)
                conv_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, wb, cols[g], go)
                for s in range(G):
                    rows_to_planes(go, s, relu, pout[g * G + s].reshape(F, P))


@helper
def unpool_relu(dpool, argmax, pout, n0, dg):
    """dg (F, G*4*PP): the gradient of samples n0 .. n0+G-1 at the pooled pixels of the
    convolution's output, window-major (``windows.py``), sample after sample. Each
    window's gradient goes to its argmax, and is dropped where the window's maximum is
    <= 0 (the ReLU's derivative); every element is written (no zeroing pass, no
    scatter): four selects per window, which vectorize."""
    F = dg.shape[0]
    PH, PW = dpool.shape[2], dpool.shape[3]
    PP = PH * PW
    G = dg.shape[1] // (4 * PP)
    zero = dg.dtype.type(0)
    for s in range(G):
        for f in range(F):
            gp = dpool[n0 + s, f].reshape(PP)
            ap = argmax[n0 + s, f].reshape(PP)
            op = pout[n0 + s, f].reshape(PP)
            r = dg[f, s * 4 * PP:(s + 1) * 4 * PP]
            for w in range(PP):
                g = zero if op[w] <= zero else gp[w]
                q = ap[w] - w  # the argmax's place in the window, times PP
                r[w] = g if q == 0 else zero
                r[PP + w] = g if q == PP else zero
                r[2 * PP + w] = g if q == 2 * PP else zero
                r[3 * PP + w] = g if q == 3 * PP else zero


@helper
def pooled_backward_group(dg, w2, cg, KH, KW, sh, sw, ph, pw, PH, PW, need_dx, partial_g,
                          dcols_t, dxg):
    """``backward_group`` for the pooled pixels, window-major: dg (F, G*4*PP) the
    unpooled gradient, cg the patches ``pooled_group_product`` kept (G = 1: (K+1, 4*PP),
    G > 1: (G*4*PP, K+1)), dcols_t a scratch slot, dxg (G, C, H, W)."""
    G = dxg.shape[0]
    F, K = w2.shape
    P4 = dg.shape[1] // G
    if G == 1:
        np.dot(dg, cg.T, partial_g)  # (F, 4*PP) @ (4*PP, K+1)
        if need_dx:
            dc = pooled_view(dcols_t, K, P4)
            np.dot(w2.T, dg, dc)  # (K, F) @ (F, 4*PP)
            col2im_windows(dc, KH, KW, sh, sw, ph, pw, PH, PW, dxg[0])
        return
    np.dot(dg, cg, partial_g)  # (F, G*4*PP) @ (G*4*PP, K+1)
    if need_dx:
        dc = pooled_view(dcols_t, G * P4, K)
        np.dot(dg.T, w2, dc)  # (G*4*PP, F) @ (F, K): patch gradients as rows
        for s in range(G):
            if unpadded_3x3(KH, KW, sh, sw, ph, pw):  # the unrolled 3x3 copy
                row2im_windows(dc, s * P4, 3, 3, 1, 1, 0, 0, PH, PW, dxg[s])
            else:
                row2im_windows(dc, s * P4, KH, KW, sh, sw, ph, pw, PH, PW, dxg[s])


# Ladder rung 6, vs maxpool2d_backward + rung 5: the unpooled gradient goes to a
# per-thread tile and straight into rung 5's per-group products, over the pooled pixels.
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
    PH, PW = OH // 2, OW // 2
    P4 = 4 * PH * PW
    G = N // NG
    S = tile.shape[0]
    w2 = w.reshape(F, K)
    dw2 = dw.reshape(F, K)
    # PARALLEL: one run of consecutive groups per iteration, as in conv2d_backward:
    # run t writes only its tile[t] and dcols[t], partial[g] of its own groups
    # and the dx of its own samples.
    for t in prange(S):
        for g in range(t * NG // S, (t + 1) * NG // S):
            dxg = dx[g * G:(g + 1) * G]
            if pool:
                dg = pooled_view(tile[t], F, G * P4)
                unpool_relu(dpool, argmax, pout, g * G, dg)
                if G == 1:
                    cg = pooled_view(cols[g], K + 1, P4)
                else:
                    cg = pooled_view(cols[g], G * P4, K + 1)
                pooled_backward_group(dg, w2, cg, KH, KW, sh, sw, ph, pw, PH, PW, need_dx,
                                      partial[g], dcols[t], dxg)
            else:
                dg = tile[t].reshape(F, G * P)
                gather_dout(dpool, g * G, G, dg)
                backward_group(dg, w2, cols[g], KH, KW, sh, sw, ph, pw, need_dx, partial[g],
                               dcols[t], dxg)
    # PARALLEL: one output channel per iteration, groups summed in a fixed order.
    for f in prange(F):
        sum_group_partials(partial, np.int64(f), dw2, db)
