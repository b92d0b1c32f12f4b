"""Exercise 9 (CUDA): a block reduction (your file: edit it). No GPU needed:

    SCRATCHCNN_EXERCISE=1 NUMBA_ENABLE_CUDASIM=1 \
        python -m pytest -q tests/cuda/test_exercise_block_sum.py   # red now, green when fixed

When done, ``git checkout -- docs/exercises/`` before running the full test
suite: it checks that this file is still the (failing) skeleton.

``block_sum[blocks, TPB](x, out)`` must add all of ``x`` into ``out[0]``. Each
block loads TPB values into shared memory; the block's threads should then add
them pairwise in log2(TPB) steps (s[i] += s[i + half], with a
``cuda.syncthreads()`` after every step), and thread 0 adds the block's total
to ``out[0]`` with ONE atomic addition. The skeleton skips the tree: thread 0
adds only its own value. See docs/guide.md, section 6, and the picture there.
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
    # TODO: the tree reduction of s[0:TPB] into s[0] goes here
    if t == 0:
        cuda.atomic.add(out, 0, s[0])
