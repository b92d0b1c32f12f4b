"""Gradient checks: analytic gradients vs float64 central differences.

For a layer f and a fixed random R, the objective is L = sum(f(x) * R), so
dL/d(out) = R. Every analytic gradient (input and parameters) is compared with
(L(v + h) - L(v - h)) / 2h entry by entry; the relative error
||num - ana|| / (||num|| + ||ana||) must be <= 1e-6.

Inputs are built so that the check is well-posed: no ties inside max-pool
windows and no ReLU input near 0. For the whole network, where activations
cannot be placed by hand, every perturbed forward pass asserts that no ReLU
input changed sign and no max-pool winner changed.
"""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.fusion import ConvReLUPool

F64 = np.float64
H = 1e-6
MAX_REL_ERR = 1e-6
BACKENDS = ["serial", "parallel"]


def rel_error(num: np.ndarray, ana: np.ndarray) -> float:
    denom = np.linalg.norm(num) + np.linalg.norm(ana)
    return float(np.linalg.norm(num - ana) / denom) if denom > 0 else 0.0


def numeric_grad(f, v: np.ndarray, idx) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. the entries ``idx`` of v (in place)."""
    flat = v.reshape(-1)
    out = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + H
        fp = f()
        flat[i] = old - H
        fm = f()
        flat[i] = old
        out[j] = (fp - fm) / (2 * H)
    return out


def sample_idx(size: int, rng: np.random.Generator, at_most: int = 60) -> np.ndarray:
    return np.arange(size) if size <= at_most else rng.choice(size, at_most, replace=False)


def away_from_zero(rng, shape, margin=0.1):
    """Random values with |v| >= margin: ReLU inputs never near the kink."""
    return rng.choice([-1.0, 1.0], size=shape) * (margin + rng.random(shape))


def distinct(rng, shape, gap=1e-2):
    """All entries distinct, at least ``gap`` apart: no ties in any max-pool window."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * gap - n * gap / 2).reshape(shape).astype(F64)


def check_layer(layer, x: np.ndarray, rng: np.random.Generator) -> None:
    out = layer.forward(x)
    mask = (out > 0).tobytes()  # which side of a fused ReLU's kink each output is on
    r = rng.standard_normal(out.shape)
    dx = layer.backward(r.copy()).copy()  # copy: layers reuse their buffers

    def objective() -> float:
        out = layer.forward(x)
        if getattr(layer, "activation", None):
            assert (out > 0).tobytes() == mask, "a perturbation crossed the ReLU kink"
        return float((out * r).sum())

    for name, value, ana in [("input", x, dx)] + [(p.name, p.value, p.grad.copy())
                                                   for p in layer.params()]:
        idx = sample_idx(value.size, rng)
        num = numeric_grad(objective, value, idx)
        err = rel_error(num, ana.reshape(-1)[idx])
        assert err <= MAX_REL_ERR, f"{layer.name} d/d{name}: relative error {err:.2e}"


