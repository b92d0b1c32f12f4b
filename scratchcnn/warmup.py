"""Fill Numba's cache with the training kernels, several at a time: ``python -m scratchcnn.warmup``.

    python -m scratchcnn.warmup                      # the parallel backend, one process per core
    python -m scratchcnn.warmup --backend serial --jobs 1

A cold Numba cache costs every kernel's compilation on the first training run
(tens of seconds, see bench/startup.py); a warm one only loads machine code
(about a second). This module fills the cache for what one training step of
the reference network uses on one backend -- nothing else:

1. **Which kernels, with which types.** A *dry* pass runs ``loop.warm_up``
   (one forward and backward pass on zero images, the optimizer, the loader)
   with every kernel of the backend replaced by a recorder that notes its
   argument types (``numba.typeof``) and does no arithmetic. That gives the
   exact (kernel, signature) pairs a step calls: nothing is compiled for a
   layer or a backend the run does not use.
2. **Compiled in parallel processes.** The pairs still missing from the cache
   are dealt to ``--jobs`` worker processes (default: the cores other
   processes leave free, measured over a quarter second), spawned (no OpenMP
   state is forked), biggest first, forward kernels in one share and
   backward kernels in the other (they share helpers); each compiles its
   share with ``dispatcher.compile(signature)``, which writes the machine
   code into the on-disk cache (``NUMBA_CACHE_DIR`` if set). A progress bar
   counts kernels. The workers run LLVM at ``NUMBA_OPT=2`` (``WORKER_OPT``)
   unless the environment sets ``NUMBA_OPT``; see there.
3. The caller then loads everything from the cache (``loop.warm_up``).

``ensure_compiled(backend)`` is what ``python -m scratchcnn.train`` calls before
its warm-up: it says what it is doing when something must be compiled, and
returns at once when a note it left in the cache folder (the kernel names of
the last dry pass) finds an index file for every one of them: a warm start runs
nothing extra. The loader's two small kernels are left to the warm-up (under a
second cold).

Compiling changes no bits: the same functions with the same flags are
compiled, only in another process (and at LLVM's level 2, which may not
reorder float arithmetic either).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PROG = "python -m scratchcnn.warmup"

#: ``NUMBA_OPT`` (LLVM's optimization level) of the compile workers when the environment
#: sets none: 2 instead of Numba's default 3. Measured with ``python bench/compile_profile.py
#: --step --repeats 4 --steps 300 --variant '' --variant NUMBA_OPT=2`` (2-core Xeon): the
#: cold compile of a step 9-17% shorter in each of 4 paired runs, the step time the same
#: (9.34 vs 9.39 ms), the weights after 300 steps bit-for-bit the same -- without
#: fast-math LLVM may not reorder float arithmetic at any level. Only what the workers
#: compile is affected: the caller's own Numba keeps its setting.
WORKER_OPT = "2"

#: Rough compile seconds per kernel measured cold (bench/startup.py, 2-core Xeon, under
#: load): used only to deal the biggest kernels out first.
_COST_HINT = {"conv2d_relu_pool_forward": 13, "conv2d_backward": 10, "conv2d_forward": 7,
              "conv2d_relu_pool_backward": 6}


def _typeof_args(args: tuple) -> tuple:
    import numba

    return tuple(numba.typeof(a) for a in args)


def kernel_signatures(backend: str, *, loader: bool = True) -> list[tuple[str, tuple]]:
    """(kernel name, argument types) of every kernel call of one warm-up training step,
    in first-call order, without compiling any backend kernel (loader kernels: see
    ``loader``). Runs on a throwaway model."""
    from scratchcnn.kernels import KERNEL_NAMES, get_backend
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam

    ns = get_backend(backend)
    seen: dict[tuple[str, tuple], None] = {}
    originals = {name: getattr(ns, name) for name in KERNEL_NAMES if hasattr(ns, name)}

    def recorder(name: str) -> Callable:
        def record(*args):
            seen.setdefault((name, _typeof_args(args)), None)
            return 0.0  # no arithmetic: the dry pass only needs the types
        return record

    try:
        for name in originals:
            setattr(ns, name, recorder(name))
        model = reference_cnn(seed=0, backend=backend)
        loss = SoftmaxCrossEntropy(backend=backend)
        opt = Adam(model.parameters(), backend=backend)
        import numpy as np

        with np.errstate(all="ignore"):
            from scratchcnn.loop import warm_up

            warm_up(model, loss, opt, loader=False)
    finally:
        for name, fn in originals.items():
            setattr(ns, name, fn)
    out = list(seen)
    if loader:
        out += [(f"loader:{n}", s) for n, s in loader_signatures()]
    return out


def loader_signatures() -> list[tuple[str, tuple]]:
    """The loader's kernels: compiled by ``scratchcnn.data.augment.warm_up`` (small)."""
    return [("warm_up", ())]


