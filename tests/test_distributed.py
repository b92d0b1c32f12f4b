"""Data-parallel training without MPI: P ranks as P threads (ThreadComm), P = 1...4.

The weights, optimizer state and every reported loss / accuracy after a few
steps must be byte-identical to one process training on the same batches:
the ranks exchange bytes only, and the project's kernels add in the
one-process order. Real MPI runs are in tests/test_mpi.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.comm import ThreadComm
from scratchcnn.distributed import (
    DataParallelStep,
    DistributedError,
    check_in_step,
    check_ranks_agree,
    evaluate_sharded,
    sample_unit,
    shares,
    state_digest,
)
from scratchcnn.loop import evaluate, train_step

BATCHES = (32, 32, 16, 4)  # a partial batch with an empty rank at P = 3, 4; one below a unit


def _data():
    rng = np.random.default_rng(11)
    n = sum(BATCHES)
    return (rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int64))


def _setup(backend: str, opt_name: str, fuse: bool = True):
    model = sc.reference_cnn(seed=5, backend=backend)
    model.fuse_conv_pool = fuse
    loss = sc.SoftmaxCrossEntropy(backend=backend)
    opt = (sc.Adam(model.parameters(), backend=backend) if opt_name == "adam"
           else sc.SGD(model.parameters(), lr=0.05, momentum=0.9, backend=backend))
    return model, loss, opt


def _batches():
    x, y = _data()
    at = 0
    for n in BATCHES:
        yield x[at:at + n], y[at:at + n]
        at += n


def _one_process(backend, opt_name, fuse=True):
    model, loss, opt = _setup(backend, opt_name, fuse)
    stats = [train_step(model, loss, opt, x, y) for x, y in _batches()]
    return [(s.loss, s.correct, s.count) for s in stats], state_digest(model, opt)


def run_ranks(size: int, body) -> list:
    """``body(comm)`` on ``size`` threads, one ThreadComm each; their results in rank order
    (an exception in any rank is re-raised)."""
    comms = ThreadComm.group(size)
    results: list = [None] * size
    errors: list = []

    def rank(r: int) -> None:
        try:
            results[r] = body(comms[r])
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return results


def _ranks(size: int, backend: str, opt_name: str, fuse=True):
    def body(comm):
        model, loss, opt = _setup(backend, opt_name, fuse)
        step = DataParallelStep(model, loss, opt, comm)
        stats = [step(x, y)[0] for x, y in _batches()]
        return [(s.loss, s.correct, s.count) for s in stats], state_digest(model, opt)

    return run_ranks(size, body)


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_ranks_match_one_process_bit_for_bit(size, opt_name):
    want = _one_process("serial", opt_name)
    for got in _ranks(size, "serial", opt_name):
        assert got == want  # losses, correct counts, and the SHA-256 of weights + state


def test_parallel_backend_and_unfused_layers_too(numba_threads):
    numba_threads(2)
    want = _one_process("serial", "adam", fuse=False)
    for got in _ranks(3, "parallel", "adam", fuse=False):
        assert got == want


def test_the_exchange_is_needed():
    """Without combining the pieces, a rank's gradient is only its share's: the test above
    can fail."""
    model, loss, opt = _setup("serial", "sgd")
    x, y = next(_batches())
    loss.forward(model.forward(x[:16]), y[:16], mean_over=32)
    model.backward(loss.backward())
    opt.step()
    assert state_digest(model, opt) != _one_process("serial", "sgd")[1]


def test_shares_follow_the_sample_unit():
    model = sc.reference_cnn(backend="serial")
    # batch 32: conv1 groups of 1, conv2 of 4, conv3 of 8, dense blocks of 8
    assert sample_unit(model, 32, (3, 32, 32)) == 8
    assert shares(32, 8, 4) == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert shares(32, 8, 3) == [(0, 16), (16, 24), (24, 32)]
    assert shares(32, 8, 6)[4:] == [(32, 32), (32, 32)]  # at most 32 // 8 ranks hold data
    assert shares(100, 8, 3) == [(0, 32), (32, 64), (64, 100)]  # the last takes the rest
    assert shares(4, 8, 2) == [(0, 4), (4, 4)]  # less than a unit: rank 0
    for n in range(1, 70):
        for size in (1, 2, 3, 5):
            u = sample_unit(model, n, (3, 32, 32))
            sh = shares(n, u, size)
            assert sh[0][0] == 0 and sh[-1][1] == n and len(sh) == size
            assert all(a == pb for (_, pb), (a, _) in zip(sh, sh[1:]))  # contiguous
            assert all(a % u == 0 for a, b in sh if b > a)


def test_sharded_evaluation_matches():
    model, loss, _ = _setup("serial", "adam")
    x, y = _data()
    batches = [(x[i:i + 25], y[i:i + 25]) for i in range(0, len(y), 25)]
    want = evaluate(model, loss, batches)
    for size in (2, 3):
        got = run_ranks(size, lambda comm: evaluate_sharded(
            _setup("serial", "adam")[0], sc.SoftmaxCrossEntropy(backend="serial"), batches, comm))
        assert got == [want] * size


def _errors(size: int, body) -> list:
    def catching(comm):
        try:
            body(comm)
        except DistributedError as e:
            return str(e)
        return None
    return run_ranks(size, catching)


def test_ranks_must_agree():
    def body(comm):
        blas = "openblas SkylakeX" if comm.rank == 0 else "openblas Haswell"
        check_ranks_agree(comm, {"CPU model": "x", "BLAS kernels": [blas]})

    errs = _errors(2, body)
    assert errs[0] == errs[1] and "rank 1 differs from rank 0 in BLAS kernels" in errs[0]


def test_divergence_is_caught():
    def body(comm):
        model, _, opt = _setup("serial", "adam")
        if comm.rank == 1:
            model.parameters()[0].value[0, 0, 0, 0] += 1
        check_in_step(comm, model, opt, epoch=3)

    errs = _errors(2, body)
    assert errs[0] == errs[1] and "diverged after epoch 3" in errs[0]
