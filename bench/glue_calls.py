"""The glue of one training step's convolutions, piece by piece (``bench/products.py`` times
them).

Each kernel runs one kind of data movement of ``kernels/convpool.py`` for a whole batch,
through the same helpers, with the same arguments and the same split over threads (one
run of consecutive sample groups per thread), and nothing else:

* ``patches``: unroll each group's patches -- with a pool, the pooled pixels' only, in
  window-major order (``im2col_windows`` for G = 1, ``im2row_windows`` for G > 1, as
  ``pooled_group_product`` does); without, ``im2row`` with its bias column (G > 1), as
  ``conv_group_product`` does;
* ``pool``: the fused ReLU + 2x2 max-pool from a group's product tile (``all_finite``,
  then ``relu_pool_planes`` for G = 1 or ``relu_pool_rows`` for G > 1), or, with no
  pool, the ReLU'd scatter of the product into output planes (``rows_to_planes``);
* ``unpool``: the pooled gradient back into a group's tile (``unpool_relu``), or with
  no pool the gather of the output gradient (``gather_dout``);
* ``fold``: the patch gradients added back into the input gradient (``row2im_windows``
  with a pool, ``row2im`` without; G = 1 layers here need no input gradient);
* ``sums``: the per-group weight gradients summed in order (``sum_group_partials``).

The tile holds random values, not a product: the pieces' speed does not depend on them
(finite values, no subnormals).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from scratchcnn.kernels.conv_fast import (
    gather_dout,
    im2row,
    row2im,
    rows_to_planes,
    sum_group_partials,
)
from scratchcnn.kernels.convpool import (
    all_finite,
    pooled_view,
    relu_pool_planes,
    relu_pool_rows,
    unpool_relu,
)
from scratchcnn.kernels.windows import im2col_windows, im2row_windows, row2im_windows

__all__ = ["glue_patches", "glue_pool", "glue_unpool", "glue_fold", "glue_sums"]


def glue_patches(x, PH, PW, pool, cols, G, slots):
    """Every group's patches into cols (NG, K+1, P) for G = 1, (NG, G*P, K+1) for G > 1,
    as the kernels unroll them for the network's unpadded 3x3 layers (the unrolled 3x3
    copies): with ``pool`` the first 4*PH*PW pixels, window-major, else all P."""
    NG = cols.shape[0]
    for t in prange(slots):
        for g in range(t * NG // slots, (t + 1) * NG // slots):
            if pool and G == 1:
                K1 = cols.shape[1]
                im2col_windows(x[g], 3, 3, 1, 1, 0, 0, PH, PW,
                               pooled_view(cols[g], K1, 4 * PH * PW))
            elif pool:
                P4 = 4 * PH * PW
                for s in range(G):
                    im2row_windows(x[g * G + s], 3, 3, 1, 1, 0, 0, PH, PW, cols[g], s * P4)
            else:
                P = cols.shape[1] // G
                for s in range(G):
                    im2row(x[g * G + s], 3, 3, 1, 1, 0, 0, cols[g], s * P)


def glue_pool(tile, OH, OW, G, pool, pout, argmax):
    """From each group's tile (one per thread): ReLU + max-pool into pout/argmax
    (``pool``, the tile holding the pooled pixels window-major), or the ReLU'd scatter
    into output planes pout (N, F, OH, OW)."""
    N, F = pout.shape[0], pout.shape[1]
    P = OH * OW
    PH, PW = OH // 2, OW // 2
    PP = PH * PW
    NG = N // G
    S = tile.shape[0]
    for t in prange(S):
        tt = tile[t]
        for g in range(t * NG // S, (t + 1) * NG // S):
            if G == 1 and pool:
                prod = pooled_view(tt, F, 4 * PP)
                if all_finite(prod):
                    relu_pool_planes(prod, pout[g].reshape(F, PP), argmax[g].reshape(F, PP))
            elif pool:
                go = pooled_view(tt, G * 4 * PP, F)
                if all_finite(go):
                    for s in range(G):
                        relu_pool_rows(go[s * 4 * PP:(s + 1) * 4 * PP], pout[g * G + s],
                                       argmax[g * G + s])
            else:
                go = tt.reshape(G * P, F)
                for s in range(G):
                    rows_to_planes(go, s, True, pout[g * G + s].reshape(F, P))


def glue_unpool(dpool, argmax, pout, P, G, pool, tile):
    """Each group's output gradient into its thread's tile: unpooled (``pool``: the
    pooled pixels, window-major) or gathered from dpool (N, F, OH, OW)."""
    N = dpool.shape[0]
    NG = N // G
    S = tile.shape[0]
    F = dpool.shape[1]
    P4 = 4 * dpool.shape[2] * dpool.shape[3]
    for t in prange(S):
        for g in range(t * NG // S, (t + 1) * NG // S):
            if pool:
                unpool_relu(dpool, argmax, pout, g * G, pooled_view(tile[t], F, G * P4))
            else:
                gather_dout(dpool, g * G, G, tile[t].reshape(F, G * P))


def glue_fold(dcols, G, PH, PW, pool, dx):
    """Each group's patch gradients (one slot per thread, (G*P, K)) added back into dx:
    with ``pool`` the first G*4*PH*PW rows, window-major (``row2im_windows``)."""
    N = dx.shape[0]
    NG = N // G
    S = dcols.shape[0]
    P = dcols.shape[1] // G
    P4 = 4 * PH * PW
    for t in prange(S):
        for g in range(t * NG // S, (t + 1) * NG // S):
            for s in range(G):
                if pool:
                    row2im_windows(dcols[t], s * P4, 3, 3, 1, 1, 0, 0, PH, PW, dx[g * G + s])
                else:
                    row2im(dcols[t], s * P, 3, 3, 1, 1, 0, 0, dx[g * G + s])


def glue_sums(partial, dw2, db):
    """The groups' weight gradients summed in order, one output channel per iteration."""
    for f in prange(dw2.shape[0]):
        sum_group_partials(partial, np.int64(f), dw2, db)
