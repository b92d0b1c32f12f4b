"""What happens when the *summed* loop of a convolution is split instead of an output axis.

    python docs/examples/split_channel_loop.py

``conv_split_c`` is kernels/conv.py's direct loop nest with the ``prange`` moved
from the (sample, output channel) loop to the input-channel loop ``c``, whose
iterations all add into the same accumulator ``acc``. Numba recognizes
``acc += ...`` on a scalar as a *reduction*: each thread sums its share of the
channels into a private copy of ``acc`` and the copies are added at the end.
So the result is right up to rounding -- no race -- but

* the order of the additions depends on how many threads share the channels,
  so the bits of the result change with the thread count;
* a parallel region (wake the threads, split, combine, wait) starts for every
  output pixel, N*F*OH*OW times, each doing only C*KH*KW multiply-adds: the
  parallel version is much slower than the serial one.

Written with plain threads, OpenMP without a ``reduction`` clause, or CUDA,
the same split would be a race on ``acc``. Teaching material, not installed.
"""

from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def conv_split_c(x, w, b, out):
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    for n in range(N):
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    acc = b[f]
                    for c in prange(C):  # split the summed loop: a reduction into acc
                        for ki in range(KH):
                            for kj in range(KW):
                                acc += x[n, c, i + ki, j + kj] * w[f, c, ki, kj]
                    out[n, f, i, j] = acc


def main() -> None:
    from scratchcnn.kernels import parallel

    rng = np.random.default_rng(0)  # the reference network's conv2 at batch 4
    x = rng.standard_normal((4, 32, 15, 15), dtype=np.float32)
    w = rng.standard_normal((64, 32, 3, 3), dtype=np.float32)
    b = np.zeros(64, np.float32)
    results = {}
    for label, fn in (("split c (reduction)", lambda o: conv_split_c(x, w, b, o)),
                      ("split (n, f) (project)",
                       lambda o: parallel.conv2d_forward_direct(x, w, b, 1, 1, 0, 0, o))):
        for t in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(t)
            out = np.empty((4, 64, 13, 13), np.float32)
            fn(out)  # compile or load from the cache
            t0 = time.perf_counter()
            fn(out)
            ms = 1e3 * (time.perf_counter() - t0)
            results[label, t] = out
            print(f"{label:>24}, {t} thread(s): {ms:8.2f} ms")
        same = results[label, 1].tobytes() == results[label, t].tobytes()
        print(f"{label:>24}: same bits on 1 and {t} threads: {same}")
    ref = results["split (n, f) (project)", 1]
    for t in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
        d = np.abs(results["split c (reduction)", t] - ref)
        print(f"split c on {t} thread(s) vs the project's kernel: largest difference "
              f"{d.max():.3g} (|out| up to {np.abs(ref).max():.3g}), "
              f"{np.count_nonzero(d)} of {d.size} outputs differ in some bit")


if __name__ == "__main__":
    main()
