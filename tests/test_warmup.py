"""scratchcnn.warmup (the dry pass that finds the kernels a step uses), the thread governor
of scratchcnn.threads and the CLI's --lr-schedule: structure and logic, no timings."""

from __future__ import annotations

import math
import os

import pytest


def test_dry_pass_finds_the_step_kernels_and_compiles_nothing():
    from scratchcnn.kernels import KERNEL_NAMES, get_backend
    from scratchcnn.warmup import kernel_signatures

    ns = get_backend("serial")
    before = {n: getattr(ns, n) for n in KERNEL_NAMES}
    sigs = kernel_signatures("serial", loader=False)
    names = {n for n, _ in sigs}
    assert {"conv2d_relu_pool_forward", "conv2d_relu_pool_backward",
            "dense_forward", "softmax_cross_entropy", "adam_update"} <= names
    assert names <= set(KERNEL_NAMES)
    assert all(len(s) > 0 for _, s in sigs)
    assert len(sigs) == len(set(sigs))  # each (kernel, types) once
    # the namespace holds the real dispatchers again
    assert all(getattr(ns, n) is fn for n, fn in before.items())


def test_dry_pass_leaves_training_unchanged():
    import numpy as np

    from scratchcnn.loop import train_step
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam
    from scratchcnn.warmup import kernel_signatures

    def weights_after_step():
        m = reference_cnn(seed=1, backend="serial")
        loss, opt = SoftmaxCrossEntropy(backend="serial"), Adam(m.parameters(), backend="serial")
        x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
        train_step(m, loss, opt, x, np.arange(4) % 10)
        return {k: v.tobytes() for k, v in m.state_dict().items()}

    first = weights_after_step()
    kernel_signatures("serial", loader=False)
    assert weights_after_step() == first


def test_governor_drops_fast_and_rises_slowly():
    from scratchcnn.threads import ThreadGovernor

    g = ThreadGovernor(2, interval=3600, cores=2, rise_after=2)
    try:
        assert g.decide(0.1) == 2            # a shell or an editor: noise
        g.wanted = g.decide(1.0)             # a neighbour on one core
        assert g.wanted == 1
        assert g.decide(1.0) == 1
        assert g.decide(0.0) == 1            # one quiet sample is not enough
        g.wanted = g.decide(0.0)
        assert g.wanted == 2
        assert ThreadGovernor.decide(g, 5.0) == 1  # never below one thread
    finally:
        g.stop()


def test_adapt_threads_only_for_parallel_runs(monkeypatch):
    from scratchcnn.threads import ADAPT_ENV, adapt_threads

    assert adapt_threads(4, "serial") is None
    assert adapt_threads(1, "parallel") is None
    assert adapt_threads(4, "distributed") is None
    monkeypatch.setenv(ADAPT_ENV, "0")
    assert adapt_threads(4, "parallel") is None
    monkeypatch.delenv(ADAPT_ENV)
    if os.path.exists("/proc/stat"):
        g = adapt_threads(2, "parallel")
        assert g is not None
        g.stop()


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_lr_schedules(schedule):
    from scratchcnn.train import build_parser, lr_for_epoch

    assert build_parser().parse_args(["--lr-schedule", schedule]).lr_schedule == schedule
    lrs = [lr_for_epoch(schedule, 1e-3, e, 8) for e in range(1, 9)]
    assert lrs[0] == 1e-3
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    if schedule == "cosine":
        assert math.isclose(lrs[4], 0.5e-3)
    if schedule == "step":
        assert lrs[3] == 1e-3 and math.isclose(lrs[4], 1e-4) and math.isclose(lrs[6], 1e-5)


def test_free_cores_counts_other_processes_now(monkeypatch):
    """free_cores() samples /proc/stat over a short window: other processes' busy time,
    not the lagging load average, decides how many compile processes to start."""
    import os

    import scratchcnn.threads as threads
    from scratchcnn import warmup

    cores = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), 0.0, 0.0))  # must not matter

    def samples(others_cores: float):
        # (busy, total) CPU seconds: `others_cores` cores busy over 1 s of wall time
        seq = iter([(100.0, 1000.0), (100.0 + others_cores, 1000.0 + cores)])
        return lambda: next(seq)

    for others, want in ((0.0, cores), (1.0, max(1, cores - 1)), (float(cores), 1)):
        monkeypatch.setattr(threads, "_cpu_busy_seconds", samples(others))
        assert warmup.free_cores(window=0.0) == want, others
    monkeypatch.setattr(threads, "_cpu_busy_seconds", lambda: None)  # not Linux: load average
    assert warmup.free_cores(window=0.0) == 1


