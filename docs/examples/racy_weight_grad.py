"""A deliberately racy weight gradient next to two correct ones.

    python docs/examples/racy_weight_grad.py                # every thread of Numba's pool
    python docs/examples/racy_weight_grad.py --threads 1    # one thread: always right
    python docs/examples/racy_weight_grad.py --bits         # thread-count independence
    python docs/examples/racy_weight_grad.py --markdown > docs/results/racy.md

The weight gradient of a dense layer sums over the batch:
dW[i, o] = sum_n x[n, i] * dy[n, o]. Three ways to parallelize it:

1. ``racy``: ``prange`` over the batch ``n``. Every thread adds into *every*
   dW[i, o]. ``dW[i, o] += ...`` is a read, an add and a write; when two threads
   interleave them, one thread's addition is lost. Numba does not catch this:
   it recognizes reductions into scalars or whole arrays, not into elements.
2. ``own_rows``: ``prange`` over the input feature ``i``. Thread t computes the
   rows dW[i, :] it owns, summing the batch serially in order n = 0..N-1.
   No two threads write the same element; the result is bit-for-bit the same
   for any number of threads. (This is what kernels/dense.py does.)
3. ``chunk_partials``: ``prange`` over fixed chunks of the batch, each chunk
   summing into its own partial buffer, then the partials are added in chunk
   order. Also race-free and thread-count independent, because the chunks are
   fixed by the data size, not by the number of threads. (kernels/conv.py does
   this with one chunk per sample for the convolution weight gradient.)

The race only shows when two threads are inside the loop at the same moment
(or one is preempted between its read and its write), so how often it shows
depends on the machine and its load. To make it show reliably, every run gives
each thread a lot of work -- 2**20 samples x 64 features, 67 million
read-add-writes into only 64 elements, about 0.1 s -- and the demonstration
repeats the run R times and reports "wrong in k of R runs". All inputs are
1.0 (read-only broadcast views of a single 1.0, so a big N costs no memory;
they also keep the compiler from vectorizing the loop, which would shrink the
window between read and write): every product is exactly 1 and the right
answer is exactly N for every element (float32 counts exactly up to 2**24), so
any other value is a lost update, not rounding. On one thread the racy version
is always right -- nothing runs concurrently -- which is how a race passes
every test on a laptop and fails on a server.

``--bits`` runs the two correct versions on random data at the current thread
count and prints a fingerprint (SHA-256 prefix) of their results: the same
fingerprint at ``--threads 1`` and ``--threads 2``.

This file is teaching material: it is not part of the installed package, and
the test suite runs only its correct kernels and the racy one on one thread
(tests/test_docs.py); whether the racy kernel goes wrong on several threads
depends on timing, so no test asserts it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numba
import numpy as np
from numba import njit, prange

# No cache=True: the docs tests import this file under another module name, and a cached
# entry records the module it was compiled in (docs/numba-facts.md, "Compilation and the
# cache"): a later `python racy_weight_grad.py --bits` could not load it.


@njit(parallel=True)
def racy(x, dy, dw):
    N, I = x.shape
    O = dy.shape[1]
    dw[:] = 0
    for n in prange(N):  # WRONG: all threads add into all of dw -> lost updates
        for i in range(I):
            for o in range(O):
                dw[i, o] += x[n, i] * dy[n, o]


@njit(parallel=True)
def own_rows(x, dy, dw):
    N, I = x.shape
    O = dy.shape[1]
    for i in prange(I):  # each thread owns rows dw[i, :]
        for o in range(O):
            dw[i, o] = 0
        for n in range(N):  # fixed order: same result for any thread count
            for o in range(O):
                dw[i, o] += x[n, i] * dy[n, o]


CHUNK = 16  # samples per partial sum: fixed by the data, not by the thread count


@njit(parallel=True)
def chunk_partials(x, dy, partial, dw):
    N, I = x.shape
    O = dy.shape[1]
    n_chunks = partial.shape[0]
    for c in prange(n_chunks):  # each chunk owns partial[c]
        partial[c, :, :] = 0
        for n in range(c * CHUNK, min(N, (c + 1) * CHUNK)):
            for i in range(I):
                for o in range(O):
                    partial[c, i, o] += x[n, i] * dy[n, o]
    for i in prange(I):  # then sum the chunks, in chunk order
        for o in range(O):
            acc = partial[0, i, o]
            for c in range(1, n_chunks):
                acc += partial[c, i, o]
            dw[i, o] = acc


VERSIONS = ("racy", "own_rows", "chunk_partials")


def _call(name: str, x, dy, partial, dw) -> None:
    if name == "racy":
        racy(x, dy, dw)
    elif name == "own_rows":
        own_rows(x, dy, dw)
    else:
        chunk_partials(x, dy, partial, dw)


def run(n: int = 2**20, features: int = 64, outputs: int = 1, repeats: int = 20,
        versions: tuple[str, ...] = VERSIONS) -> dict:
    """Run each version ``repeats`` times on all-ones data; count the wrong results.

    Returns {version: {"wrong_runs", "repeats", "smallest_sum", "lost_updates"}};
    the right value of every dW element is exactly ``n``.
    """
    one = np.float32(1)
    x = np.broadcast_to(one, (n, features))  # read-only views, no memory
    dy = np.broadcast_to(one, (n, outputs))
    dw = np.empty((features, outputs), np.float32)
    partial = np.empty(((n + CHUNK - 1) // CHUNK, features, outputs), np.float32)
    results = {}
    for name in versions:
        _call(name, x, dy, partial, dw)  # compile (or load from cache) first
        wrong, low, lost = 0, float(n), 0.0
        for _ in range(repeats):
            _call(name, x, dy, partial, dw)
            wrong += int((dw != n).any())
            low = min(low, float(dw.min()))
            lost += float((n - dw.astype(np.float64)).sum())
        results[name] = {"wrong_runs": wrong, "repeats": repeats, "smallest_sum": low,
                         "lost_updates": lost}
    return results


def fingerprints(n: int = 1000, features: int = 64, outputs: int = 10) -> dict[str, str]:
    """SHA-256 prefixes of the correct versions' results on fixed random data."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, features), dtype=np.float32)
    dy = rng.standard_normal((n, outputs), dtype=np.float32)
    partial = np.empty(((n + CHUNK - 1) // CHUNK, features, outputs), np.float32)
    out = {}
    for name in ("own_rows", "chunk_partials"):
        dw = np.empty((features, outputs), np.float32)
        _call(name, x, dy, partial, dw)
        out[name] = hashlib.sha256(dw.tobytes()).hexdigest()[:16]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS,
                   help="Numba threads (at most NUMBA_NUM_THREADS, default: all cores)")
    p.add_argument("--repeats", type=int, default=20, help="runs per version")
    p.add_argument("--samples", type=int, default=2**20, help="batch size N (<= 2**24)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--bits", action="store_true",
                   help="print fingerprints of the correct versions on random data instead")
    args = p.parse_args()
    if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
        p.error(f"--threads must be 1..{numba.config.NUMBA_NUM_THREADS}; for more, set "
                f"NUMBA_NUM_THREADS={args.threads} in the environment")
    if not 1 <= args.samples <= 2**24:
        p.error("--samples must be 1..2**24 (float32 counts exactly up to 2**24)")
    numba.set_num_threads(args.threads)
    if args.bits:
        for name, digest in fingerprints().items():
            print(f"{numba.get_num_threads()} thread(s)  {name:>15}: {digest}")
        return
    threads = numba.get_num_threads()
    results = run(n=args.samples, repeats=args.repeats)
    if args.markdown:
        cmd = "python docs/examples/racy_weight_grad.py " + " ".join(sys.argv[1:])
        print(f"`{cmd.strip()}` on {threads} Numba thread(s), {os.cpu_count()} cores; "
              f"every dW element should be exactly {args.samples:,}.\n")
        print("| version | wrong runs | smallest dW element | additions lost in all |")
        print("|---|---:|---:|---:|")
        for name, r in results.items():
            print(f"| `{name}` | {r['wrong_runs']} of {r['repeats']} | "
                  f"{r['smallest_sum']:,.0f} | {r['lost_updates']:,.0f} |")
        return
    print(f"{threads} Numba thread(s); every dW element should be exactly {args.samples}")
    for name, r in results.items():
        print(f"{name:>15}: wrong in {r['wrong_runs']:>3} of {r['repeats']} runs; smallest "
              f"element {r['smallest_sum']:.0f}; {r['lost_updates']:.0f} additions lost in all")

if __name__ == "__main__":
    main()
