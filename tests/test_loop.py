"""The one training step and its gradient hook (scratchcnn/loop.py)."""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.loop import NonFiniteLoss, evaluate, train_step, warm_up


def _setup(backend="serial", fuse=True):
    model = sc.reference_cnn(seed=2, backend=backend)
    model.fuse_conv_pool = fuse
    return model, sc.SoftmaxCrossEntropy(backend=backend), sc.SGD(model.parameters(), lr=0.1,
                                                                  backend=backend)


def _batch(n=16):
    rng = np.random.default_rng(4)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("backend", ["serial", "parallel"])
def test_gradient_hook_sees_the_pieces_and_finishing_them_reproduces_backward(backend, fuse):
    model, loss, opt = _setup(backend, fuse)
    seen = {}

    def hook(m):
        grads = {n: p.grad.copy() for n, p in m.named_parameters()}
        pieces = m.gradient_pieces()
        seen["pieces"] = {s: {k: a.copy() for k, a in d.items()} for s, d in pieces.items()}
        for p in m.parameters():
            p.grad[...] = np.nan  # finish_gradients must rewrite every gradient
        m.finish_gradients(seen["pieces"])
        for n, p in m.named_parameters():
            assert p.grad.tobytes() == grads[n].tobytes(), n

    x, y = _batch()
    train_step(model, loss, opt, x, y, gradient_hook=hook)
    pieces = seen["pieces"]
    convs = ["conv1+pool1", "conv2+pool2", "conv3"] if fuse else ["conv1", "conv2", "conv3"]
    assert list(pieces) == [*convs, "dense1", "dense2"]
    # conv: one (F, K+1) partial product per sample group (conv1: one sample per group)
    assert pieces[convs[0]]["per_group"].shape == (16, 32, 3 * 9 + 1)
    assert pieces["conv3"]["per_group"].shape[1:] == (64, 64 * 9 + 1)
    assert pieces["dense1"]["x"].shape == (16, 1024) and pieces["dense1"]["dout"].shape == (16, 64)
    assert np.isfinite(next(iter(model.parameters())).value).all()


def test_non_finite_loss_stops_before_the_update():
    model, loss, opt = _setup()
    x, y = _batch()
    model.layers[-1].bias.value[3] = np.inf  # logits inf -> the softmax gives NaN
    before = {n: p.value.copy() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLoss):
        train_step(model, loss, opt, x, y)
    assert all((p.value == before[n]).all() for n, p in model.named_parameters())


def test_warm_up_leaves_weights_and_state_alone_and_evaluate_counts():
    model, loss, _ = _setup()
    opt = sc.Adam(model.parameters(), backend="serial")
    before = model.state_dict()
    before = {k: v.copy() for k, v in before.items()}
    warm_up(model, loss, opt, loader=False)
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
    assert opt.t == 0
    x, y = _batch(10)
    test_loss, acc = evaluate(model, loss, [(x[:6], y[:6]), (x[6:], y[6:])])
    logits = model.forward(x)
    assert acc == (logits.argmax(1) == y).mean()
    assert test_loss == pytest.approx(loss.forward(logits, y), rel=1e-6)
    with pytest.raises(ValueError, match="no images"):
        evaluate(model, loss, [])