CONV_GEOMETRIES = [
    dict(cin=1, cout=2, k=3, stride=1, padding=0, hw=(5, 5)),
    dict(cin=3, cout=4, k=3, stride=1, padding="same", hw=(6, 7)),
    dict(cin=2, cout=3, k=(3, 2), stride=2, padding=(1, 1), hw=(7, 6)),
    dict(cin=2, cout=3, k=3, stride=1, padding=1, hw=(5, 6), activation="relu"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geo", CONV_GEOMETRIES,
                         ids=lambda g: f"{g['k']}-s{g['stride']}-{g.get('activation')}")
def test_conv2d(backend, geo):
    rng = np.random.default_rng(0)
    layer = sc.Conv2D(geo["cin"], geo["cout"], geo["k"], stride=geo["stride"],
                      padding=geo["padding"], activation=geo.get("activation"), rng=rng,
                      backend=backend, dtype=F64)
    layer.bias.value[:] = rng.standard_normal(geo["cout"])
    check_layer(layer, rng.standard_normal((2, geo["cin"], *geo["hw"])), rng)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pool,stride", [(2, None), (3, 2), ((2, 3), (1, 2))])
def test_maxpool2d(backend, pool, stride):
    rng = np.random.default_rng(1)
    layer = sc.MaxPool2D(pool, stride, backend=backend, dtype=F64)
    check_layer(layer, distinct(rng, (2, 3, 7, 8)), rng)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense(backend, activation):
    rng = np.random.default_rng(2)
    layer = sc.Dense(13, 5, activation=activation, rng=rng, backend=backend, dtype=F64)
    layer.bias.value[:] = rng.standard_normal(5)
    check_layer(layer, rng.standard_normal((4, 13)), rng)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu(backend):
    rng = np.random.default_rng(3)
    check_layer(sc.ReLU(backend=backend, dtype=F64), away_from_zero(rng, (3, 2, 4, 5)), rng)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flatten(backend):
    rng = np.random.default_rng(4)
    check_layer(sc.Flatten(backend=backend, dtype=F64), rng.standard_normal((2, 3, 4, 5)), rng)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_cross_entropy(backend):
    rng = np.random.default_rng(5)
    loss = sc.SoftmaxCrossEntropy(backend=backend, dtype=F64)
    logits = rng.standard_normal((6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    loss.forward(logits, labels)
    ana = loss.backward().copy()
    num = numeric_grad(lambda: loss.forward(logits, labels), logits, np.arange(logits.size))
    assert rel_error(num, ana.reshape(-1)) <= MAX_REL_ERR


def _kinks(model) -> bytes:
    """Which side of every ReLU kink and which max-pool winner the last forward pass took."""
    parts = []
    for layer in model.steps:
        if isinstance(layer, ConvReLUPool):  # the window maxima and their signs are the kinks
            parts.append(layer._argmax.tobytes())
            parts.append((layer._out > 0).tobytes())
        if isinstance(layer, sc.ReLU):
            parts.append((layer._x > 0).tobytes())
        if getattr(layer, "activation", None) == "relu" and layer._out is not None:
            parts.append((layer._out > 0).tobytes())  # fused: output > 0 <=> input > 0
        if isinstance(layer, sc.MaxPool2D):  # (with a conv + pool kernel: the window
            parts.append(layer._argmax.tobytes())  # maxima and their signs are the kinks)
            parts.append((layer._out > 0).tobytes())
    return b"".join(parts)


@pytest.mark.parametrize("fuse", [True, False], ids=["conv+pool fused", "layer by layer"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_network(backend, fuse):
    """The whole reference network (float64), loss included, on a batch of 2."""
    rng = np.random.default_rng(6)
    model = sc.reference_cnn(seed=6, backend=backend, dtype=F64)
    model.fuse_conv_pool = fuse
    for p in model.parameters():  # non-zero biases, so their gradients are exercised
        if p.name == "bias":
            p.value[:] = rng.standard_normal(p.value.shape) * 0.05
    loss = sc.SoftmaxCrossEntropy(backend=backend, dtype=F64)
    x = rng.random((2, 3, 32, 32))
    y = np.array([3, 7])
    loss.forward(model.forward(x), y)
    dx = model.backward(loss.backward(), need_input_grad=True)
    fused = [s.name for s in model.steps if isinstance(s, ConvReLUPool)]
    assert fused == (["conv1+pool1", "conv2+pool2"] if fuse else [])
    kinks = _kinks(model)

    def objective() -> float:
        value = loss.forward(model.forward(x), y)
        # The check is valid only where the network is smooth: no perturbation
        # may move a ReLU input across 0 or change a max-pool winner.
        assert _kinks(model) == kinks, "a perturbation crossed a ReLU or max-pool kink"
        return value

    checks = [("input", x, dx)] + [(n, p.value, p.grad.copy())
                                   for n, p in model.named_parameters()]
    for name, value, ana in checks:
        idx = sample_idx(value.size, rng, at_most=12)
        num = numeric_grad(objective, value, idx)
        err = rel_error(num, ana.reshape(-1)[idx])
        assert err <= MAX_REL_ERR, f"d loss / d {name}: relative error {err:.2e}"
