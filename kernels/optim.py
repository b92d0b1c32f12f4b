"""In-place optimizer updates on flat (1-D, contiguous) parameter arrays.

Scalars arrive already cast to the parameter dtype (the Python side does it),
so float32 training never computes in float64.

Subnormal numbers are flushed to zero in the optimizer state. A weight whose
gradient stays 0 (a dead ReLU unit) has its momentum multiplied by 0.9 every
step; after ~800 steps it is subnormal (below 1.2e-38), and then it never
reaches 0: 0.9 x the smallest subnormal rounds back to itself. x86 CPUs compute
on subnormals ~15-100x slower: measured here, one Adam step over the reference
network's parameters took 1.1 ms instead of 0.07 ms once the momenta had
decayed, about 5% of a training step. TensorFlow runs its CPU kernels with
flush-to-zero for the same reason. The flush is a plain comparison, identical
in both builds.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._build import helper

__all__ = ["adam_update", "sgd_update"]

#: The smallest normal float32; state values below it are flushed to 0.
TINY = 1.1754943508222875e-38


@helper
def flush(x, tiny):
    """x, or 0 if |x| is below the smallest normal float32 (a subnormal).

    The zero is ``x - x``, of x's own type (NaN stays NaN). ``x * 0`` would be
    float64 -- Numba types float32 * int as float64 (docs/numba-facts.md) -- and
    that promotion made the whole Adam loop 4x slower (0.16 vs 0.04 ms for the
    reference network's 122,570 parameters on one core).
    """
    return x if abs(x) >= tiny else x - x


def adam_update(p, g, m, v, alpha, beta1, beta2, eps):
    """Keras's Adam: m += (g-m)(1-b1); v += (g²-v)(1-b2); p -= alpha*m/(sqrt(v)+eps).

    ``alpha`` = lr * sqrt(1 - beta2**t) / (1 - beta1**t), computed by the caller.
    """
    one = p.dtype.type(1)
    tiny = p.dtype.type(TINY)
    # PARALLEL: element-wise; each parameter's update reads and writes only its
    # own p[i], m[i], v[i].
    for i in prange(p.size):
        gi = g[i]
        mi = flush(m[i] + (gi - m[i]) * (one - beta1), tiny)
        vi = flush(v[i] + (gi * gi - v[i]) * (one - beta2), tiny)
        m[i] = mi
        v[i] = vi
        p[i] -= alpha * mi / (np.sqrt(vi) + eps)


def sgd_update(p, g, vel, lr, momentum, weight_decay):
    """SGD with momentum (Keras form) and L2 weight decay added to the gradient.

    g' = g + weight_decay * p; vel = momentum * vel - lr * g'; p += vel.
    """
    tiny = p.dtype.type(TINY)
    # PARALLEL: element-wise, as above.
    for i in prange(p.size):
        gi = g[i] + weight_decay * p[i]
        vel[i] = flush(momentum * vel[i] - lr * gi, tiny)
        p[i] += vel[i]
