"""Solution to exercise 9 (docs/exercises/block_sum.py): a tree in shared memory.

In step k the first half of the still-active threads add the second half's
values to their own; after log2(TPB) steps s[0] holds the block's sum. The
syncthreads after each step makes every write visible before the next read.
One atomic addition per block, not one per element.
"""

from numba import cuda, float32

TPB = 32  # threads per block, a power of two


@cuda.jit
def block_sum(x, out):
    s = cuda.shared.array(TPB, float32)
    t = cuda.threadIdx.x
    i = cuda.blockIdx.x * TPB + t
    s[t] = x[i] if i < x.shape[0] else float32(0)
    cuda.syncthreads()
    half = TPB // 2
    while half > 0:
        if t < half:
            s[t] += s[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        cuda.atomic.add(out, 0, s[0])
