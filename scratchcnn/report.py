"""What a trained model gets right and wrong: the ``--eval-only`` report.

``python -m scratchcnn.train --eval-only RUN_FOLDER`` evaluates the weights
(``scratchcnn.loop.evaluate``, as training does) and writes, next to them
(or into ``--out``):

* ``confusion.csv`` / ``confusion.png``: rows are the true classes, columns the
  predicted ones, each cell a count of test images (the picture colours each row
  by its share of that class, so rows with different sizes compare);
* ``per_class.csv``: per class, images, correct, accuracy, and the class it is
  most often mistaken for; the same table is printed in the terminal and
  written as Markdown (``per_class.md``, which the README includes);
* ``predictions.png``: the first 32 test images with their true and predicted
  labels and the predicted probability; misclassified ones in red, with a red
  frame.

``curves.png`` (written by training) is left as it is.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

__all__ = ["GRID_IMAGES", "confusion_matrix", "per_class_rows", "write_report"]

#: Test images shown in predictions.png (the first ones, so the picture is reproducible).
GRID_IMAGES = 32


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def per_class_rows(cm: np.ndarray, names: list[str]) -> list[dict]:
    """Per class: ``class, images, correct, accuracy`` (None without images), ``confused_with``."""
    rows = []
    for i, name in enumerate(names):
        total, correct = int(cm[i].sum()), int(cm[i, i])
        wrong = cm[i].copy()
        wrong[i] = -1
        j = int(np.argmax(wrong))
        rows.append({"class": name, "images": total, "correct": correct,
                     "accuracy": correct / total if total else None,
                     "confused_with": names[j] if wrong[j] > 0 else ""})
    return rows


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _table(rows: list[dict], overall: float) -> str:
    width = max(12, *(len(r["class"]) for r in rows))
    lines = [f"{'class':<{width}} {'images':>7} {'correct':>8} {'accuracy':>9}  most often "
             f"taken for"]
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else "-"
        lines.append(f"{r['class']:<{width}} {r['images']:>7} {r['correct']:>8} {acc:>9}  "
                     f"{r['confused_with']}")
    n = sum(r["images"] for r in rows)
    lines.append(f"{'all':<{width}} {n:>7} {sum(r['correct'] for r in rows):>8} "
                 f"{100 * overall:>8.2f}%")
    return "\n".join(lines)


def _markdown(rows: list[dict], overall: float, what: str) -> str:
    lines = [f"Per-class test accuracy ({what}):", "",
             "| class | images | correct | accuracy | most often taken for |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else "–"
        lines.append(f"| {r['class']} | {r['images']:,} | {r['correct']:,} | {acc} | "
                     f"{r['confused_with']} |")
    lines.append(f"| **all** | {sum(r['images'] for r in rows):,} | "
                 f"{sum(r['correct'] for r in rows):,} | {100 * overall:.2f}% | |")
    return "\n".join(lines) + "\n"


def plot_confusion(cm: np.ndarray, names: list[str], path: Path, title: str = "") -> None:
    """The confusion matrix as a picture: counts in the cells, colour = share of the row."""
    from scratchcnn.plots import plt, save_figure

    k = len(names)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted class", ylabel="true class", title=title or "confusion matrix")
    save_figure(fig, path)


def plot_predictions(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     names: list[str], path: Path, title: str = "") -> None:
    """A grid of test images, true and predicted label; misclassified ones marked in red."""
    from matplotlib.patches import Rectangle

    from scratchcnn.plots import plt, save_figure

    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.transpose(1, 2, 0))
        pred = int(np.argmax(probs[i]))
        ok = pred == int(labels[i])
        colour = "black" if ok else "red"
        mark = "" if ok else "✗ "
        ax.set_title(f"{mark}{names[pred]} {100 * probs[i, pred]:.0f}%\n(true: "
                     f"{names[int(labels[i])]})", fontsize=7, color=colour)
        if not ok:
            h, w = img.shape[1:]
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="red",
                                   linewidth=3))
    fig.suptitle(title or "predicted (true) labels; misclassified in red", fontsize=9)
    save_figure(fig, path)


def write_report(model, data, out_dir: str | os.PathLike[str], *, limit: int | None = None,
                 batch_size: int = 250, accuracy: float | None = None,
                 weights: str = "") -> dict:
    """Predict the test set (its first ``limit`` images) with ``model`` and write the report.

    ``data``: a ``scratchcnn.data.datasets.Dataset``. ``accuracy``: the accuracy
    ``scratchcnn.loop.evaluate`` measured (printed as the overall figure). Prints
    the per-class table; returns ``{"confusion": array, "per_class": rows, "files":
    [paths]}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = min(limit or len(data.test_labels), len(data.test_labels))
    x, y = data.test_images[:n], data.test_labels[:n]
    names = list(data.label_names)
    probs = model.predict(x, batch_size=batch_size)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, len(names))
    rows = per_class_rows(cm, names)
    overall = float(np.trace(cm) / max(cm.sum(), 1)) if accuracy is None else accuracy

    _write_text(out / "confusion.csv", _csv(
        [["true \\ predicted", *names], *([names[i], *cm[i].tolist()] for i in range(len(names)))]))
    _write_text(out / "per_class.csv", _csv(
        [["class", "images", "correct", "accuracy", "most_often_taken_for"],
         *([r["class"], r["images"], r["correct"],
            "" if r["accuracy"] is None else f"{r['accuracy']:.4f}", r["confused_with"]]
           for r in rows)]))
    what = f"{data.name}, {n} test images, accuracy {100 * overall:.2f}%"
    _write_text(out / "per_class.md", _markdown(rows, overall, what))
    plot_confusion(cm, names, out / "confusion.png", title=f"confusion matrix ({what})")
    k = min(GRID_IMAGES, n)
    plot_predictions(x[:k], y[:k], probs[:k], names, out / "predictions.png",
                     title=f"first {k} {data.name} test images: predicted label and probability "
                           f"(true label); misclassified in red")
    print(_table(rows, overall))
    files = [out / f for f in ("confusion.png", "confusion.csv", "per_class.csv",
                               "per_class.md", "predictions.png")]
    print(f"report{' of ' + weights if weights else ''}: wrote "
          f"{', '.join(str(f) for f in files)}")
    return {"confusion": cm, "per_class": rows, "files": files}
