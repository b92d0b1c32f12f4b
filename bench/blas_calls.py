"""The BLAS calls of one training step and nothing else (``bench/products.py`` times them).

Each kernel mirrors the ``np.dot`` calls of kernels/convpool.py
(``conv_group_product``, ``backward_group``) and kernels/dense.py for one step,
split over threads as those kernels split them; ``bench/products.py`` compiles
them serial and parallel with the package's own ``build``.
"""

from __future__ import annotations

import numpy as np
from numba import prange

__all__ = ["conv_forward_products", "conv_backward_products", "dense_forward_products",
           "dense_backward_products"]


def conv_forward_products(wb, cols, columns, prod):
    """G = 1: wb (F, K+1) @ cols[g] (K+1, P); G > 1: cols[g] (G*P, K+1) @ wb.T. prod: one
    output slot per run of groups (the kernels' tile). ``columns``: G = 1 (im2col)."""
    NG = cols.shape[0]
    S = prod.shape[0]
    for t in prange(S):
        for g in range(t * NG // S, (t + 1) * NG // S):
            if columns:
                np.dot(wb, cols[g], prod[t])
            else:
                np.dot(cols[g], wb.T, prod[t])


def conv_backward_products(dg, w2, cols, columns, need_dx, partial, dcols):
    """G = 1: dg (F, P) @ cols[g].T and w2.T @ dg; G > 1: dg (F, G*P) @ cols[g] and
    dg.T @ w2 (the input gradient's only if ``need_dx``)."""
    NG = cols.shape[0]
    S = dg.shape[0]
    for t in prange(S):
        for g in range(t * NG // S, (t + 1) * NG // S):
            if columns:
                np.dot(dg[t], cols[g].T, partial[g])
                if need_dx:
                    np.dot(w2.T, dg[t], dcols[t])
            else:
                np.dot(dg[t], cols[g], partial[g])
                if need_dx:
                    np.dot(dg[t].T, w2, dcols[t])


def dense_forward_products(x, w, out, blocks):
    """``x @ w`` by blocks of samples, as ``dense_forward``."""
    N = x.shape[0]
    for blk in prange((N + blocks - 1) // blocks):
        n0 = blk * blocks
        n1 = min(N, n0 + blocks)
        np.dot(x[n0:n1], w, out[n0:n1])


def dense_backward_products(x, w, dy, dx, dw, blocks):
    """The input gradient ``dy @ w.T`` by blocks of samples (as ``dense_backward_input``)
    and the weight gradient as the one product ``x.T @ dy`` that would replace
    ``dense_backward_weight``'s loops."""
    N = x.shape[0]
    for blk in prange((N + blocks - 1) // blocks):
        n0 = blk * blocks
        n1 = min(N, n0 + blocks)
        np.dot(dy[n0:n1], w.T, dx[n0:n1])
    np.dot(x.T, dy, dw)
