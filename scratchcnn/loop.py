"""One training step, one evaluation, one warm-up: written once, used everywhere.

The training CLI (``scratchcnn.train``), the benchmarks (``bench/harness.py``,
``bench/fusion.py``), the tests and the data-parallel driver all call these
functions; there is no second copy of the step anywhere.

    stats = train_step(model, loss_fn, opt, x, y)       # forward, loss, backward, update
    test_loss, test_acc = evaluate(model, loss_fn, batches)
    warm_up(model, loss_fn, opt)                         # compile every kernel first

The gradient hook
-----------------
``train_step(..., gradient_hook=f)`` calls ``f(model)`` after the backward pass
and before the update: every ``Parameter.grad`` is filled, and each layer's
``gradient_pieces()`` returns the un-summed pieces its weight gradient was made
from -- a convolution's per-sample-group partial products (summed over the
groups in a fixed order), a dense layer's input and output gradient (one
product over the batch). A hook may read them, or replace them by pieces
gathered from elsewhere and call ``layer.finish_gradients(pieces)``, which
recomputes the gradients from the pieces with the same kernels, in the same
order, as the backward pass did. That is what a multi-process step needs to get
the single-process bits (see ``scratchcnn.distributed``); a test checks that
``finish_gradients(gradient_pieces())`` reproduces the backward pass exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from scratchcnn.losses import SoftmaxCrossEntropy, accuracy_count
from scratchcnn.model import Sequential
from scratchcnn.optim import Optimizer

GradientHook = Callable[[Sequential], None]


class NonFiniteLoss(FloatingPointError):
    """The loss of a batch was NaN or infinite; no update was applied."""

    def __init__(self, value: float) -> None:
        super().__init__(f"loss became {value}")
        self.value = value


class NonFiniteParameter(FloatingPointError):
    """A gradient (before the update: none was applied) or a weight (after it) is NaN or
    infinite. ``str`` names the parameter."""


def first_non_finite(model: Sequential, opt: Optimizer, what: str) -> str | None:
    """Name of the first parameter whose ``what`` ("grad" or "value") has a NaN or inf.

    ``opt.all_finite`` answers the usual case in one pass over its flat array (about
    35 us for the reference network); the names are looked up only when it says no.
    Host arrays only (a CUDA device array would need a copy per step; the loss check
    catches the NaN there one step later)."""
    if opt.all_finite(what):
        return None
    for name, p in model.named_parameters():
        a = getattr(p, what)
        if isinstance(a, np.ndarray) and not np.isfinite(a).all():
            return name
    return "a parameter not in the model"  # the optimizer updates more than the model


@dataclass
class StepStats:
    """What one training step reports: mean loss, correct predictions, images."""

    loss: float
    correct: int
    count: int


def train_step(model: Sequential, loss_fn: SoftmaxCrossEntropy, opt: Optimizer,
               x: np.ndarray, y: np.ndarray, *,
               gradient_hook: GradientHook | None = None,
               check_finite: bool = True) -> StepStats:
    """Forward, loss, backward, (hook,) update, on one batch ``x`` (N, C, H, W), ``y`` (N,).

    Raises ``NonFiniteLoss`` before touching the weights when the loss is not finite;
    with ``check_finite`` (default) also ``NonFiniteParameter`` when a gradient is not
    finite (before the update) or a weight became non-finite (after it). Both are
    ``FloatingPointError``s.
    """
    logits = model.forward(x)
    batch_loss = loss_fn.forward(logits, y)
    if not math.isfinite(batch_loss):
        raise NonFiniteLoss(batch_loss)
    model.backward(loss_fn.backward())
    if gradient_hook is not None:
        gradient_hook(model)
    if check_finite and (bad := first_non_finite(model, opt, "grad")) is not None:
        raise NonFiniteParameter(f"the gradient of {bad} became non-finite (NaN or inf)")
    opt.step()
    if check_finite and (bad := first_non_finite(model, opt, "value")) is not None:
        raise NonFiniteParameter(f"weight {bad} became non-finite (NaN or inf)")
    return StepStats(batch_loss, accuracy_count(logits, y), len(y))


def evaluate(model: Sequential, loss_fn: SoftmaxCrossEntropy,
             batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Mean loss and accuracy over all images of ``batches`` (pairs ``x, y``)."""
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        logits = model.forward(x)
        total_loss += loss_fn.forward(logits, y) * len(y)
        correct += accuracy_count(logits, y)
        seen += len(y)
    if seen == 0:
        raise ValueError("evaluate: got no images")
    return total_loss / seen, correct / seen


def warm_up(model: Sequential, loss_fn: SoftmaxCrossEntropy, opt: Optimizer | None = None,
            input_shape: tuple[int, int, int] = (3, 32, 32), *, loader: bool = True) -> None:
    """Compile (or load from Numba's cache) every kernel a training step calls.

    Runs one forward and backward pass on two zero images and compiles the
    optimizer's update on scratch arrays: the weights and the optimizer state
    are left as they were (the gradients are overwritten). ``loader``: also the
    data loader's kernels.
    """
    x = np.zeros((2, *input_shape), model.dtype)
    loss_fn.forward(model.forward(x), np.zeros(2, np.int64))
    model.backward(loss_fn.backward())
    if opt is not None:
        opt.warm_up()
    if loader:
        from scratchcnn.data.augment import warm_up as warm_up_loader

        warm_up_loader()
