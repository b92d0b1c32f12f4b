"""Optimizers keep parameters, gradients and state in flat arrays on the CPU backends."""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.loop import train_step


def _model_and_batch(backend: str):
    model = sc.reference_cnn(seed=3, backend=backend)
    rng = np.random.default_rng(0)
    x = rng.random((8, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    return model, sc.SoftmaxCrossEntropy(backend=backend), x, y


def _make(kind: str, params, backend: str):
    if kind == "adam":
        return sc.Adam(params, backend=backend)
    return sc.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4, backend=backend)


def test_parameters_become_views_of_one_array_with_their_values_kept():
    model, *_ = _model_and_batch("serial")
    before = [p.value.copy() for p in model.parameters()]
    sc.Adam(model.parameters(), backend="serial")
    params = model.parameters()
    base = params[0].value.base
    assert base is not None and base.ndim == 1 and base.size == model.num_parameters()
    for p, b in zip(params, before):
        assert p.value.base is base and p.grad.base is params[0].grad.base
        assert p.value.shape == b.shape and np.array_equal(p.value, b)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("backend", ["serial", "parallel"])
def test_flat_step_equals_per_parameter_steps(kind, backend):
    """One kernel call over the flat array == one call per parameter, bit for bit."""
    flat_model, loss, x, y = _model_and_batch(backend)
    split_model, *_ = _model_and_batch(backend)
    flat_opt = _make(kind, flat_model.parameters(), backend)
    split_opt = _make(kind, split_model.parameters(), backend)
    for p in split_model.parameters():  # replaced arrays: step falls back to one call each
        p.value, p.grad = p.value.copy(), p.grad.copy()
    for model, opt in ((flat_model, flat_opt), (split_model, split_opt)):
        for _ in range(3):
            train_step(model, loss, opt, x, y)
    for a, b in zip(flat_model.parameters(), split_model.parameters()):
        assert a.value.tobytes() == b.value.tobytes()
    for s in flat_opt.slots:
        for a, b in zip(flat_opt.state[s], split_opt.state[s]):
            assert a.tobytes() == b.tobytes()
    assert not np.array_equal(split_model.parameters()[0].value,
                              sc.reference_cnn(seed=3).parameters()[0].value)  # it did train


def test_one_kernel_call_per_step_unless_an_array_was_replaced():
    model, loss, x, y = _model_and_batch("serial")
    opt = sc.Adam(model.parameters(), backend="serial")
    calls = []
    update = opt._update
    opt._update = lambda *a: (calls.append(a[0].size), update(*a))
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step()
    assert calls == [model.num_parameters()]
    first = model.parameters()[0]
    first.value = first.value.copy()  # e.g. moved elsewhere: no longer a view
    calls.clear()
    opt.step()
    assert calls == [p.value.size for p in model.parameters()]
