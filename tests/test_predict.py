"""model.predict / model.evaluate and ``python -m scratchcnn.predict``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from scratchcnn import predict as predict_cli
from scratchcnn.checkpoint import Progress, save_checkpoint
from scratchcnn.data.loader import BatchLoader
from scratchcnn.loop import evaluate
from scratchcnn.losses import SoftmaxCrossEntropy
from scratchcnn.model import reference_cnn
from scratchcnn.optim import Adam

from conftest import FAKE_LABEL_NAMES

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def model():
    return reference_cnn(seed=1, backend="serial")


def _images(n: int, seed: int = 0, shape=(3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_predict_probabilities_any_n(model):
    x = _images(7)
    p = model.predict(x, batch_size=3)  # batches of 3, 3, 1
    assert p.shape == (7, 10) and p.dtype == np.float32
    assert np.allclose(p.sum(axis=1), 1, atol=1e-5) and (p >= 0).all()
    logits = model.forward(x.astype(np.float32) / np.float32(255))
    assert np.array_equal(p.argmax(1), logits.argmax(1))
    # the batch size changes at most the last bits (GEMMs grouped differently)
    assert np.allclose(model.predict(x, batch_size=100), p, rtol=1e-5, atol=1e-7)
    # uint8 is scaled as the loader scales; floats are taken as they are
    assert np.array_equal(model.predict(x.astype(np.float32) / np.float32(255), batch_size=3), p)
    assert model.predict(x[:0]).shape == (0, 10)


def test_evaluate_is_the_training_evaluation(model):
    x, y = _images(20, seed=2), np.arange(20) % 10
    with BatchLoader(x, y, 8, shuffle=False, threads=0) as ld:
        expected = evaluate(model, SoftmaxCrossEntropy(backend="serial"), ld.epoch(0))
    assert model.evaluate(x, y, batch_size=8) == expected
    acc = float((model.predict(x).argmax(1) == y).mean())
    assert model.evaluate(x, y)[1] == pytest.approx(acc)
    with pytest.raises(ValueError, match="20 images but 3 labels"):
        model.evaluate(x, y[:3])


@pytest.fixture
def run_dir(tmp_path, model):
    """A run folder with a best.npz that records nothing (as before datasets were recorded)."""
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "best.npz")
    return run


def _png(path, size=(50, 70), colour=(200, 30, 30), mode="RGB"):
    PIL.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)
    return str(path)


def test_cli_images_and_bad_files(run_dir, tmp_path, capsys):
    good = _png(tmp_path / "red.png")
    jpg = _png(tmp_path / "small.jpg", size=(9, 12), colour=(10, 200, 10))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = predict_cli.main([str(run_dir), good, str(bad), jpg, str(tmp_path / "missing.png"),
                             "--top-k", "2", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert "cifar10 model, 10 classes, input (3, 32, 32)" in lines[0]
    assert lines[1].startswith(f"{good}: ") and lines[2].startswith(f"{jpg}: ")
    assert lines[1].count("%") == 2  # top 2
    assert any(name in lines[1] for name in FAKE_LABEL_NAMES)
    err_lines = err.splitlines()
    assert len(err_lines) == 3 and "Traceback" not in err
    assert f"{bad}: not an image" in err_lines[0] and "missing.png: no such file" in err_lines[1]


def test_cli_from_test(run_dir, tmp_path, write_fake_cifar, capsys, model):
    files = write_fake_cifar(tmp_path / "data", n=6)
    code = predict_cli.main([str(run_dir / "best.npz"), "--from-test", "4", "--data-dir",
                             str(tmp_path / "data"), "--top-k", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    data, labels = files["test_batch"]
    probs = model.predict(data[:4].reshape(4, 3, 32, 32))
    for i in range(4):
        line = next(li for li in out.splitlines() if li.startswith(f"test image {i} "))
        assert f"(true: {FAKE_LABEL_NAMES[labels[i]]})" in line
        assert FAKE_LABEL_NAMES[int(probs[i].argmax())] in line.split(": ", 1)[1]
        assert ("<- wrong" in line) == (probs[i].argmax() != labels[i])
    correct = int((probs.argmax(1) == labels[:4]).sum())
    assert f"{correct} of 4 test images classified correctly" in out


def test_cli_uses_the_recorded_dataset(tmp_path, capsys):
    meta = {"name": "fashion-mnist", "input_shape": [1, 28, 28],
            "label_names": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                            "Shirt", "Sneaker", "Bag", "Ankle boot"]}
    m = reference_cnn(seed=0, backend="serial", input_shape=(1, 28, 28))
    save_checkpoint(tmp_path / "checkpoint.npz", m, Adam(m.parameters()),
                    Progress(epoch=1, config={"settings": {}, "dataset": meta}))
    img = _png(tmp_path / "shoe.png", size=(100, 60), colour=(90, 90, 90))
    assert predict_cli.main([str(tmp_path), img, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist model, 10 classes, input (1, 28, 28)" in out
    assert any(n in out.splitlines()[1] for n in meta["label_names"])


@pytest.mark.parametrize("args, needle", [
    (["nowhere"], "nothing to classify"),
    (["nowhere", "x.png"], "nowhere: no such file or folder"),
    (["--top-k", "0", "r", "x.png"], "--top-k"),
])
def test_cli_errors_are_one_line(args, needle, capsys):
    with pytest.raises(SystemExit) as e:
        predict_cli.main(args)
    assert e.value.code in (1, 2)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_cli_bad_npz_and_missing_test_data(run_dir, tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 50)
    with pytest.raises(SystemExit):
        predict_cli.main([str(junk), "x.png"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.npz: not a readable .npz" in err
    with pytest.raises(SystemExit):
        predict_cli.main([str(run_dir), "--from-test", "2", "--data-dir", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--from-test:" in err and "CIFAR-10 not found" in err


def test_cli_as_a_program(run_dir, tmp_path):
    img = _png(tmp_path / "a.png")
    r = subprocess.run([sys.executable, "-m", "scratchcnn.predict", str(run_dir), img,
                        "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith(f"{img}: ") and r.stdout.count("%") == 3
