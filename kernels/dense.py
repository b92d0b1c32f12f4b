"""Dense (fully connected) kernels: y = x @ w + b with x (N, I), w (I, O), b (O,).

The weight layout (inputs, outputs) is Keras's.
"""

from __future__ import annotations

import numpy as np
from numba import prange

__all__ = ["dense_forward", "dense_backward_input", "dense_backward_weight"]


def dense_forward(x, w, b, relu, out):
    """out = x @ w + b, then max(., 0) if ``relu`` (the activation fused in)."""
    N = x.shape[0]
    O = w.shape[1]
    zero = x.dtype.type(0)
    # PARALLEL: one sample per iteration; row out[n] belongs to sample n alone.
    for n in prange(N):
        np.dot(x[n], w, out[n])  # (I,) @ (I, O): BLAS, one thread
        for o in range(O):
            v = out[n, o] + b[o]
            out[n, o] = zero if relu and v < zero else v


def dense_backward_input(dy, w, dx):
    N = dy.shape[0]
    # PARALLEL: one sample per iteration; dx[n] = w @ dy[n] is sample n's alone.
    for n in prange(N):
        np.dot(w, dy[n], dx[n])  # (I, O) @ (O,)


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
