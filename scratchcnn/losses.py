"""Softmax cross-entropy on logits (the network's loss)."""

from __future__ import annotations

import numpy as np

from scratchcnn.backend import UsesBackend
from scratchcnn.checks import check_array, check_float_dtype, is_device_array


class SoftmaxCrossEntropy(UsesBackend):
    """Mean over the batch of -log softmax(logits)[label], computed stably.

    ``forward(logits, labels)`` returns the loss as a Python float and keeps the
    gradient; ``backward()`` returns d(loss)/d(logits), shape (N, K). The
    per-sample losses of the last call stay in ``losses`` (N,).

    ``forward(logits, labels, mean_over=M)``: the logits are a share of a batch of
    M samples (a data-parallel rank's rows); the gradient is that of the mean over
    all M, so the shares' gradients are exactly the rows of the whole batch's.

    On the ``"cuda"`` backend the logits and the gradient stay on the device;
    the (host) labels go to the device, and the N per-sample losses come back.
    """

    name = "softmax_cross_entropy"

    def __init__(self, *, backend: str = "parallel", dtype: object = np.float32) -> None:
        self.dtype = check_float_dtype(dtype)
        self.backend = backend

    def forward(self, logits: np.ndarray, labels: np.ndarray,
                mean_over: int | None = None) -> float:
        be = self._k
        logits = be.to_device(check_array(self.name, logits, ("N", "K"), self.dtype))
        n, k = logits.shape
        labels = check_labels(self.name, labels, n, k)
        if getattr(self, "_shape_of_buffers", None) != (logits.shape, self._backend_name):
            self.losses = be.empty(n, self.dtype)  # reused while the shape stays the same
            self._dlogits = be.empty(logits.shape, self.dtype)
            self._shape_of_buffers = (logits.shape, self._backend_name)
        total = n if mean_over is None else int(mean_over)
        if total < n:
            raise ValueError(f"{self.name}: mean_over={mean_over} is smaller than the {n} "
                             f"samples given")
        inv_n = self.dtype.type(1) / self.dtype.type(total)
        be.softmax_cross_entropy(logits, be.to_device(labels), inv_n, self.losses,
                                 self._dlogits)
        # Summed in float64 in a fixed order: the same on every backend.
        return float(be.to_host(self.losses).astype(np.float64).sum() / n)

    def backward(self) -> np.ndarray:
        if not hasattr(self, "_dlogits"):
            raise RuntimeError(f"{self.name}: backward() called before forward()")
        return self._dlogits


def check_labels(layer: str, labels: object, n: int, num_classes: int) -> np.ndarray:
    """Integer class labels of shape (n,) with values in [0, num_classes); returns int64."""
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"{layer}: expected labels as a numpy integer array of shape ({n},), "
                         f"got {type(labels).__name__}")
    if labels.shape != (n,):
        raise ValueError(f"{layer}: expected labels of shape ({n},) to match the logits, "
                         f"got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{layer}: expected integer labels of shape ({n},), got dtype "
                         f"{labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{layer}: labels must lie in [0, {num_classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return np.ascontiguousarray(labels, dtype=np.int64)


def accuracy_count(logits: np.ndarray, labels: np.ndarray) -> int:
    """How many rows of ``logits`` (host or device array) have their largest entry at ``labels``."""
    if is_device_array(logits):  # (N, K) scores come back from the GPU: a small copy
        logits = logits.copy_to_host()
    return int((logits.argmax(axis=1) == labels).sum())
