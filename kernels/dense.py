"""Dense (fully connected) kernels: y = x @ w + b with x (N, I), w (I, O), b (O,).

The weight layout (inputs, outputs) is Keras's.

Every product is a BLAS matrix product (``np.dot``, one thread) over a fixed
block of rows: a block of ``SAMPLES`` samples, or of ``FEATURES`` input
features for the weight gradient. The blocks depend only on the shapes, so the
serial and the parallel build make exactly the same BLAS calls. (One
matrix-vector product per sample, as before, was 3x slower: it reads all of w
once per sample.)
"""

from __future__ import annotations

import numpy as np
from numba import prange

__all__ = ["dense_forward", "dense_backward_input", "dense_backward_weight"]

#: Samples per block in the forward and input-gradient products.
SAMPLES = 8
#: Input features per block in the weight-gradient product.
FEATURES = 128


def dense_forward(x, w, b, relu, out):
    """out = x @ w + b, then max(., 0) if ``relu`` (the activation fused in)."""
    N = x.shape[0]
    O = w.shape[1]
    zero = x.dtype.type(0)
    # PARALLEL: one block of samples per iteration; rows out[n0:n1] belong to
    # those samples alone.
    for blk in prange((N + SAMPLES - 1) // SAMPLES):
        n0 = blk * SAMPLES
        n1 = min(N, n0 + SAMPLES)
        np.dot(x[n0:n1], w, out[n0:n1])  # (B, I) @ (I, O): BLAS, one thread
        for n in range(n0, n1):
            for o in range(O):
                v = out[n, o] + b[o]
                out[n, o] = zero if relu and v < zero else v


def dense_backward_input(dy, w, dx):
    N = dy.shape[0]
    # PARALLEL: one block of samples per iteration; dx[n0:n1] = dy[n0:n1] @ w.T
    # is those samples' alone.
    for blk in prange((N + SAMPLES - 1) // SAMPLES):
        n0 = blk * SAMPLES
        n1 = min(N, n0 + SAMPLES)
        np.dot(dy[n0:n1], w.T, dx[n0:n1])  # (B, O) @ (O, I)


def dense_backward_weight(x, dy, dw, db):
    N, I = x.shape
    O = dy.shape[1]
    # PARALLEL: one block of input features per iteration; the thread owns rows
    # dw[i0:i1] = x[:, i0:i1].T @ dy, a product that sums over the whole batch
    # inside one BLAS call. Splitting the batch n instead would have all
    # threads adding into every dw[i, o].
    for blk in prange((I + FEATURES - 1) // FEATURES):
        i0 = blk * FEATURES
        i1 = min(I, i0 + FEATURES)
        xt = np.empty((i1 - i0, N), x.dtype)  # the block transposed (contiguous for BLAS;
        for i in range(i0, i1):               # a few KB, from the allocator's free list)
            for n in range(N):
                xt[i - i0, n] = x[n, i]
        np.dot(xt, dy, dw[i0:i1])  # (B, N) @ (N, O)
    # PARALLEL: one output o per iteration, owning db[o].
    for o in prange(O):
        acc = dy.dtype.type(0)
        for n in range(N):
            acc += dy[n, o]
        db[o] = acc
