"""Data-parallel training over P ranks, bit for bit equal to one process.

Each rank holds the same weights, draws the same whole batch (same seed, same
shuffle, same augmentation) and computes the forward and backward pass of its
*share*: a contiguous run of samples. What a one-process step would add
across those shares is never added by MPI. Instead every rank receives every
rank's gradient *pieces* (``Sequential.gradient_pieces``: a convolution's
per-sample-group partial products, a dense layer's inputs and output
gradients), concatenates them in rank order -- which is sample order -- and
runs the project's own kernels on the whole batch's pieces
(``Sequential.finish_gradients``): the same additions, in the same order, as
one process. Then every rank applies the same optimizer step. MPI moves bytes.

Why the shares are cut where they are (``sample_unit``): a convolution
multiplies one *sample group* per matrix product, and a dense layer one block
of ``SAMPLES`` samples; a BLAS product's bits depend on its rows. So every
share starts at a multiple of U = lcm(block size, every convolution's group
size for this batch), the group sizes being those of the *global* batch
(``Sequential.set_group_batch``). At most N // U ranks hold data for a batch of
N (4 at batch 32 with the reference network); the others get empty shares and
only take part in the exchange. A last batch smaller than U runs on rank 0.

The loss is the mean over the global batch: each rank's share of the gradient
is scaled by 1/N (``SoftmaxCrossEntropy.forward(mean_over=N)``); the reported
loss is computed from the gathered per-sample losses exactly as one process
computes it.

Evaluation splits whole evaluation batches among the ranks and adds their
results in batch order on every rank (``evaluate_sharded``).

Every rank must compute the same bits for the same share: same CPU kind, BLAS
kernel and library versions. ``check_ranks_agree`` compares them (and a hash of
the initial parameters) at start; ``state_digest`` after every epoch.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from scratchcnn.comm import Communicator
from scratchcnn.fusion import ConvReLUPool
from scratchcnn.layers import Conv2D, Dense
from scratchcnn.loop import NonFiniteLoss, NonFiniteParameter, StepStats, first_non_finite
from scratchcnn.losses import SoftmaxCrossEntropy, accuracy_count
from scratchcnn.model import Sequential
from scratchcnn.optim import Optimizer


class DistributedError(RuntimeError):
    """Ranks disagree (machine, libraries, parameters) or diverged; one line, every rank."""


# -- where the shares are cut ---------------------------------------------------------------
def sample_unit(model: Sequential, n: int, input_shape: tuple[int, ...]) -> int:
    """The smallest number of samples a share may hold (all shares but the last are
    multiples of it) so that every matrix product sees the rows it sees in one process."""
    from scratchcnn.kernels.conv_fast import group_size
    from scratchcnn.kernels.dense import SAMPLES

    unit, shape = 1, tuple(input_shape)
    for step in model.steps:
        conv = step.conv if isinstance(step, ConvReLUPool) else step
        if isinstance(conv, Conv2D):
            _, oh, ow = conv.output_shape(shape)
            unit = math.lcm(unit, group_size(n, oh * ow))
        elif isinstance(step, Dense):
            unit = math.lcm(unit, SAMPLES)
        shape = step.output_shape(shape)
    return unit


def shares(n: int, unit: int, size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) sample ranges of a batch of ``n`` for ``size`` ranks.

    The ``n // unit`` whole units are dealt out as evenly as possible, lower ranks
    first; the last rank with data also takes the remainder. Ranks beyond the
    number of units get empty shares; a batch smaller than one unit goes to rank 0.
    """
    units = n // unit
    if units == 0:
        return [(0, n)] + [(n, n)] * (size - 1)
    base, extra = divmod(units, size)
    out, at = [], 0
    for r in range(size):
        stop = at + (base + (1 if r < extra else 0)) * unit
        out.append((at, stop))
        at = stop
    last = min(units, size) - 1  # the last rank that got a unit takes the remainder
    out[last] = (out[last][0], n)
    return out[:last + 1] + [(n, n)] * (size - last - 1)


# -- the step -------------------------------------------------------------------------------
_HEADER = np.dtype([("correct", "<i8"), ("stop", "<i8")])