def _cached(backend: str, name: str, sig: tuple) -> bool:
    """Whether the on-disk cache already holds ``name`` for ``sig`` (loads it if so)."""
    from scratchcnn.kernels import get_backend

    if name.startswith("loader:"):
        return False
    disp = getattr(get_backend(backend), name)
    if sig in disp.overloads:
        return True
    cres = disp._cache.load_overload(sig, disp.targetctx)  # what a call would load
    if cres is None:
        return False
    disp.add_overload(cres)
    return True


def _compile_share(backend: str, threads: int, share: list[tuple[str, tuple]], queue) -> None:
    """Worker process: compile ``share`` into the cache, reporting each kernel done."""
    from scratchcnn.threads import configure_threads

    configure_threads(threads)
    from scratchcnn.kernels import get_backend

    ns = get_backend(backend)
    for name, sig in share:
        t0 = time.perf_counter()
        if name.startswith("loader:"):
            from scratchcnn.data.augment import warm_up

            warm_up()
        else:
            getattr(ns, name).compile(sig)
        queue.put((name, time.perf_counter() - t0))
    queue.put(None)


def compile_missing(backend: str, jobs: int | None = None, *, progress: bool = True,
                    loader: bool = True, say: Callable[[str], None] | None = None) -> dict:
    """Compile into the cache whatever one training step on ``backend`` needs and the
    cache lacks, in ``jobs`` processes (default: the cores). Returns a summary:
    ``missing`` (count), ``seconds``, ``per_kernel`` {name: seconds in its worker}."""
    import multiprocessing as mp

    import numba

    t0 = time.perf_counter()
    sigs = kernel_signatures(backend, loader=loader)
    missing = [(n, s) for n, s in sigs if not _cached(backend, n, s)]
    try:
        _manifest(backend).parent.mkdir(parents=True, exist_ok=True)
        names = sorted({n for n, _ in sigs if not n.startswith("loader:")})
        _manifest(backend).write_text("\n".join(names) + "\n")
    except OSError:
        pass  # a read-only cache: no note, the dry pass runs every time
    result = {"kernels": len(sigs), "missing": len(missing), "per_kernel": {},
              "jobs": 0, "seconds": 0.0}
    if not missing:
        result["seconds"] = time.perf_counter() - t0
        return result
    jobs = max(1, min(jobs or free_cores(), len(missing)))
    result["jobs"] = jobs
    if say:
        say(f"compiling {len(missing)} kernel(s) of the {backend} backend into Numba's cache "
            f"({os.environ.get('NUMBA_CACHE_DIR') or 'next to the sources'}) in {jobs} "
            f"process(es); once per machine and Numba version, then cached")
    order = sorted(missing, key=lambda p: -_COST_HINT.get(p[0], 1))
    # One job too runs in a worker: its import (~0.5 s) costs less than WORKER_OPT saves.
    shares = [order[i::jobs] for i in range(jobs)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    threads = numba.get_num_threads()
    procs = [ctx.Process(target=_compile_share, args=(backend, threads, share, queue),
                         daemon=True) for share in shares]
    with _worker_environment():
        for p in procs:
            p.start()
    from tqdm import tqdm

    bar = tqdm(total=len(missing), desc="compiling kernels", unit="kernel", leave=False,
               disable=not progress or None)
    running = len(procs)
    try:
        while running:
            item = queue.get()
            if item is None:
                running -= 1
                continue
            name, seconds = item
            result["per_kernel"][name] = result["per_kernel"].get(name, 0.0) + seconds
            bar.set_postfix_str(name, refresh=False)
            bar.update(1)
    finally:
        bar.close()
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise RuntimeError(f"a compile worker failed (exit codes {bad})")
    result["seconds"] = time.perf_counter() - t0
    return result


def free_cores(window: float = 0.25) -> int:
    """Cores not taken by other processes right now; at least 1.

    Measured over ``window`` seconds from the machine's busy CPU time (/proc/stat)
    less this process's own, as the thread governor does (``scratchcnn.threads``):
    the 1-minute load average lags, and a run started right after another job
    (a test run, the previous benchmark step) would see that job's load for a
    minute and compile on one core. Elsewhere (no /proc/stat) the load average.
    On a busy machine more compile processes than free cores only add their
    imports."""
    import time

    from scratchcnn.threads import _cpu_busy_seconds, other_processes_cores

    cores = os.cpu_count() or 1
    before, mine = _cpu_busy_seconds(), time.process_time()
    if before is not None:
        time.sleep(window)
        after, mine_after = _cpu_busy_seconds(), time.process_time()
        others = (None if after is None else
                  other_processes_cores(before, after, mine_after - mine, cores))
        if others is not None:
            return max(1, min(cores, int(cores - max(0.0, others) + 0.5)))
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


@contextmanager
def _worker_environment() -> Iterator[None]:
    """``NUMBA_OPT=WORKER_OPT`` in the environment that processes started inside inherit,
    unless it sets ``NUMBA_OPT`` already (then that level stays)."""
    if "NUMBA_OPT" in os.environ:
        yield
        return
    os.environ["NUMBA_OPT"] = WORKER_OPT
    try:
        yield
    finally:
        os.environ.pop("NUMBA_OPT", None)


def _manifest(backend: str):
    """A note in Numba's cache folder: the kernels one training step on ``backend`` uses
    (written after the dry pass found or compiled them all)."""
    from pathlib import Path

    from scratchcnn.kernels import get_backend

    cache_dir = Path(get_backend(backend).conv2d_forward._cache._cache_path)
    return cache_dir / f"scratchcnn-step-kernels-{backend}.txt"


def _looks_warm(backend: str) -> bool:
    """Whether the cache holds an index for every kernel the manifest lists: then the
    dry pass is skipped (nothing extra runs on a warm start; a kernel whose types
    changed since is still compiled, by the warm-up, in the old way)."""
    from pathlib import Path

    from scratchcnn.kernels import get_backend

    ns = get_backend(backend)
    try:
        names = _manifest(backend).read_text().split()
    except OSError:
        return False
    return bool(names) and all(
        hasattr(ns, n) and Path(getattr(ns, n)._cache._cache_file._index_path).exists()
        for n in names)


def ensure_compiled(backend: str, say: Callable[[str], None] = print,
                    progress: bool = True) -> dict | None:
    """What the training CLI runs before ``warm_up``: fill the cache in parallel
    processes if it is cold (saying so), else return quickly. None on the cuda backend
    (compiled by the driver) or when caching is off."""
    if backend not in ("serial", "parallel") or os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return None
    if _looks_warm(backend):
        return {"kernels": None, "missing": 0, "per_kernel": {}, "jobs": 0, "seconds": 0.0}
    return compile_missing(backend, progress=progress, say=say, loader=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["serial", "parallel", "both"], default="parallel")
    p.add_argument("--jobs", type=int, default=None,
                   help="compile processes (default: the cores other processes leave free)")
    p.add_argument("--threads", type=int, default=None,
                   help="Numba threads (as the training run will use; default: the cores)")
    args = p.parse_args(argv)
    from scratchcnn.threads import configure_threads, default_threads

    configure_threads(args.threads or default_threads())
    for backend in (("serial", "parallel") if args.backend == "both" else (args.backend,)):
        r = compile_missing(backend, args.jobs, say=lambda m: print(m, flush=True))
        print(f"{backend}: {r['kernels']} kernel signature(s), {r['missing']} compiled in "
              f"{r['jobs']} process(es), {r['seconds']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
