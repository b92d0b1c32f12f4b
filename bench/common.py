"""Shared benchmark helpers: the best of repeated timings, the machine's float32 GEMM peak,
a machine summary, the arguments of the one-thread micro-benchmarks, and writing a report
(JSON + Markdown)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits


def best_seconds(fn, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``fn()``, after one untimed call (JIT
    compile, cache and page warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_gemm_gflops(size: int, repeats: int) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    return 2 * size**3 / best_seconds(lambda: np.dot(a, b, out=c), repeats) / 1e9


def gemm_peak(size: int = 2048, repeats: int = 5) -> dict:
    """Best float32 GEMM GFLOP/s of NumPy's BLAS on 1 thread and on all cores.

    This is the practical ceiling for any float32 kernel on this machine: the
    fractions of peak in the reports are relative to it.
    """
    cores = os.cpu_count() or 1
    with threadpool_limits(limits=1, user_api="blas"):
        one = _best_gemm_gflops(size, repeats)
    with threadpool_limits(limits=cores, user_api="blas"):
        every = _best_gemm_gflops(size, repeats)
    return {"size": size, "one_thread_gflops": one, "all_threads": cores,
            "all_threads_gflops": every}


def machine_summary() -> dict:
    """CPU, cores, library versions and Numba's threading layer, for report headers."""
    import numba

    from scratchcnn.runinfo import cpu_model, versions

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = numba.config.THREADING_LAYER
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "threading_layer": layer,
            **versions()}


def micro_bench_parser(prog: str, doc: str, name: str,
                       repeats_help: str) -> argparse.ArgumentParser:
    """The arguments every one-thread micro-benchmark takes (``bench/numba_gemm.py``,
    ``bench/winograd.py``): ``--repeats`` (the best counts), ``--gemm-size`` (the peak
    probe) and ``--out`` (default ``docs/results/<name>``); a script adds its own, then
    parses with ``parse_micro_bench``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument("--repeats", type=int, default=50, help=repeats_help)
    p.add_argument("--gemm-size", type=int, default=2048, help="size of the peak probe")
    p.add_argument("--out", type=Path, default=Path("docs/results") / name,
                   help=f"folder for {name}.json and {name}.md")
    return p


def parse_micro_bench(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``micro_bench_parser``'s arguments; a count below 1 is a usage error."""
    a = p.parse_args(argv)
    if a.repeats < 1 or a.gemm_size < 1:
        p.error("--repeats and --gemm-size must be at least 1")
    return a


def write_report(out: Path, name: str, data, md: str) -> None:
    """``out/<name>.json`` (``data``; objects JSON cannot hold as their ``str``) and
    ``out/<name>.md`` (``md``), the folder created if needed; then prints the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(md)
    print(md)