@dataclass
class _Layout:
    """What each rank sends for a batch size: sample counts and piece shapes, per rank."""

    counts: list[int]  # samples per rank
    pieces: list[list[tuple[str, str, tuple[int, ...]]]]  # per rank: (step, key, shape)
    nbytes: list[int]


class DataParallelStep:
    """``step(x, y)``: one data-parallel training step on the whole batch ``x, y`` (every
    rank passes the same batch); returns the one-process ``StepStats`` on every rank.

    ``stop``: this rank wants to stop after this step (Ctrl-C, SIGTERM); the returned
    ``stop_any`` is True on every rank if any rank asked, so all stop at the same step.
    ``comm_seconds`` accumulates the time spent in the exchange.
    """

    def __init__(self, model: Sequential, loss_fn: SoftmaxCrossEntropy, opt: Optimizer,
                 comm: Communicator) -> None:
        self.model, self.loss_fn, self.opt, self.comm = model, loss_fn, opt, comm
        self.comm_seconds = 0.0
        self._layouts: dict[tuple, _Layout] = {}
        self.last_shares: list[tuple[int, int]] = []

    def shares_for(self, n: int, input_shape: tuple[int, ...]) -> list[tuple[int, int]]:
        return shares(n, sample_unit(self.model, n, input_shape), self.comm.size)

    def __call__(self, x: np.ndarray, y: np.ndarray, stop: bool = False) -> tuple[StepStats, bool]:
        model, comm = self.model, self.comm
        n = len(y)
        sh = self.last_shares = self.shares_for(n, x.shape[1:])
        lo, hi = sh[comm.rank]
        model.set_group_batch(n)
        header = np.zeros(1, _HEADER)
        header["stop"] = int(stop)
        floats: list[np.ndarray] = []
        mine: list[tuple[str, str, tuple[int, ...]]] = []
        if hi > lo:
            xs, ys = x[lo:hi], y[lo:hi]
            logits = model.forward(xs)
            self.loss_fn.forward(logits, ys, mean_over=n)
            model.backward(self.loss_fn.backward())
            header["correct"] = accuracy_count(logits, ys)
            floats.append(self.loss_fn.losses)
            for step_name, pieces in model.gradient_pieces().items():
                for key, a in pieces.items():
                    mine.append((step_name, key, a.shape))
                    floats.append(a)
        t0 = time.perf_counter()
        layout = self._layout(n, sh, mine)
        local = np.concatenate([header.view(np.uint8)]
                               + [np.ascontiguousarray(a).reshape(-1).view(np.uint8)
                                  for a in floats])
        everything = comm.allgatherv(local, layout.nbytes)
        self.comm_seconds += time.perf_counter() - t0
        losses, correct, stop_any, pieces = self._unpack(everything, layout)
        batch_loss = float(losses.astype(np.float64).sum() / n)
        if not math.isfinite(batch_loss):
            raise NonFiniteLoss(batch_loss)
        model.finish_gradients(pieces)
        if (bad := first_non_finite(model, self.opt, "grad")) is not None:
            raise NonFiniteParameter(f"the gradient of {bad} became non-finite (NaN or inf)")
        self.opt.step()
        if (bad := first_non_finite(model, self.opt, "value")) is not None:
            raise NonFiniteParameter(f"weight {bad} became non-finite (NaN or inf)")
        return StepStats(batch_loss, correct, n), stop_any

    def _layout(self, n: int, sh: list[tuple[int, int]], mine) -> _Layout:
        key = (n, tuple(sh))
        layout = self._layouts.get(key)
        if layout is None:  # once per batch size: every rank's piece shapes
            t0 = time.perf_counter()
            every = self.comm.allgather_obj(mine)
            self.comm_seconds += time.perf_counter() - t0
            item = np.dtype(self.model.dtype).itemsize
            nbytes = [_HEADER.itemsize + item * ((b - a) + sum(math.prod(s) for _, _, s in p))
                      for (a, b), p in zip(sh, every)]
            layout = self._layouts[key] = _Layout([b - a for a, b in sh], every, nbytes)
        return layout

    def _unpack(self, everything: np.ndarray, layout: _Layout):
        dt = np.dtype(self.model.dtype)
        losses, correct, stop_any = [], 0, False
        parts: dict[str, dict[str, list[np.ndarray]]] = {}
        at = 0
        for count, pieces, nbytes in zip(layout.counts, layout.pieces, layout.nbytes):
            chunk = everything[at:at + nbytes]
            at += nbytes
            head = chunk[:_HEADER.itemsize].view(_HEADER)[0]
            correct += int(head["correct"])
            stop_any = stop_any or bool(head["stop"])
            values = chunk[_HEADER.itemsize:].view(dt)
            losses.append(values[:count])
            pos = count
            for step_name, key, shape in pieces:
                size = math.prod(shape)
                parts.setdefault(step_name, {}).setdefault(key, []).append(
                    values[pos:pos + size].reshape(shape))
                pos += size
        whole = {step: {key: np.ascontiguousarray(np.concatenate(arrays))
                        for key, arrays in d.items()} for step, d in parts.items()}
        return np.concatenate(losses), correct, stop_any, whole


