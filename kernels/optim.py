"""In-place optimizer updates on flat (1-D, contiguous) parameter arrays.

Scalars arrive already cast to the parameter dtype (the Python side does it),
so float32 training never computes in float64.
"""

from __future__ import annotations

import numpy as np
from numba import prange

__all__ = ["adam_update", "sgd_update"]


def adam_update(p, g, m, v, alpha, beta1, beta2, eps):
    """Keras's Adam: m += (g-m)(1-b1); v += (g²-v)(1-b2); p -= alpha*m/(sqrt(v)+eps).

    ``alpha`` = lr * sqrt(1 - beta2**t) / (1 - beta1**t), computed by the caller.
    """
    one = p.dtype.type(1)
    # PARALLEL: element-wise; each parameter's update reads and writes only its
    # own p[i], m[i], v[i].
    for i in prange(p.size):
        gi = g[i]
        m[i] += (gi - m[i]) * (one - beta1)
        v[i] += (gi * gi - v[i]) * (one - beta2)
        p[i] -= alpha * m[i] / (np.sqrt(v[i]) + eps)


def sgd_update(p, g, vel, lr, momentum, weight_decay):
    """SGD with momentum (Keras form) and L2 weight decay added to the gradient.

    g' = g + weight_decay * p; vel = momentum * vel - lr * g'; p += vel.
    """
    # PARALLEL: element-wise, as above.
    for i in prange(p.size):
        gi = g[i] + weight_decay * p[i]
        vel[i] = momentum * vel[i] - lr * gi
        p[i] += vel[i]
