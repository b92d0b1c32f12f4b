"""The --eval-only report: confusion matrix, per-class accuracy, predictions grid."""

from __future__ import annotations

import csv

import numpy as np

from scratchcnn.data.datasets import Dataset
from scratchcnn.model import reference_cnn
from scratchcnn.report import GRID_IMAGES, confusion_matrix, per_class_rows, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_and_rows():
    cm = confusion_matrix(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 1, 0]]
    rows = per_class_rows(cm, ["a", "b", "c"])
    assert [r["accuracy"] for r in rows] == [0.5, 2 / 3, 0.0]
    assert [r["confused_with"] for r in rows] == ["b", "a", "b"]
    empty = per_class_rows(confusion_matrix(np.array([0]), np.array([0]), 2), ["a", "b"])
    assert empty[1] == {"class": "b", "images": 0, "correct": 0, "accuracy": None,
                        "confused_with": ""}
    assert empty[0]["confused_with"] == ""  # never wrong: no "most often taken for"


def _tiny(shape, n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = rng.integers(0, 3, n).astype(np.int64)
    return Dataset("folder", x[:4], y[:4], x, y, ["ant", "bee", "cow"])


def test_write_report_files_agree(tmp_path, capsys):
    data = _tiny((3, 20, 20))
    model = reference_cnn(seed=2, backend="serial", input_shape=(3, 20, 20), num_classes=3)
    result = write_report(model, data, tmp_path, batch_size=16)
    out = capsys.readouterr().out
    pred = model.predict(data.test_images).argmax(1)
    cm = result["confusion"]
    assert cm.sum() == 40 and np.trace(cm) == int((pred == data.test_labels).sum())

    with open(tmp_path / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", "ant", "bee", "cow"]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == cm.tolist()
    with open(tmp_path / "per_class.csv") as f:
        per = list(csv.DictReader(f))
    assert [r["class"] for r in per] == ["ant", "bee", "cow"]
    assert sum(int(r["images"]) for r in per) == 40
    assert [int(r["correct"]) for r in per] == np.diag(cm).tolist()
    md = (tmp_path / "per_class.md").read_text()
    assert "| ant |" in md and f"{100 * np.trace(cm) / 40:.2f}%" in md
    for name in ("confusion.png", "predictions.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    # the terminal table: one line per class and a total line with the overall accuracy
    acc = np.trace(cm) / 40
    assert "ant" in out and "cow" in out and f"{100 * acc:.2f}%" in out
    assert "wrote" in out and not list(tmp_path.glob(".*.tmp"))


def test_write_report_grayscale_and_limit(tmp_path, capsys):
    data = _tiny((1, 28, 28), n=GRID_IMAGES + 10)
    model = reference_cnn(seed=0, backend="serial", input_shape=(1, 28, 28), num_classes=3)
    result = write_report(model, data, tmp_path / "new", limit=5, accuracy=0.25)
    assert result["confusion"].sum() == 5
    assert (tmp_path / "new" / "predictions.png").read_bytes()[:8] == PNG
    assert "25.00%" in capsys.readouterr().out  # the accuracy given (loop.evaluate's) is shown