def test_compile_workers_run_at_worker_opt(monkeypatch):
    """The spawned compile workers get NUMBA_OPT=WORKER_OPT, unless the user set a level;
    the caller's environment is left as it was."""
    import subprocess
    import sys

    from scratchcnn import warmup

    probe = [sys.executable, "-c", "import numba; print(int(numba.config.OPT))"]
    monkeypatch.delenv("NUMBA_OPT", raising=False)
    with warmup._worker_environment():
        seen = subprocess.run(probe, capture_output=True, text=True, timeout=120).stdout
    assert seen.strip() == warmup.WORKER_OPT
    assert "NUMBA_OPT" not in os.environ
    monkeypatch.setenv("NUMBA_OPT", "1")
    with warmup._worker_environment():
        seen = subprocess.run(probe, capture_output=True, text=True, timeout=120).stdout
    assert seen.strip() == "1" and os.environ["NUMBA_OPT"] == "1"


def test_deal_splits_the_two_conv_kernels_and_balances():
    from scratchcnn.warmup import COST_HINT, DEFAULT_COST, deal, kernel_signatures

    sigs = kernel_signatures("parallel")
    for jobs in (1, 2, 3, 5):
        shares = deal(sigs, jobs)
        assert len(shares) == jobs
        assert sorted(map(repr, sum(shares, []))) == sorted(map(repr, sigs))  # each once
        assert deal(sigs, jobs) == shares  # deterministic: every worker deals the same
        if jobs > 1:  # the two big ones never share a worker
            holders = [i for i, s in enumerate(shares) for n, _ in s if n in COST_HINT]
            assert len(holders) == len(set(holders)) == 2, (jobs, holders)
    loads = [sum(COST_HINT.get(n, DEFAULT_COST) for n, _ in s) for s in deal(sigs, 2)]
    assert not {n for n, _ in sigs} & {"conv2d_forward", "conv2d_backward"}
    assert max(loads) - min(loads) <= DEFAULT_COST + 1e-9, loads  # the small ones even it out


def test_switching_backend_between_steps_keeps_the_bits():
    """A serial-first start trains some steps on the serial kernels, then the rest on the
    parallel ones: the weights and optimizer state must be those of an all-parallel run."""
    import numpy as np

    from scratchcnn.loop import train_step
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam

    rng = np.random.default_rng(7)
    xs = rng.standard_normal((4, 8, 3, 32, 32)).astype(np.float32)
    ys = rng.integers(0, 10, (4, 8))

    def run(backends: list[str]) -> bytes:
        m = reference_cnn(seed=2, backend=backends[0])
        loss, opt = SoftmaxCrossEntropy(backend=backends[0]), Adam(m.parameters(),
                                                                   backend=backends[0])
        for x, y, b in zip(xs, ys, backends):
            m.backend = loss.backend = opt.backend = b
            train_step(m, loss, opt, x, y)
        return b"".join(p.value.tobytes() for p in m.parameters()) + b"".join(
            a.tobytes() for a in opt._flat_state)

    assert run(["serial", "serial", "parallel", "parallel"]) == run(["parallel"] * 4)


def test_compile_jobs_ready_does_not_block(monkeypatch):
    """CompileJobs.ready() books what the workers sent so far and answers without
    waiting for more: False until every worker has said it is done, then True, with the
    summary finish() returns. Workers replaced by stand-ins that the test speaks for."""
    import multiprocessing
    import queue

    from scratchcnn import warmup

    class Worker:  # started, joined, exit code 0; never runs anything
        exitcode = 0

        def __init__(self, **kwargs) -> None:
            pass

        def start(self) -> None:
            pass

        def join(self) -> None:
            pass

        def is_alive(self) -> bool:
            return False

    class Context:
        Queue = queue.Queue
        Process = Worker

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: Context())
    jobs = warmup.CompileJobs("serial", jobs=2)
    assert jobs.ready() is False  # nothing sent yet: the empty queue does not block it
    jobs.queue.put(("total", 3))
    jobs.queue.put(("done", "dense_forward", 0.5, True))
    jobs.queue.put(None)  # worker 1 done
    assert jobs.ready() is False  # worker 2 still owes its end
    jobs.queue.put(("done", "adam_update", 0.25, False))
    jobs.queue.put(("done", "loader:warm_up", 0.25, True))
    jobs.queue.put(None)
    assert jobs.ready() is True and jobs.ready() is True
    r = jobs.finish(progress=False)
    assert r["kernels"] == 3 and r["missing"] == 2 and r["jobs"] == 2
    assert r["per_kernel"] == {"dense_forward": 0.5, "adam_update": 0.25, "loader:warm_up": 0.25}


def test_compile_jobs_fill_the_cache_in_a_worker():
    """A real worker: its summary once finished. Serial kernels, warm from the tests
    before (else this compiles them: slower, same checks)."""
    import time

    from scratchcnn.warmup import CompileJobs, kernel_signatures

    jobs = CompileJobs("serial", jobs=1)
    while not jobs.ready():
        time.sleep(0.1)
    r = jobs.finish(progress=False)
    assert r["kernels"] == len(kernel_signatures("serial", loader=True)) and r["jobs"] == 1
    assert set(r["per_kernel"]) >= {"conv2d_relu_pool_forward", "loader:warm_up"}
