"""Softmax cross-entropy on logits, mean over the batch, integer labels."""

from __future__ import annotations

import numpy as np
from numba import prange

__all__ = ["softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels, inv_n, losses, dlogits):
    """Per-sample losses into ``losses`` (N,) and d(mean loss)/d(logits) into ``dlogits``.

    Stable log-sum-exp: loss_n = log(sum_k exp(z_k - m)) - (z_y - m) with m = max_k z_k.
    ``inv_n`` (the logits' dtype) is 1 / the number of samples the mean runs over: N for
    a whole batch, the global batch size for a data-parallel rank's share of it.
    The caller averages ``losses`` (in a fixed order) to get the batch loss.
    """
    N, K = logits.shape
    # PARALLEL: one sample per iteration; row n of losses and dlogits is its own.
    for n in prange(N):
        m = logits[n, 0]
        for k in range(1, K):
            if logits[n, k] > m:
                m = logits[n, k]
        s = logits.dtype.type(0)
        for k in range(K):
            e = np.exp(logits[n, k] - m)
            dlogits[n, k] = e
            s += e
        y = labels[n]
        losses[n] = np.log(s) - (logits[n, y] - m)
        inv_s = logits.dtype.type(1) / s
        for k in range(K):
            dlogits[n, k] = dlogits[n, k] * inv_s * inv_n
        dlogits[n, y] -= inv_n
