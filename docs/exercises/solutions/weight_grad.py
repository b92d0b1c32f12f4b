"""Solution to exercise 1 (docs/exercises/weight_grad.py): split the rows of dW.

Each thread owns whole rows dw[i, :] and sums the batch for them in the fixed
order n = 0, 1, ..., N-1: no two threads write the same element, and the order
of the additions does not depend on the thread count.
"""

from numba import njit, prange


@njit(parallel=True, cache=True)
def weight_grad(x, dy, dw):
    N, I = x.shape
    O = dy.shape[1]
    for i in prange(I):  # thread-owned rows of dw
        for o in range(O):
            dw[i, o] = 0
        for n in range(N):
            for o in range(O):
                dw[i, o] += x[n, i] * dy[n, o]
