"""Thread-count set-up, which must happen before Numba is imported.

Numba fixes the size of its thread pool (``NUMBA_NUM_THREADS``, default: the
number of cores) when it is first imported; ``numba.set_num_threads`` can only
go below it. ``configure_threads(n)`` therefore raises the pool size in the
environment if Numba is not imported yet, then sets the thread count.

``adapt_threads(n, backend)`` (called by the training CLI right after) starts a
``ThreadGovernor``: the parallel backend's thread count then follows the cores
other processes leave free (docs/contention.md). ``SCRATCHCNN_ADAPT_THREADS=0``
turns it off.
"""

from __future__ import annotations

import os
import sys
import warnings


def default_threads() -> int:
    """The CLI's default ``--threads``: the cores this process may run on."""
    return os.cpu_count() or 1


def configure_threads(n: int) -> int:
    """Make Numba's parallel kernels use ``n`` threads; return ``n``.

    Works for any ``n`` >= 1 if called before anything imports Numba (the
    training CLI does so first thing). More threads than cores is allowed, with
    a warning: the threads then take turns on the cores.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be an integer >= 1, got {n!r}")
    if "numba" not in sys.modules:
        current = os.environ.get("NUMBA_NUM_THREADS")
        if current is None or not current.isdigit() or int(current) < n:
            os.environ["NUMBA_NUM_THREADS"] = str(n)
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(
            f"{n} threads requested but Numba was imported with NUMBA_NUM_THREADS={limit}; "
            f"set NUMBA_NUM_THREADS={n} in the environment (or call configure_threads "
            f"before importing numba)"
        )
    numba.set_num_threads(n)
    cores = os.cpu_count() or 1
    if n > cores:
        warnings.warn(f"{n} threads on {cores} cores: threads will share cores "
                      f"(expect no speedup beyond {cores})", stacklevel=2)
    return n


#: Most loader threads ``--loader-threads auto`` starts (the loader alone is no faster with
#: more: bench/loader.py).
AUTO_LOADER_LIMIT = 2


def auto_loader_threads(backend: str, threads: int, cores: int | None = None, *,
                        distributed: bool = False) -> int:
    """The training CLI's ``--loader-threads auto``: one loader thread for each core the
    compute threads leave free, at most ``AUTO_LOADER_LIMIT``; 0 (batches prepared in
    the training thread) when they take every core, and for ``distributed`` ranks (which
    share their node with the other ranks).

    Why: preparing a batch costs ~1/200 of a training step, but a loader thread needs a
    core to do it. With the parallel backend on every core it takes one from a compute
    thread, and the whole parallel region waits for that thread: on 2 cores a pool of 2
    loader threads made the epoch longer, without augmentation (9.4 -> 10.2 s) and with it
    (9.9 -> 10.1 s), where preparing each batch in the training thread waited for data
    1-3% of the epoch (the training rows of docs/results/loader, bench/loader.py; docs/guide.md
    section 4). Where a core is free (the serial and CUDA backends, fewer ``--threads``
    than cores) the pool overlaps loading with compute at no cost.
    """
    if distributed:
        return 0
    cores = cores or os.cpu_count() or 1
    compute = threads if backend == "parallel" else 1
    return max(0, min(AUTO_LOADER_LIMIT, cores - compute))


# -- adapting the thread count to the cores other processes leave free -------------------

#: Set to 0 to keep exactly ``--threads`` whatever else runs on the machine.
ADAPT_ENV = "SCRATCHCNN_ADAPT_THREADS"


def _cpu_busy_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def other_processes_cores(before: tuple[float, float], after: tuple[float, float],
                          mine_seconds: float, cores: int) -> float | None:
    """Cores' worth of CPU that *other* processes used between two ``_cpu_busy_seconds()``
    samples, given this process's own CPU seconds in between (``time.process_time()``
    difference: all its threads). None when no time passed between the samples."""
    wall = (after[1] - before[1]) / cores  # total is in CPU seconds of all cores
    if wall <= 0:
        return None
    return (after[0] - before[0] - mine_seconds) / wall


class ThreadGovernor:
    """Keeps the parallel backend's thread count at the cores other processes leave free.

    Why: a parallel region cuts its loop into one equal run per thread and waits for
    the slowest. With a busy neighbour on one of 2 cores, the thread sharing that core
    gets half of it, so every region takes twice as long as on a free core, while the
    waiting thread spins (libgomp's default wait policy) and competes for the cores too:
    the epoch took 3x as long (docs/contention.md). One thread on the free core is as
    fast as the serial backend; and because the kernels give the same bits at any thread
    count, the count may change between any two kernel calls without changing a result.

    How: a daemon thread reads the machine's busy CPU time (/proc/stat) every
    ``interval`` seconds and subtracts this process's own CPU time (all its threads:
    compute, spinning, loader): what is left is what *other* processes used. Each whole
    core they use beyond ``margin`` (0.25 core: shells, editors, daemons) takes one
    thread away; the count comes back one step at a time, after ``rise_after`` quiet
    samples in a row. Numba's thread count is a per-thread setting of the thread that
    launches the kernels, so the governor asks *that* thread to apply it: it sends it a
    signal (SIGUSR2) whose Python handler calls ``numba.set_num_threads``. Python runs
    handlers between bytecodes, so never inside a kernel.
    """

    def __init__(self, threads: int, *, interval: float = 0.5, margin: float = 0.25,
                 rise_after: int = 2, cores: int | None = None, owner=None) -> None:
        import signal
        import threading

        #: The frame of the function this governor serves (``adapt_threads``'s caller):
        #: once it is no longer on the main thread's stack, the governor stops itself (an
        #: in-process ``main()`` must not leave a governor behind; the thread count stays
        #: where it was last set).
        self._owner = owner
        self.max_threads, self.interval, self.margin = threads, interval, margin
        self.rise_after = rise_after
        self.cores = cores or os.cpu_count() or 1
        self.current = threads
        self.wanted = threads
        self.changes: list[tuple[float, int, float]] = []  # (time, threads, others' cores)
        self._quiet = 0
        self._stop = threading.Event()
        self._target = threading.get_ident()
        self._signal = signal.SIGUSR2
        self._previous = signal.signal(self._signal, self._apply)
        self._thread = threading.Thread(target=self._watch, name="thread-governor",
                                        daemon=True)
        self._thread.start()

    def _apply(self, signum, frame) -> None:  # runs in the launching (main) thread
        import numba

        if self._stop.is_set() or not self._on_stack(frame):
            return  # late: the run it served is over
        if self.wanted != numba.get_num_threads():
            numba.set_num_threads(self.wanted)
        self.current = self.wanted

    def decide(self, others: float) -> int:
        """The next thread count given the cores other processes used in the last sample."""
        free = self.cores - max(0.0, others - self.margin)
        fit = max(1, min(self.max_threads, int(free + 1e-9)))  # whole free cores
        if fit < self.wanted:
            self._quiet = 0
            return fit
        if fit > self.wanted:
            self._quiet += 1
            if self._quiet >= self.rise_after:
                self._quiet = 0
                return self.wanted + 1
            return self.wanted
        self._quiet = 0
        return self.wanted

    def _watch(self) -> None:
        import signal
        import time

        last = _cpu_busy_seconds()
        mine = time.process_time()
        t0 = time.perf_counter()
        while not self._stop.wait(self.interval):
            if not self._on_stack(sys._current_frames().get(self._target)):
                self._stop.set()
                return
            now = _cpu_busy_seconds()
            mine_now = time.process_time()
            if now is None or last is None:
                return
            others = other_processes_cores(last, now, mine_now - mine, self.cores)
            if others is None:
                continue
            last, mine = now, mine_now
            wanted = self.decide(others)
            if wanted != self.wanted:
                self.wanted = wanted
                self.changes.append((time.perf_counter() - t0, wanted, round(others, 2)))
                signal.pthread_kill(self._target, self._signal)

    def _on_stack(self, f) -> bool:
        """Whether the owner's frame is ``f`` or one of its callers (no owner: True)."""
        if self._owner is None:
            return True
        while f is not None:
            if f is self._owner:
                return True
            f = f.f_back
        return False

    def stop(self) -> None:
        """Stop watching; the thread count stays where it is."""
        import signal

        self._stop.set()
        self._thread.join()
        signal.signal(self._signal, self._previous)


_governor: ThreadGovernor | None = None


def adapt_threads(threads: int, backend: str = "parallel") -> ThreadGovernor | None:
    """What ``python -m scratchcnn.train`` calls after ``configure_threads``: start the
    ThreadGovernor for a parallel run of more than one thread, in the main thread,
    unless ``SCRATCHCNN_ADAPT_THREADS=0``. Returns it (or None); a second call replaces
    the first one's governor."""
    import threading

    global _governor
    if _governor is not None:
        _governor.stop()
        _governor = None
    if (backend != "parallel" or threads < 2 or os.environ.get(ADAPT_ENV, "1") == "0"
            or threading.current_thread() is not threading.main_thread()
            or _cpu_busy_seconds() is None):
        return None
    _governor = ThreadGovernor(threads, owner=sys._getframe(1))
    return _governor
