"""The reference network memorizes 64 fixed images within 300 Adam steps, on both backends."""

from __future__ import annotations

import numpy as np

import scratchcnn as sc
from scratchcnn.loop import train_step


def _losses(backend: str, x: np.ndarray, y: np.ndarray, steps: int) -> list[float]:
    model = sc.reference_cnn(seed=0, backend=backend)
    loss = sc.SoftmaxCrossEntropy(backend=backend)
    opt = sc.Adam(model.parameters(), backend=backend)
    out = []
    for _ in range(steps):
        out.append(train_step(model, loss, opt, x, y).loss)
        if out[-1] < 0.05:
            break
    return out


def test_overfits_64_images_identically(numba_threads):
    rng = np.random.default_rng(42)
    x = rng.random((64, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    serial = _losses("serial", x, y, 300)
    numba_threads(2)
    parallel = _losses("parallel", x, y, 300)
    assert serial[-1] < 0.05, f"serial: loss {serial[-1]:.3f} after {len(serial)} steps"
    assert serial[0] > 2.0  # it really started from chance level
    assert parallel == serial  # identical losses, step by step
