"""MaxPool2D kernels, NCHW, no padding (Keras "valid"): OH = (H - KH) // sh + 1.

Ties: when several inputs of a window share the maximum, the *first* one in
row-major order inside the window (smallest row, then smallest column) is the
argmax and receives the whole gradient; the others receive none. This is a
subgradient, like PyTorch's choice. Overlapping windows (stride < window) can
pick the same input: its gradient is then the sum, added in window order.
"""

from __future__ import annotations

from numba import prange

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]


def maxpool2d_forward(x, KH, KW, sh, sw, out, argmax):
    N, C, H, W = x.shape
    _, _, OH, OW = out.shape
    # PARALLEL: one (sample, channel) plane per iteration. A window never mixes
    # planes, so plane nc writes only out[n, c] and argmax[n, c]: no sharing.
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        for i in range(OH):
            for j in range(OW):
                h0 = i * sh
                w0 = j * sw
                best = x[n, c, h0, w0]
                best_at = h0 * W + w0
                for ki in range(KH):
                    for kj in range(KW):
                        v = x[n, c, h0 + ki, w0 + kj]
                        if v > best:  # strict: the first maximum wins ties
                            best = v
                            best_at = (h0 + ki) * W + (w0 + kj)
                out[n, c, i, j] = best
                argmax[n, c, i, j] = best_at


def maxpool2d_backward(dout, argmax, dx):
    N, C, OH, OW = dout.shape
    W = dx.shape[3]
    # PARALLEL: one (sample, channel) plane per iteration. Every argmax of
    # plane nc points inside plane nc, so the `+=` below only ever touches this
    # thread's plane. Splitting over output rows i instead would race when
    # windows overlap (stride < window): two rows' windows share input pixels.
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        dx[n, c, :, :] = 0
        for i in range(OH):
            for j in range(OW):
                k = argmax[n, c, i, j]
                dx[n, c, k // W, k % W] += dout[n, c, i, j]
