"""Exercise 1: make the weight gradient race-free (your file: edit it).

    SCRATCHCNN_EXERCISE=1 python -m pytest -q tests/test_exercises.py   # red now, green when fixed

When done, ``git checkout -- docs/exercises/`` before running the full test
suite: it checks that this file is still the (failing) skeleton.

dW[i, o] = sum over the batch n of x[n, i] * dy[n, o]. The kernel below splits
the batch loop ``n`` over threads, and every thread adds into every element of
``dw``: a data race (see docs/guide.md, section 2). Keep it parallel (a
``prange``), make it give the exact answer on any number of threads, and make
its bits the same at 1 and at 2 threads. The test feeds integer-valued data, so
the exact answer is known and a lost update cannot hide behind rounding.
"""

from numba import njit, prange


@njit(parallel=True, cache=True)
def weight_grad(x, dy, dw):
    N, I = x.shape
    O = dy.shape[1]
    dw[:] = 0
    for n in prange(N):  # TODO: this splits the sum; which loop owns its output?
        for i in range(I):
            for o in range(O):
                dw[i, o] += x[n, i] * dy[n, o]
