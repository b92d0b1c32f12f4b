"""Wrong input at the public API raises a ValueError naming the layer and the shapes."""

from __future__ import annotations

import numpy as np
import pytest

import scratchcnn as sc


@pytest.fixture(scope="module")
def model():
    return sc.reference_cnn(seed=0, backend="serial")


def _raises(fn, *needles):
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_wrong_channel_count(model):
    x = np.zeros((2, 1, 32, 32), np.float32)
    _raises(lambda: model.forward(x), "conv1", "(N, 3, H, W)", "(2, 1, 32, 32)")


def test_wrong_ndim(model):
    _raises(lambda: model.forward(np.zeros((3, 32, 32), np.float32)),
            "conv1", "4-D", "(N, 3, H, W)", "(3, 32, 32)")


def test_wrong_dtype(model):
    for dt in (np.float64, np.uint8, np.int64):
        _raises(lambda dt=dt: model.forward(np.zeros((2, 3, 32, 32), dt)),
                "conv1", "float32", np.dtype(dt).name, "(2, 3, 32, 32)")


def test_non_contiguous(model):
    x = np.zeros((2, 32, 32, 3), np.float32).transpose(0, 3, 1, 2)
    _raises(lambda: model.forward(x), "conv1", "C-contiguous", "(2, 3, 32, 32)")
    x = np.zeros((4, 3, 32, 32), np.float32)[::2]
    _raises(lambda: model.forward(x), "conv1", "C-contiguous")


def test_wrong_image_size_is_caught_at_the_dense_layer(model):
    _raises(lambda: model.forward(np.zeros((2, 3, 40, 40), np.float32)),
            "dense1", "(N, 1024)", "(2, 2304)")


def test_image_smaller_than_kernel():
    conv = sc.Conv2D(3, 4, 5, backend="serial")
    _raises(lambda: conv.forward(np.zeros((1, 3, 4, 4), np.float32)), "conv2d", "(1, 3, 4, 4)")
    pool = sc.MaxPool2D(3, backend="serial")
    _raises(lambda: pool.forward(np.zeros((1, 3, 2, 8), np.float32)), "maxpool2d", "(1, 3, 2, 8)")


def test_empty_batch():
    dense = sc.Dense(4, 2, backend="serial")
    _raises(lambda: dense.forward(np.zeros((0, 4), np.float32)), "dense", "(0, 4)")


def test_not_an_array():
    _raises(lambda: sc.ReLU(backend="serial").forward([1.0, 2.0]), "relu", "list")


def test_backward_shape_mismatch(model):
    model.forward(np.zeros((2, 3, 32, 32), np.float32))
    _raises(lambda: model.backward(np.zeros((3, 10), np.float32)),
            "dense2 (backward)", "(2, 10)", "(3, 10)")
    _raises(lambda: model.backward(np.zeros((2, 10), np.float64)), "dense2", "float32")


def test_loss_inputs():
    loss = sc.SoftmaxCrossEntropy(backend="serial")
    logits = np.zeros((4, 10), np.float32)
    _raises(lambda: loss.forward(logits, np.zeros(3, np.int64)), "(4,)", "(3,)")
    _raises(lambda: loss.forward(logits, np.zeros(4, np.float32)), "integer", "float32")
    _raises(lambda: loss.forward(logits, np.array([0, 1, 2, 10])), "[0, 10)")
    _raises(lambda: loss.forward(logits[:, :5:2], np.zeros(4, np.int64)), "C-contiguous")


def test_bad_constructor_arguments():
    _raises(lambda: sc.Conv2D(3, 4, 2, padding="same"), "odd kernel")
    _raises(lambda: sc.Conv2D(3, 4, 3, stride=0), "stride")
    _raises(lambda: sc.Conv2D(3, 4, 3, padding=-1), "padding")
    _raises(lambda: sc.Dense(0, 4), "dense", "in_features", "got 0")
    _raises(lambda: sc.Dense(3, 4, backend="gpu"), "dense", "unknown backend", "serial")
    _raises(lambda: sc.Dense(3, 4, dtype=np.float16), "dense", "float16")
    _raises(lambda: sc.Adam(sc.Dense(3, 4).params(), lr=-1), "Adam", "lr", "-1")


def test_load_state_mismatch(tmp_path):
    m = sc.reference_cnn(seed=0, backend="serial")
    state = dict(m.state_dict())
    state["dense1.weight"] = np.zeros((10, 64), np.float32)
    _raises(lambda: m.load_state_dict(state), "dense1.weight", "(10, 64)", "(1024, 64)")
    del state["dense1.weight"]
    _raises(lambda: m.load_state_dict(state), "missing", "dense1.weight")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    _raises(lambda: m.load(bad), str(bad), "not a readable .npz")
    _raises(lambda: m.load(tmp_path / "nope.npz"), "no such file")


def test_save_load_roundtrip(tmp_path):
    a = sc.reference_cnn(seed=1, backend="serial")
    b = sc.reference_cnn(seed=2, backend="serial")
    a.save(tmp_path / "w.npz")
    b.load(tmp_path / "w.npz")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and pa.value.tobytes() == pb.value.tobytes()
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temporary file left
