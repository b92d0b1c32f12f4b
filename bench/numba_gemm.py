"""Could the convolutions' matrix products be written in Numba instead of calling BLAS?

    python bench/numba_gemm.py --out docs/results/numba_gemm

Why ask: a third to a half of a training step is the data movement around the
BLAS products (``bench/products.py``): the patch matrices written by
``im2row``, read back and folded by ``row2im``. An *implicit GEMM* builds each
tile of patches inside the product's own loops and never writes the patch
matrix -- but BLAS takes whole matrices, so that product would have to be our
own code. This benchmark measures what our own product reaches, one thread,
at the shapes of the reference network's products (batch 32, the sample groups
of the CPU plans), next to the BLAS call the kernels make now (``np.dot``):

* **loop**: the plain i-k-j loop nest; its innermost loop runs along a row of
  ``B`` and of ``C``, which the compiler vectorizes;
* **blocked**: a 4 x 32 register-blocking micro-kernel, the shape of what
  optimized BLAS libraries do (a 4 x 32 tile of ``C`` accumulated over the whole
  ``K``; four broadcast values of ``A`` per step of ``k``). Written as plain
  loops, it depends on the compiler keeping the tile in registers.

Both are compiled with ``fastmath={"contract"}`` (fused multiply-adds allowed,
nothing reassociated: each sum still runs in ``k`` order), which only helps
them. Each product is checked against ``np.dot`` (max absolute difference).
GFLOP/s from the best of ``--repeats`` calls, as a % of the one-thread GEMM peak
(``bench/common.py``) measured in the same run. Writes ``numba_gemm.json`` and
``numba_gemm.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    best_seconds,
    gemm_peak,
    machine_summary,
    micro_bench_parser,
    parse_micro_bench,
    write_report,
)
from numba import njit  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

PROG = "python bench/numba_gemm.py"

#: (name, M, K, N) of C (M, N) = A (M, K) @ B (K, N): the reference network's
#: convolution products at batch 32, as the CPU kernels call them (conv1: one sample
#: per product, patches as columns; conv2: groups of 4 samples, conv3: of 8, patches
#: as rows; the bias folded in as one more K).
SHAPES = [
    ("conv1 forward", 32, 28, 900),
    ("conv1 weight gradient", 32, 900, 28),
    ("conv2 forward", 676, 289, 64),
    ("conv2 weight gradient", 64, 676, 289),
    ("conv2 input gradient", 676, 64, 288),
    ("conv3 forward", 128, 577, 64),
]

_FM = {"contract"}  # FMA allowed; no reassociation


@njit(fastmath=_FM, nogil=True, cache=True)
def product_loop(a, b, c):
    """c = a @ b, the plain i-k-j loop nest (innermost: along rows of b and c)."""
    M, K = a.shape
    N = b.shape[1]
    for i in range(M):
        ci = c[i]
        for j in range(N):
            ci[j] = 0
        for k in range(K):
            aik = a[i, k]
            bk = b[k]
            for j in range(N):
                ci[j] += aik * bk[j]


@njit(fastmath=_FM, nogil=True, cache=True)
def _tile_4x32(a, b, c, i0, j0):
    """c[i0:i0+4, j0:j0+32] = a[i0:i0+4] @ b[:, j0:j0+32], the tile in one local array."""
    K = a.shape[1]
    acc = np.zeros((4, 32), np.float32)
    for k in range(K):
        a0, a1, a2, a3 = a[i0, k], a[i0 + 1, k], a[i0 + 2, k], a[i0 + 3, k]
        bk = b[k]
        for j in range(32):
            v = bk[j0 + j]
            acc[0, j] += a0 * v
            acc[1, j] += a1 * v
            acc[2, j] += a2 * v
            acc[3, j] += a3 * v
    for r in range(4):
        for j in range(32):
            c[i0 + r, j0 + j] = acc[r, j]


@njit(fastmath=_FM, nogil=True, cache=True)
def product_blocked(a, b, c):
    """c = a @ b: whole 4 x 32 tiles by ``_tile_4x32``, the edges by the plain loop."""
    M, K = a.shape
    N = b.shape[1]
    M4, N32 = M - M % 4, N - N % 32
    for i0 in range(0, M4, 4):
        for j0 in range(0, N32, 32):
            _tile_4x32(a, b, c, i0, j0)
    for i in range(M):  # the edges: columns N32.. of every row, rows M4.. of the rest
        j_from = 0 if i >= M4 else N32
        for j in range(j_from, N):
            c[i, j] = 0
        for k in range(K):
            aik = a[i, k]
            for j in range(j_from, N):
                c[i, j] += aik * b[k, j]


def measure(repeats: int, shapes=SHAPES) -> list[dict]:
    """One row per product shape: GFLOP/s of BLAS and of each Numba product, and the
    largest difference of each Numba product from BLAS's result."""
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for name, M, K, N in shapes:
            a = rng.standard_normal((M, K), dtype=np.float32)
            b = rng.standard_normal((K, N), dtype=np.float32)
            ref = np.empty((M, N), np.float32)
            flops = 2 * M * K * N
            row = {"product": name, "M": M, "K": K, "N": N, "gflops": {}, "max_abs_diff": {}}
            blas = partial(np.dot, a, b, ref)
            row["gflops"]["blas"] = flops / best_seconds(blas, repeats) / 1e9
            for label, fn in (("loop", product_loop), ("blocked", product_blocked)):
                c = np.full((M, N), np.nan, np.float32)
                row["gflops"][label] = flops / best_seconds(partial(fn, a, b, c), repeats) / 1e9
                row["max_abs_diff"][label] = float(np.abs(c - ref).max())
            rows.append(row)
    return rows


