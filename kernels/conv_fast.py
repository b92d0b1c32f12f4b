"""Conv2D kernels, NCHW layout: x (N, C, H, W), w (F, C, KH, KW), b (F,).

The fast versions; the plain loop nests they are checked against live in
``conv.py``. The forward is ``conv2d_forward``: im2col (or im2row) + matrix
product (BLAS through ``np.dot``, pinned to one thread).

Backward is written as the two gradients, each with its own parallel axis:

- ``conv2d_backward_input``: dx, parallel over groups of samples (each thread
  owns the dx of its samples).
- ``conv2d_backward_weight``: dw and db, one partial product per group of
  samples, summed over the groups in a fixed order, so the result does not
  depend on the number of threads.

and ``conv2d_backward`` (what the layer calls) runs both in one pass over the
groups: a group's gathered output gradients are then used by both products
while they are still in cache, and gathered once instead of twice (~3% of a
training step).

Sizes: OH = (H + 2*ph - KH) // sh + 1, OW likewise; K = C*KH*KW, P = OH*OW.

Groups: the samples are processed in NG groups of G consecutive samples
(``group_size``), so one matrix product covers a whole group: for the small
late layers (P = 16 at 4x4 outputs) a product per sample would be too thin to
run fast. G depends only on the shapes, never on the thread count, so the
serial and the parallel build do exactly the same arithmetic.

Two layouts of the unrolled patches, chosen by G:

- G = 1 (large outputs, conv1): patches as *columns*, ``im2col``: cols (K+1, P),
  and the product (F, K+1) @ (K+1, P) lands directly in the sample's (F, P)
  output planes.
- G > 1 (conv2, conv3): patches as *rows*, ``im2row``: cols (G*P, K+1), one
  row per output pixel of the group. Every patch is then written contiguously
  (im2col writes rows only OW long: 13 for conv2, 4 for conv3), the product
  (G*P, K+1) @ (K+1, F) runs faster than its transpose (conv2: 1.5 vs 1.8 ms),
  and the input gradient's patch rows are added back (``row2im``) one patch at a
  time. The (pixel, channel) product is scattered to (sample, channel) planes.

Bias folding: the ones row (column) K of cols and the column K of ``wb``
holding the bias make the product add the bias, and in the weight gradient the
same product yields db (the row sums of dout) as its last column.

Workspaces (shapes from ``conv2d_workspace_shapes``; allocated once by the
layer, reused every batch): ``wb`` (F, K+1) weights and bias side by side,
``cols`` (NG, K+1, P) or (NG, G*P, K+1) the unrolled patches (kept from forward
for the weight gradient), ``gemm_out`` (NG, G*P, F) a group's product before
it is scattered to (sample, channel) planes -- reused in backward for the
gathered dout, as (F, G*P) --, ``partial`` (NG, F, K+1) per-group weight
gradients, ``dcols`` (S, K, P) or (S, G*P, K) with S = NG slots, or fewer for
``conv2d_backward``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._build import helper

__all__ = [
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward",
    "conv2d_sum_group_partials",
]


# --------------------------------------------------------------------------
# 2. im2col + matrix product
# --------------------------------------------------------------------------
def group_size(N: int, P: int, target: int = 700, min_groups: int = 4) -> int:
    """Samples per group: the largest divisor G of N with G*P <= max(P, target)
    that still leaves min(min_groups, N) groups to share among threads.

    Measured on the reference network (batch 32, one core, forward + backward
    with their gathers and scatters): conv2 (P = 169, G = 4) is within the
    run-to-run noise (~5%) of G = 1 and 2; conv3 (P = 16) is ~30% faster with
    G = 8 than with G = 2 (a per-sample product would have only 16 columns).
    conv1 (P = 900) gets G = 1, planes: as pixel rows (G = 2 or 4, where its fused
    pool would run over the channels) its fused forward took ~1.35x and its
    backward ~1.7x as long, in a same-process A/B.
    """
    best = 1
    for g in range(1, N + 1):
        if N % g == 0 and g * P <= max(P, target) and N // g >= min(min_groups, N):
            best = g
    return best


def conv2d_workspace_shapes(N, C, H, W, F, KH, KW, sh, sw, ph, pw, group=None,
                            slots=None) -> dict:
    """Shapes of the workspaces the CPU conv kernels expect for this geometry.

    The kernels read the group size from the workspaces (G = N // cols.shape[0]);
    ``group`` overrides ``group_size`` (tests use it to cover every path).
    ``slots``: how many groups' worth of ``dcols`` (and ``tile``) scratch to
    allocate, at most NG (the default). ``conv2d_backward`` works with any number (its threads
    each take a slot and a run of groups: the serial backend allocates one slot,
    the parallel backend one per thread); ``conv2d_backward_input`` needs NG.
    """
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    K, P = C * KH * KW, OH * OW
    G = group_size(N, P) if group is None else group
    if N % G:
        raise ValueError(f"group size {G} does not divide the batch {N}")
    NG = N // G
    S = NG if slots is None else max(1, min(NG, slots))
    tile = (S, F * G * P)  # a group's conv output: only the conv + pool kernels use it
    if G == 1:  # patches as columns (im2col)
        return {"wb": (F, K + 1), "cols": (NG, K + 1, P), "gemm_out": (1, 1, 1),  # unused
                "partial": (NG, F, K + 1), "dcols": (S, K, P), "tile": tile}
    return {  # G > 1: patches as rows (im2row)
        "wb": (F, K + 1),
        "cols": (NG, G * P, K + 1),
        "gemm_out": (NG, G * P, F),
        "partial": (NG, F, K + 1),
        "dcols": (S, G * P, K),
        "tile": tile,
    }


@helper
def im2col(xn, KH, KW, sh, sw, ph, pw, cols, col0):
    """Unroll the patches of one sample into columns col0, col0+1, ... of cols:

    cols[(c, ki, kj), col0 + (i, j)] = x[c, i*sh-ph+ki, j*sw-pw+kj], 0 in the padding.
    """
    C, H, W = xn.shape
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    zero = xn.dtype.type(0)
    if ph == 0 and pw == 0 and sw == 1:  # no padding, unit stride: plain row copies
        for c in range(C):
            for ki in range(KH):
                row = (c * KH + ki) * KW
                if KW == 3:  # the 3 rows (ki, kj = 0, 1, 2) read the same input row:
                    r0, r1, r2 = cols[row], cols[row + 1], cols[row + 2]  # fill them in one
                    for i in range(OH):                                  # pass
                        src = xn[c, i * sh + ki]
                        base = col0 + i * OW
                        for j in range(OW):
                            r0[base + j] = src[j]
                            r1[base + j] = src[j + 1]
                            r2[base + j] = src[j + 2]
                    continue
                for kj in range(KW):
                    for i in range(OH):
                        src = xn[c, i * sh + ki]
                        base = col0 + i * OW
                        for j in range(OW):
                            cols[row + kj, base + j] = src[j + kj]
        return
    for c in range(C):
        for ki in range(KH):
            for kj in range(KW):
                row = (c * KH + ki) * KW + kj
                for i in range(OH):
                    hi = i * sh - ph + ki
                    base = col0 + i * OW
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
def col2im(dcols, col0, KH, KW, sh, sw, ph, pw, dxn):
    """Scatter-add patch gradients (columns col0, ...) back to one sample: the adjoint of im2col.

    dxn is overwritten. A pixel covered by several patches receives the sum of
    their gradients, added in a fixed (c, ki, kj, i, j) order.
    """
    C, H, W = dxn.shape
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    dxn[:] = 0
    if ph == 0 and pw == 0 and sw == 1:  # no padding, unit stride: plain row additions
        for c in range(C):
            for ki in range(KH):
                row = (c * KH + ki) * KW
                if KW == 3 and OW >= 2:  # the 3 rows (ki, kj = 0, 1, 2) add into the same
                    ra, rb, rc = dcols[row], dcols[row + 1], dcols[row + 2]  # input row: one
                    for i in range(OH):  # pass over it, each pixel's terms still in kj order
                        dst = dxn[c, i * sh + ki]
                        b = col0 + i * OW
                        dst[0] += ra[b]
                        dst[1] = dst[1] + ra[b + 1] + rb[b]
                        for j in range(2, OW):
                            dst[j] = dst[j] + ra[b + j] + rb[b + j - 1] + rc[b + j - 2]
                        dst[OW] = dst[OW] + rb[b + OW - 1] + rc[b + OW - 2]
                        dst[OW + 1] += rc[b + OW - 1]
                    continue
                for kj in range(KW):
                    for i in range(OH):
                        dst = dxn[c, i * sh + ki]
                        base = col0 + i * OW
                        for j in range(OW):
                            dst[j + kj] += dcols[row + kj, base + j]
        return
    for c in range(C):
        for ki in range(KH):
            for kj in range(KW):
                row = (c * KH + ki) * KW + kj
                for i in range(OH):
                    hi = i * sh - ph + ki
                    if hi < 0 or hi >= H:
                        continue
                    base = col0 + i * OW
                    for j in range(OW):
                        wj = j * sw - pw + kj
                        if wj >= 0 and wj < W:
                            dxn[c, hi, wj] += dcols[row, base + j]


@helper
def im2row(xn, KH, KW, sh, sw, ph, pw, rows, row0):
    """Unroll the patches of one sample into rows row0, row0+1, ... of rows:

    rows[row0 + (i, j), (c, ki, kj)] = x[c, i*sh-ph+ki, j*sw-pw+kj], 0 in the
    padding; the last column (K) is 1 (the bias column). im2col transposed: each
    patch is written contiguously, and the reads stay inside one sample (in L1).
    """
    C, H, W = xn.shape
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    K = C * KH * KW
    zero = xn.dtype.type(0)
    if ph == 0 and pw == 0:  # no padding: no bounds to check (2x faster)
        for i in range(OH):
            for j in range(OW):
                dst = rows[row0 + i * OW + j]
                for c in range(C):
                    for ki in range(KH):
                        for kj in range(KW):
                            dst[(c * KH + ki) * KW + kj] = xn[c, i * sh + ki, j * sw + kj]
                dst[K] = 1
        return
    for i in range(OH):
        for j in range(OW):
            dst = rows[row0 + i * OW + j]
            for c in range(C):
                for ki in range(KH):
                    hi = i * sh - ph + ki
                    for kj in range(KW):
                        wj = j * sw - pw + kj
                        inside = hi >= 0 and hi < H and wj >= 0 and wj < W
                        dst[(c * KH + ki) * KW + kj] = xn[c, hi, wj] if inside else zero
            dst[K] = 1


@helper
def row2im(drows, row0, KH, KW, sh, sw, ph, pw, dxn):
    """The adjoint of im2row: add patch gradients (rows row0, ...) back into one sample.

    dxn is overwritten. A pixel covered by several patches receives the sum of
    their gradients, added in a fixed order (patch by patch, row-major).
    """
    C, H, W = dxn.shape
    OH = (H + 2 * ph - KH) // sh + 1
    OW = (W + 2 * pw - KW) // sw + 1
    dxn[:] = 0
    if ph == 0 and pw == 0:  # no padding: no bounds to check
        for i in range(OH):
            for j in range(OW):
                src = drows[row0 + i * OW + j]
                for c in range(C):
                    for ki in range(KH):
                        for kj in range(KW):
                            dxn[c, i * sh + ki, j * sw + kj] += src[(c * KH + ki) * KW + kj]
        return
    for i in range(OH):
        for j in range(OW):
            src = drows[row0 + i * OW + j]
            for c in range(C):
                for ki in range(KH):
                    hi = i * sh - ph + ki
                    if hi < 0 or hi >= H:
                        continue
                    for kj in range(KW):
                        wj = j * sw - pw + kj
                        if wj >= 0 and wj < W:
                            dxn[c, hi, wj] += src[(c * KH + ki) * KW + kj]


@helper
def unpadded_3x3(KH, KW, sh, sw, ph, pw):
    """Whether a convolution is 3x3, unit-stride and unpadded (all three of the reference
    network's). Its callers then pass ``im2row``/``row2im`` these values as literals, and
    Numba compiles a copy of the helper specialized to them, its 3x3 loops unrolled (5x
    faster for conv3, 1.4x for conv2). The literal call sits in each caller, not in a
    dispatching helper: every level of helpers is compiled again in each caller
    (docs/numba-facts.md)."""
    return KH == 3 and KW == 3 and sh == 1 and sw == 1 and ph == 0 and pw == 0


@helper
def fill_wb(w, b, wb):
    """wb (F, K+1) = the weights w as (F, K), then the bias as column K.

    Loops in a serial helper rather than ``wb[:, :K] = w.reshape(F, K)`` in a
    kernel: compiled with ``parallel=True``, a slice assignment is a parallel
    loop of its own (one more fork and join)."""
    F = w.shape[0]
    K = wb.shape[1] - 1
    w2 = w.reshape(F, K)
    for f in range(F):
        for k in range(K):
            wb[f, k] = w2[f, k]
        wb[f, K] = b[f]


@helper
def gather_dout(dout, n0, G, dg):
    """dg[f, s*P + p] = dout[n0 + s, f, p]: a group's output gradients side by side."""
    F = dout.shape[1]
    P = dout.shape[2] * dout.shape[3]
    for s in range(G):
        ds = dout[n0 + s].reshape(F, P)
        for f in range(F):
            for p in range(P):
                dg[f, s * P + p] = ds[f, p]


@helper
def sum_group_partials(partial, f, dw2, db):
    """dw2[f] and db[f] = the sum of the groups' partial[g, f], in the fixed order g = 0, 1, ..."""
    NG, _, K1 = partial.shape
    K = K1 - 1
    for k in range(K):
        dw2[f, k] = partial[0, f, k]
    db[f] = partial[0, f, K]
    for g in range(1, NG):
        for k in range(K):
            dw2[f, k] += partial[g, f, k]
        db[f] += partial[g, f, K]


@helper
def backward_group(dg, w2, cg, KH, KW, sh, sw, ph, pw, need_dx, partial_g, dcols_t, dxg):
    """One group's share of ``conv2d_backward``: its weight-gradient product into
    partial_g and, if ``need_dx``, the input gradient of its samples dxg (G, C, H, W).

    dg (F, G*P) is the group's output gradient, cg its patches (G = 1: columns,
    (K+1, P); G > 1: rows, (G*P, K+1)), dcols_t a scratch slot.
    """
    G = dxg.shape[0]
    P = dg.shape[1] // G
    if G == 1:
        np.dot(dg, cg.T, partial_g)  # (F, P) @ (P, K+1)
        if need_dx:
            np.dot(w2.T, dg, dcols_t)  # (K, F) @ (F, P)
            col2im(dcols_t, 0, KH, KW, sh, sw, ph, pw, dxg[0])
    else:
        np.dot(dg, cg, partial_g)  # (F, G*P) @ (G*P, K+1)
        if need_dx:
            np.dot(dg.T, w2, dcols_t)  # (G*P, F) @ (F, K)
            for s in range(G):
                if unpadded_3x3(KH, KW, sh, sw, ph, pw):
                    row2im(dcols_t, s * P, 3, 3, 1, 1, 0, 0, dxg[s])  # the unrolled 3x3 copy
                else:
                    row2im(dcols_t, s * P, KH, KW, sh, sw, ph, pw, dxg[s])


@helper
def conv_group_product(x, n0, G, KH, KW, sh, sw, ph, pw, wb, cg, prod):
    """The convolution of samples n0 .. n0+G-1, bias included, ReLU not: their
    patches into cg, then one matrix product into prod.

    G = 1: patches as columns, cg (K+1, P), prod (F, P) -- the sample's output
    planes. G > 1: patches as rows, cg (G*P, K+1), prod (G*P, F): one row per
    output pixel of the group, one column per channel.
    """
    K = wb.shape[1] - 1
    if G == 1:
        im2col(x[n0], KH, KW, sh, sw, ph, pw, cg, 0)
        cg[K, :] = 1  # the bias row
        np.dot(wb, cg, prod)  # (F, K+1) @ (K+1, P): BLAS, one thread
    else:
        P = cg.shape[0] // G
        for s in range(G):  # im2row also sets the bias column
            if unpadded_3x3(KH, KW, sh, sw, ph, pw):  # literals: the unrolled 3x3 copy
                im2row(x[n0 + s], 3, 3, 1, 1, 0, 0, cg, s * P)
            else:
                im2row(x[n0 + s], KH, KW, sh, sw, ph, pw, cg, s * P)
        np.dot(cg, wb.T, prod)  # (G*P, K+1) @ (K+1, F)


@helper
def relu_in_place(on):
    """on = max(on, 0), element by element, on a 2-D array: a select, not a branch (the
    signs are random, a branch mispredicts); relu(NaN) = NaN."""
    zero = on.dtype.type(0)
    for f in range(on.shape[0]):
        for p in range(on.shape[1]):
            v = on[f, p]
            on[f, p] = zero if v <= zero else v


@helper
def rows_to_planes(go, s, relu, on):
    """on (F, P) = the rows of sample s in a group's product go (G*P, F), one plane per
    channel (then max(., 0) if ``relu``)."""
    F, P = on.shape
    zero = go.dtype.type(0)
    for f in range(F):
        if relu:
            for p in range(P):
                v = go[s * P + p, f]
                on[f, p] = zero if v <= zero else v  # relu(NaN) = NaN
        else:
            for p in range(P):
                on[f, p] = go[s * P + p, f]


# Ladder rung 4 (docs/ladder.md), vs rung 3 (conv.py's conv2d_forward_gemm): G samples
# per product (im2row for G > 1), the bias folded into the product.
def conv2d_forward(x, w, b, sh, sw, ph, pw, relu, wb, cols, gemm_out, out):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    P = OH * OW
    NG = cols.shape[0]
    G = N // NG
    fill_wb(w, b, wb)  # a serial helper: `wb[:, :K] = ...` here would be a parallel loop
    # PARALLEL: one group of G samples per iteration. Group g reads its samples
    # of x, writes only its own workspaces cols[g] / gemm_out[g] and the output
    # planes of its own samples; the weights are only read. (Splitting a loop
    # inside the matrix product would need a reduction over K shared by
    # threads; splitting samples needs none.)
    for g in prange(NG):
        if G == 1:  # the product lands directly in this sample's output planes
            on = out[g].reshape(F, P)
            conv_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, wb, cols[g], on)
            if relu:
                relu_in_place(on)
        else:
            go = gemm_out[g]
            conv_group_product(x, g * G, G, KH, KW, sh, sw, ph, pw, wb, cols[g], go)
            for s in range(G):  # scatter (pixel, channel) rows to (sample, channel) planes
                rows_to_planes(go, s, relu, out[g * G + s].reshape(F, P))


# Ladder rung 4, vs rung 3 (conv2d_backward_input_gemm): one product per group of samples,
# patch gradients as rows (row2im) for G > 1.
def conv2d_backward_input(dout, w, sh, sw, ph, pw, dout_g, dcols, dx):
    N, F, OH, OW = dout.shape
    _, C, KH, KW = w.shape
    K, P = C * KH * KW, OH * OW
    G = 1 if dout_g.size == 1 else dout_g.shape[1] // P  # see conv2d_workspace_shapes
    NG = N // G
    if dcols.shape[0] != NG:
        raise ValueError("conv2d_backward_input needs one dcols slot per group")
    w2 = w.reshape(F, K)
    # PARALLEL: one group of samples per iteration. dx[n] depends only on
    # dout[n] and the weights; the scatter-add of col2im touches only dx of the
    # group's own samples, so threads never add into the same pixel. (Splitting
    # over output channels f instead would make several threads add into the
    # same dx pixels: a race.)
    for g in prange(NG):
        if G == 1:
            np.dot(w2.T, dout[g].reshape(F, P), dcols[g])  # (K, F) @ (F, P)
            col2im(dcols[g], 0, KH, KW, sh, sw, ph, pw, dx[g])
        else:
            dg = dout_g[g].reshape(F, G * P)
            gather_dout(dout, g * G, G, dg)
            np.dot(dg.T, w2, dcols[g])  # (G*P, F) @ (F, K): patch gradients as rows
            for s in range(G):
                if unpadded_3x3(KH, KW, sh, sw, ph, pw):
                    row2im(dcols[g], s * P, 3, 3, 1, 1, 0, 0, dx[g * G + s])  # unrolled 3x3
                else:
                    row2im(dcols[g], s * P, KH, KW, sh, sw, ph, pw, dx[g * G + s])


# Ladder rung 4, vs rung 3 (conv2d_backward_weight_gemm): one partial per group, db from
# the ones column of cols instead of a separate sum.
def conv2d_backward_weight(dout, cols, dout_g, partial, dw, db):
    N, F, OH, OW = dout.shape
    NG, _, K1 = partial.shape
    K, P = K1 - 1, OH * OW
    G = N // NG
    dw2 = dw.reshape(F, K)
    # PARALLEL (1): one group of samples per iteration, each into its own
    # partial buffer partial[g]: (F, G*P) @ (G*P, K+1); the last column is db's
    # share (cols' row of ones). Summing straight into dw from several groups at
    # once (`dw += ...` inside this loop) is the classic race: two threads read
    # the same dw element, both add, one write is lost.
    for g in prange(NG):
        if G == 1:
            np.dot(dout[g].reshape(F, P), cols[g].T, partial[g])
        else:
            dg = dout_g[g].reshape(F, G * P)
            gather_dout(dout, g * G, G, dg)
            np.dot(dg, cols[g], partial[g])
    # PARALLEL (2): one output channel per iteration; each thread owns row dw[f]
    # and db[f] and sums the groups in the fixed order g = 0, 1, ..., NG-1, so
    # the result is bit-for-bit the same whatever the number of threads.
    # (np.int64(f): Numba hands a second prange's index over as uint64, and a helper
    # called with another integer type is compiled once more.)
    for f in prange(F):
        sum_group_partials(partial, np.int64(f), dw2, db)


# Ladder rung 5, vs rung 4: both gradients in one pass over the groups, one scratch slot
# per thread instead of per group.
def conv2d_backward(dout, w, cols, sh, sw, ph, pw, need_dx, dout_g, partial, dcols, dw, db, dx):
    """``conv2d_backward_weight`` and (if ``need_dx``) ``conv2d_backward_input`` fused.

    Same arithmetic, in the same order, as the two kernels: bit-for-bit the same
    dw, db, dx. ``dcols`` may have fewer slots than there are groups (S <= NG,
    see ``conv2d_workspace_shapes``): the groups are then split into S runs of
    consecutive groups, and run t does its groups one after the other in slot t
    (and in dout_g[t]). With S = 1 (the serial backend) the scratch stays in
    cache: 0.8 MB instead of 6.2 MB for conv2 at batch 32 (its backward ~5% faster).
    """
    N, F, OH, OW = dout.shape
    _, C, KH, KW = w.shape
    NG, _, K1 = partial.shape
    K, P = K1 - 1, OH * OW
    G = N // NG
    S = dcols.shape[0]
    w2 = w.reshape(F, K)
    dw2 = dw.reshape(F, K)
    # PARALLEL: one run of consecutive groups per iteration, as the two kernels
    # above split groups: run t writes only partial[g] of its own groups, its
    # own scratch slots dout_g[t] and dcols[t], and the dx of its own samples.
    for t in prange(S):
        for g in range(t * NG // S, (t + 1) * NG // S):
            if G == 1:
                dg = dout[g].reshape(F, P)
            else:
                dg = dout_g[t].reshape(F, G * P)
                gather_dout(dout, g * G, G, dg)
            backward_group(dg, w2, cols[g], KH, KW, sh, sw, ph, pw, need_dx, partial[g],
                           dcols[t], dx[g * G:(g + 1) * G])
    # PARALLEL: one output channel per iteration, groups summed in a fixed order
    # (see conv2d_backward_weight).
    for f in prange(F):
        sum_group_partials(partial, np.int64(f), dw2, db)


def conv2d_sum_group_partials(partial, dw, db):
    """dw, db = the sum over groups of partial (NG, F, K+1), in group order: the last
    step of ``conv2d_backward_weight`` on its own, for partials gathered from elsewhere
    (data-parallel ranks). Same arithmetic, same order, same bits."""
    F = partial.shape[1]
    dw2 = dw.reshape(F, dw.size // F)
    # PARALLEL: one output channel per iteration, groups summed in a fixed order
    # (see conv2d_backward_weight).
    for f in prange(F):
        sum_group_partials(partial, np.int64(f), dw2, db)
