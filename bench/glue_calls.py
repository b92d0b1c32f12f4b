"""The glue of one training step's convolutions, piece by piece (``bench/products.py`` times
them).

Each kernel runs one kind of data movement of ``kernels/convpool.py`` for a whole batch,
through the same helpers, with the same arguments and the same split over threads (one
run of consecutive sample groups per thread), and nothing else:

* ``patches``: unroll each group's patches (``im2col`` + the bias row for G = 1,
  ``im2row`` with its bias column for G > 1), as ``conv_group_product`` does;
* ``pool``: the fused ReLU + 2x2 max-pool from a group's product tile (``all_finite``,
  then ``window2x2`` plane by plane for G = 1 or ``relu_pool_pixel_rows`` for G > 1), or,
  with no pool, the ReLU'd scatter of the product into output planes (``rows_to_planes``);
* ``unpool``: the pooled gradient back into a group's tile, or with no pool the gather
  of the output gradient (``group_output_gradient``, the kernel's own helper);
* ``fold``: the patch gradients added back into the input gradient (``row2im``; G = 1
  layers here need no input gradient);
* ``sums``: the per-group weight gradients summed in order (``sum_group_partials``).

The tile holds random values, not a product: the pieces' speed does not depend on them
(finite values, no subnormals).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from scratchcnn.kernels.conv_fast import (
    im2col,
    im2row,
    row2im,
    rows_to_planes,
    sum_group_partials,
)
from scratchcnn.kernels.convpool import all_finite, group_output_gradient, relu_pool_pixel_rows
from scratchcnn.kernels.pool import window2x2

__all__ = ["glue_patches", "glue_pool", "glue_unpool", "glue_fold", "glue_sums"]


def glue_patches(x, KH, KW, sh, sw, ph, pw, cols, G, slots):
    """Every group's patches into cols (NG, K+1, P) for G = 1, (NG, G*P, K+1) for G > 1
    (G > 1: the unrolled 3x3 copy of ``im2row``, as the kernels call it for the network's
    unpadded 3x3 layers; G = 1: ``im2col`` with run-time arguments, as they call it)."""
    NG = cols.shape[0]
    for t in prange(slots):
        for g in range(t * NG // slots, (t + 1) * NG // slots):
            if G == 1:
                K = cols.shape[1] - 1
                im2col(x[g], KH, KW, sh, sw, ph, pw, cols[g], 0)
                cols[g, K, :] = 1
            else:
                P = cols.shape[1] // G
                for s in range(G):
                    im2row(x[g * G + s], 3, 3, 1, 1, 0, 0, cols[g], s * P)


def glue_pool(tile, OH, OW, G, pool, pout, argmax):
    """From each group's tile (one per thread): ReLU + max-pool into pout/argmax
    (``pool``), or the ReLU'd scatter into output planes pout (N, F, OH, OW)."""
    N, F = pout.shape[0], pout.shape[1]
    P = OH * OW
    NG = N // G
    S = tile.shape[0]
    for t in prange(S):
        tt = tile[t]
        for g in range(t * NG // S, (t + 1) * NG // S):
            if G == 1 and pool:
                planes = tt.reshape(F, OH, OW)
                finite = all_finite(tt.reshape(F, P))
                for f in range(F):
                    window2x2(planes[f], 2, 2, True, pout[g, f], argmax[g, f], finite)
            elif pool:
                go = tt.reshape(G * P, F)
                if all_finite(go):
                    for s in range(G):
                        relu_pool_pixel_rows(go[s * P:(s + 1) * P], OH, OW, pout[g * G + s],
                                             argmax[g * G + s])
            else:
                go = tt.reshape(G * P, F)
                for s in range(G):
                    rows_to_planes(go, s, True, pout[g * G + s].reshape(F, P))


def glue_unpool(dpool, argmax, pout, P, G, pool, tile):
    """Each group's output gradient into its thread's tile: unpooled (``pool``) or
    gathered from dpool (N, F, OH, OW)."""
    N = dpool.shape[0]
    NG = N // G
    S = tile.shape[0]
    F = dpool.shape[1]
    for t in prange(S):
        dg = tile[t].reshape(F, G * P)
        for g in range(t * NG // S, (t + 1) * NG // S):
            group_output_gradient(dpool, argmax, pout, g * G, G, P, pool, dg)


def glue_fold(dcols, G, dx):
    """Each group's patch gradients (one slot per thread, (G*P, K)) added back into dx."""
    N = dx.shape[0]
    NG = N // G
    S = dcols.shape[0]
    P = dcols.shape[1] // G
    for t in prange(S):
        for g in range(t * NG // S, (t + 1) * NG // S):
            for s in range(G):
                row2im(dcols[t], s * P, 3, 3, 1, 1, 0, 0, dx[g * G + s])


def glue_sums(partial, dw2, db):
    """The groups' weight gradients summed in order, one output channel per iteration."""
    for f in prange(dw2.shape[0]):
        sum_group_partials(partial, np.int64(f), dw2, db)
