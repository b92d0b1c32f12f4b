"""Fill Numba's cache with the training kernels, several at a time: ``python -m scratchcnn.warmup``.

    python -m scratchcnn.warmup                      # the parallel backend, one process per core
    python -m scratchcnn.warmup --backend serial --jobs 1

A cold Numba cache costs every kernel's compilation on the first training run
(tens of seconds, see bench/startup.py); a warm one only loads machine code
(about a second). This module fills the cache for what one training step of
the reference network uses on one backend -- nothing else:

1. **Which kernels, with which types.** A *dry* pass runs ``loop.warm_up``
   (one forward and backward pass on zero images, the optimizer)
   with every kernel of the backend replaced by a recorder that notes its
   argument types (``numba.typeof``) and does no arithmetic. That gives the
   exact (kernel, signature) pairs a step calls, plus the data loader's kernels:
   nothing is compiled for a layer or a backend the run does not use.
2. **Compiled in parallel processes.** ``--jobs`` worker processes (default: the
   cores other processes leave free, measured over a tenth of a second) are
   spawned (no OpenMP state is forked) at once; each runs the dry pass itself
   and takes its share of ``deal`` (the same in every worker): biggest first to
   the lightest share, so the two convolution kernels (every convolution runs
   through the conv + ReLU + pool pair: ``kernels/plans.py``) go to different
   workers. Each compiles what the
   cache lacks with ``dispatcher.compile(signature)``, which writes the machine
   code into the on-disk cache (``NUMBA_CACHE_DIR`` if set). A progress bar
   counts kernels. The workers run LLVM at ``NUMBA_OPT=2`` (``WORKER_OPT``)
   unless the environment sets ``NUMBA_OPT``, with ``scratchcnn.lazy_llvm``
   on (each parallel kernel's machine code made once); see there.
3. The caller then loads everything from the cache (``loop.warm_up``).

``begin_start`` is what ``python -m scratchcnn.train`` calls first thing, so
that its data loads while the workers compile; it says what it is doing when
something must be compiled, and does nothing when a note it left in the cache
folder (the kernel names of the last dry pass) finds an index file for every
one of them: a warm start runs nothing extra. With ``--cold-start
serial-first`` it compiles the serial kernels first, and the parallel ones
follow in the background while training runs on the serial ones
(``CompileJobs.ready``).

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


#: Rough compile seconds per kernel, for dealing the kernels out evenly; unlisted kernels
#: count DEFAULT_COST. Every convolution runs through the two conv + ReLU + pool kernels
#: (kernels/plans.py), the two biggest compiles by far. Only their order and rough ratio
#: matter: the final code's cold-jobs step (bench/startup.py, "per_kernel_in_worker" in
#: docs/results/startup/startup.json) measured 4.3 s, 3.0 s and 0.2-0.6 s for the others;
#: hints set to those figures deal 2 workers other small kernels and compiled no faster
#: (7.1, 7.7, 6.4 s against 7.0, 6.9, 6.5 s, interleaved), so these stay.
COST_HINT = {"conv2d_relu_pool_forward": 5.3, "conv2d_relu_pool_backward": 4.3}
DEFAULT_COST = 0.45


def deal(sigs: list[tuple[str, tuple]], jobs: int) -> list[list[tuple[str, tuple]]]:
    """``sigs`` split into ``jobs`` shares of about equal compile time: biggest first, each
    to the lightest share. Deterministic, so every worker computes the same shares from
    the same list."""
    def cost(p: tuple[str, tuple]) -> float:
        return COST_HINT.get(p[0], DEFAULT_COST)

    shares: list[list[tuple[str, tuple]]] = [[] for _ in range(max(1, jobs))]
    load = [0.0] * len(shares)
    for p in sorted(sigs, key=cost, reverse=True):  # stable: ties keep first-call order
        i = load.index(min(load))
        shares[i].append(p)
        load[i] += cost(p)
    return shares


def _compile_share(backend: str, threads: int, index: int, jobs: int, queue) -> None:
    """Worker process ``index`` of ``jobs``: the dry pass (each worker runs it: no wait for
    the caller's), then its share of ``deal`` -- what the cache lacks is compiled into it.
    Reports ("total", n) and ("names", kernel names) (worker 0 only), then ("done", name,
    seconds, compiled) per kernel, then None."""
    from scratchcnn.lazy_llvm import defer_helpers, enable_from_env
    from scratchcnn.threads import configure_threads

    configure_threads(threads)
    from scratchcnn.kernels import get_backend
    from scratchcnn.kernels._build import HELPERS

    if enable_from_env(default=True):  # each kernel's machine code once (see there)
        defer_helpers(HELPERS)  # this process never calls a helper from Python

    ns = get_backend(backend)
    sigs = kernel_signatures(backend, loader=True)
    if index == 0:
        queue.put(("total", len(sigs)))
        queue.put(("names", sorted({n for n, _ in sigs if not n.startswith("loader:")})))
    for name, sig in deal(sigs, jobs)[index]:
        t0 = time.perf_counter()
        if name.startswith("loader:"):
            from scratchcnn.data.augment import warm_up

            warm_up()
            compiled = True
        else:
            compiled = not _cached(backend, name, sig)
            if compiled:
                getattr(ns, name).compile(sig)
        queue.put(("done", name, time.perf_counter() - t0, compiled))
    queue.put(None)


class CompileJobs:
    """Worker processes filling the cache with one backend's step kernels; started at
    once, so that the caller can load its data meanwhile, then ``finish()``-ed."""

    def __init__(self, backend: str, jobs: int | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        import multiprocessing as mp

        import numba

        self.backend = backend
        self.t0 = time.perf_counter()
        self.jobs = max(1, jobs or free_cores(window=0.1))  # 10 clock ticks a core: enough
        self.result = {"kernels": 0, "missing": 0, "per_kernel": {}, "jobs": self.jobs,
                       "seconds": 0.0}
        self.names: list[str] | None = None
        self.running = self.jobs
        self.finished = False
        if say:
            say(f"compiling the {backend} backend's kernels into Numba's cache "
                f"({os.environ.get('NUMBA_CACHE_DIR') or 'next to the sources'}) in "
                f"{self.jobs} process(es); once per machine and Numba version, then cached")
        ctx = mp.get_context("spawn")
        self.queue = ctx.Queue()
        threads = numba.get_num_threads()
        self.procs = [ctx.Process(target=_compile_share,
                                  args=(backend, threads, i, self.jobs, self.queue), daemon=True)
                      for i in range(self.jobs)]
        with _worker_environment():
            for p in self.procs:
                p.start()

    def _take(self, item, bar=None) -> None:
        """Book one message of a worker (see ``_compile_share``)."""
        r = self.result
        if item is None:
            self.running -= 1
        elif item[0] == "names":
            self.names = item[1]
        elif item[0] == "total":
            r["kernels"] = item[1]
            if bar is not None:
                bar.total = item[1]
                bar.refresh()
        else:
            _, name, seconds, compiled = item
            r["missing"] += compiled
            r["per_kernel"][name] = r["per_kernel"].get(name, 0.0) + seconds
            if bar is not None:
                bar.set_postfix_str(name, refresh=False)
                bar.update(1)

    def _done(self) -> dict:
        for p in self.procs:
            p.join()
        bad = [p.exitcode for p in self.procs if p.exitcode]
        if bad:
            raise RuntimeError(f"a compile worker of the {self.backend} kernels failed (exit "
                               f"codes {bad})")
        if self.names:
            try:
                _manifest(self.backend).parent.mkdir(parents=True, exist_ok=True)
                _manifest(self.backend).write_text("\n".join(self.names) + "\n")
            except OSError:
                pass  # a read-only cache: no note, the workers run every cold-looking time
        self.result["seconds"] = time.perf_counter() - self.t0
        self.finished = True
        return self.result

    def finish(self, progress: bool = True) -> dict:
        """Wait for the workers (a progress bar counts kernels); leave the manifest note.
        Returns ``kernels`` (signatures of a step, loader included), ``missing`` (how many
        were compiled), ``jobs``, ``seconds`` (since the start), ``per_kernel`` {name:
        seconds in its worker}."""
        from tqdm import tqdm

        if self.finished:
            return self.result
        bar = tqdm(total=self.result["kernels"] or None, desc="compiling kernels",
                   unit="kernel", leave=False, disable=not progress or None)
        try:
            while self.running:
                self._take(self.queue.get(), bar)
        finally:
            bar.close()
        return self._done()

    def ready(self) -> bool:
        """Without blocking: whether every worker has finished (raises if one failed).
        Cheap enough to ask after every training step."""
        import queue

        if self.finished:
            return True
        try:
            while self.running:
                self._take(self.queue.get_nowait())
        except queue.Empty:
            return False
        self._done()
        return True

    def stop(self) -> None:
        """Kill the workers still running (the cache keeps what they finished: Numba
        writes each kernel's files whole)."""
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join()
        self.finished = True


def compile_missing(backend: str, jobs: int | None = None, *, progress: bool = True,
                    say: Callable[[str], None] | None = None) -> dict:
    """Compile into the cache whatever one training step on ``backend`` needs (loader
    kernels included) and the cache lacks, in ``jobs`` processes (default: the free
    cores). Returns ``CompileJobs.finish``'s summary."""
    return CompileJobs(backend, jobs, say).finish(progress)


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


def begin_compile(backend: str, say: Callable[[str], None] = print) -> CompileJobs | None:
    """Start filling the cache for ``backend`` if it looks cold (saying so); None if there
    is nothing to do (warm, the cuda backend, caching off). ``finish()`` the result."""
    if backend not in ("serial", "parallel") or os.environ.get("NUMBA_DISABLE_JIT") == "1":
        return None
    if _looks_warm(backend):
        return None
    return CompileJobs(backend, say=say)


def ensure_compiled(backend: str, say: Callable[[str], None] = print,
                    progress: bool = True) -> dict | None:
    """``begin_compile`` and wait: fill the cache in parallel processes if it is cold,
    else return quickly. None when there was nothing to do."""
    jobs = begin_compile(backend, say)
    return None if jobs is None else jobs.finish(progress)


def begin_start(backend: str, serial_first: bool, say: Callable[[str], None] = print
                ) -> tuple[CompileJobs | None, bool]:
    """What the training CLI starts first thing, before loading its data: the compile
    workers of ``backend`` if its cache looks cold -- or, for a *serial-first* start of
    the parallel backend, those of the serial backend (compiled about 1.4x as fast: no
    ``prange`` lowering), the parallel kernels to follow in another ``CompileJobs``
    while training runs on the serial ones. Returns (workers or None, serial first?)."""
    if (backend == "parallel" and serial_first and os.environ.get("NUMBA_DISABLE_JIT") != "1"
            and not _looks_warm("parallel")):
        return begin_compile("serial", say), True
    return begin_compile(backend, say), False


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
