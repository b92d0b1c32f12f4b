"""Loss and accuracy curves of a training run (matplotlib, written atomically)."""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    """Save ``fig`` as PNG atomically (``scratchcnn.files``), then close it."""
    from scratchcnn.files import write_bytes_atomic

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def plot_curves(metrics: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Train/test loss and accuracy per epoch, side by side, into ``path``."""
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (("train", "train", "-o"), ("test", "test", "-s")):
        ax_loss.plot(epochs, [m[f"{key}_loss"] for m in metrics], style, label=label)
        ax_acc.plot(epochs, [100 * m[f"{key}_acc"] for m in metrics], style, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
