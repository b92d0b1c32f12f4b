"""Conv2D kernels, readable versions (NCHW): x (N, C, H, W), w (F, C, KH, KW), b (F,).

The plain loop nests: the reference every faster kernel (``conv_fast.py``,
``convpool.py``) is checked against, and the first rungs of the guide's ladder.
"""

from __future__ import annotations

from numba import prange

__all__ = ["conv2d_forward_direct"]


# --------------------------------------------------------------------------
# 1. The plain loop nest (reference; slow: ~7 GFLOP/s on one core)
# --------------------------------------------------------------------------
def conv2d_forward_direct(x, w, b, sh, sw, ph, pw, out):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    # PARALLEL: split the (sample, output channel) pairs. Every pair writes only
    # its own output plane out[n, f], and reads x and w, which nobody writes:
    # no two threads ever touch the same output element. Splitting the channel
    # loop `c` (or kh, kw) instead would make threads add into the same
    # `acc`/out[n, f, i, j] at once: a race.
    for nf in prange(N * F):
        n = nf // F
        f = nf % F
        for i in range(OH):
            for j in range(OW):
                acc = b[f]
                for c in range(C):
                    for ki in range(KH):
                        hi = i * sh - ph + ki
                        if hi < 0 or hi >= H:
                            continue
                        for kj in range(KW):
                            wj = j * sw - pw + kj
                            if wj < 0 or wj >= W:
                                continue
                            acc += x[n, c, hi, wj] * w[f, c, ki, kj]
                out[n, f, i, j] = acc