def summarize(rows: list[dict], one_thread_gflops: float) -> dict:
    """The report's figures as % of the one-thread peak: the best Numba product, the
    slowest and fastest BLAS call, and whether BLAS beat both Numba products at every
    shape."""
    def pct(v: float) -> float:
        return 100 * v / one_thread_gflops

    own = [max(v for k, v in r["gflops"].items() if k != "blas") for r in rows]
    blas = [r["gflops"]["blas"] for r in rows]
    return {"best_numba_percent": pct(max(own)), "blas_percent_min": pct(min(blas)),
            "blas_percent_max": pct(max(blas)),
            "blas_faster_everywhere": all(o < b for o, b in zip(own, blas))}


def report(rows: list[dict], peak: dict, command: str, machine: dict) -> str:
    """The Markdown table: GFLOP/s and % of the one-thread peak per product and kernel."""
    one = peak["one_thread_gflops"]
    kinds = list(rows[0]["gflops"])
    lines = [
        "### Our own matrix product in Numba vs BLAS",
        "",
        f"`{command}`",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} cores, Numba "
        f"{machine.get('numba', '?')}, NumPy {machine.get('numpy', '?')}; float32 GEMM peak "
        f"(NumPy's BLAS, {peak['size']}², one thread): {one:.0f} GFLOP/s. One thread; best of "
        "the repeats; GFLOP/s (% of the peak).",
        "",
        "| product | M × K × N | " + " | ".join(kinds) + " | largest difference from BLAS |",
        "|---|---|" + "---:|" * len(kinds) + "---|",
    ]
    for r in rows:
        cells = [f"{r['gflops'][k]:.1f} ({100 * r['gflops'][k] / one:.0f}%)" for k in kinds]
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_diff"].items())
        lines.append(f"| {r['product']} | {r['M']} × {r['K']} × {r['N']} | "
                     + " | ".join(cells) + f" | {diffs} |")
    sm = summarize(rows, one)
    lines += [
        "",
        f"The faster Numba product reaches at most **{sm['best_numba_percent']:.0f}%** of the "
        f"peak at these shapes; the BLAS calls reach {sm['blas_percent_min']:.0f}–"
        f"{sm['blas_percent_max']:.0f}%.",
    ]
    if sm["blas_faster_everywhere"]:
        lines[-1] += (" BLAS is faster at every shape. Written as plain loops (no intrinsics), "
                      "our product loses more time than the patch matrices it would save (the "
                      "README's \"Products or glue?\"): the products stay in BLAS, and the "
                      "patches stay materialized.")
    else:
        lines[-1] += (" At some shape a Numba product is as fast as BLAS: there an implicit "
                      "GEMM (no patch matrices) may pay.")
    lines.append("")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = micro_bench_parser(PROG, __doc__, "numba_gemm", "calls per product; the best counts")
    return parse_micro_bench(p, argv)


def main(argv: list[str] | None = None) -> None:
    a = _parse(argv)
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    peak = gemm_peak(a.gemm_size)
    rows = measure(a.repeats)
    for r in rows:  # what the report prints, for the docs' figure markers
        r["peak_percent"] = {k: 100 * v / peak["one_thread_gflops"] for k, v in r["gflops"].items()}
    summary = summarize(rows, peak["one_thread_gflops"])
    machine = machine_summary()
    md = report(rows, peak, command, machine)
    write_report(a.out, "numba_gemm", {"command": command, "machine": machine,
                                       "gemm_peak": peak, "summary": summary, "rows": rows}, md)


if __name__ == "__main__":
    main()
