"""Dense (fully connected) kernels: y = x @ w + b with x (N, I), w (I, O), b (O,).

The weight layout (inputs, outputs) is Keras's.

Forward and input gradient: one BLAS matrix product (``np.dot``, one thread)
per block of ``SAMPLES`` samples. The blocks depend only on the batch size, so
the serial and the parallel build make exactly the same BLAS calls. (One
matrix-vector product per sample, as before, reads all of w once per sample:
3x slower forward, 1.3x slower input gradient.)

Weight gradient: plain loops, kept as the guide's example of a thread owning
its output rows (docs/guide.md, sections 3 and 7); 0.13-0.17 ms of a ~10 ms
step on one core.
"""

from __future__ import annotations

import numpy as np
from numba import prange

__all__ = ["dense_forward", "dense_backward_input", "dense_backward_weight"]

#: Samples per block in the forward and input-gradient products.
SAMPLES = 8


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
    # PARALLEL: one input feature i per iteration; the thread owns row dw[i]
    # and sums over the batch in the fixed order n = 0..N-1. Splitting the
    # batch loop n instead would have all threads adding into every dw[i, o].
    for i in prange(I):
        for o in range(O):
            dw[i, o] = 0
        for n in range(N):
            xi = x[n, i]
            for o in range(O):
                dw[i, o] += xi * dy[n, o]
    # PARALLEL: one output o per iteration, owning db[o].
    for o in prange(O):
        acc = dy.dtype.type(0)
        for n in range(N):
            acc += dy[n, o]
        db[o] = acc