# -- evaluation -------------------------------------------------------------------------------
def evaluate_sharded(model: Sequential, loss_fn: SoftmaxCrossEntropy,
                     batches: Iterable[tuple[np.ndarray, np.ndarray]],
                     comm: Communicator) -> tuple[float, float]:
    """``scratchcnn.loop.evaluate`` with whole batches dealt round-robin to the ranks;
    the per-batch results are added in batch order, so every rank gets its bits."""
    model.set_group_batch(None)
    mine = []
    for i, (x, y) in enumerate(batches):
        if i % comm.size == comm.rank:
            logits = model.forward(x)
            mine.append((i, loss_fn.forward(logits, y) * len(y), accuracy_count(logits, y),
                         len(y)))
    results = sorted(r for rank in comm.allgather_obj(mine) for r in rank)
    total_loss, correct, seen = 0.0, 0, 0
    for _, loss_sum, c, count in results:
        total_loss += loss_sum
        correct += c
        seen += count
    if seen == 0:
        raise ValueError("evaluate: got no images")
    return total_loss / seen, correct / seen


# -- agreement between ranks -------------------------------------------------------------------
def state_digest(model: Sequential, opt: Optimizer | None = None) -> str:
    """SHA-256 of every parameter (and optimizer state) array, in a fixed order."""
    h = hashlib.sha256()
    arrays = dict(model.state_dict())
    if opt is not None:
        arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def rank_facts(model: Sequential) -> dict[str, object]:
    """What must be equal on every rank for equal bits."""
    from scratchcnn.runinfo import blas_kernels, cpu_model, versions

    return {"CPU model": cpu_model(), "BLAS kernels": blas_kernels(), "versions": versions(),
            "dtype": str(model.dtype), "initial parameters (SHA-256)": state_digest(model)}


def check_ranks_agree(comm: Communicator, facts: dict[str, object]) -> None:
    """DistributedError (the same line on every rank) unless every rank's facts equal rank 0's."""
    every = comm.allgather_obj(facts)
    for rank, theirs in enumerate(every[1:], start=1):
        for key, value in every[0].items():
            if theirs.get(key) != value:
                raise DistributedError(
                    f"rank {rank} differs from rank 0 in {key}: {theirs.get(key)!r} vs "
                    f"{value!r}; data-parallel bits need the same CPU kind, BLAS and "
                    f"libraries on every rank (run the ranks on one kind of machine, one venv)")


def check_in_step(comm: Communicator, model: Sequential, opt: Optimizer, epoch: int) -> str:
    """After an epoch: every rank must hold the same weights and optimizer state."""
    digest = state_digest(model, opt)
    every = comm.allgather_obj(digest)
    bad = [r for r, d in enumerate(every) if d != every[0]]
    if bad:
        raise DistributedError(f"ranks diverged after epoch {epoch}: the weights of rank(s) "
                               f"{', '.join(map(str, bad))} differ from rank 0's; check that "
                               f"every rank runs on the same kind of CPU with the same libraries")
    return digest
