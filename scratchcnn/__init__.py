"""scratchcnn: a CNN written from scratch in NumPy and Numba, serial vs parallel.

The public names below are imported lazily, so that ``configure_threads`` (and
the training CLI) can set Numba's thread-pool size before Numba is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Conv2D": "scratchcnn.layers",
    "MaxPool2D": "scratchcnn.layers",
    "Dense": "scratchcnn.layers",
    "ReLU": "scratchcnn.layers",
    "Flatten": "scratchcnn.layers",
    "Parameter": "scratchcnn.layers",
    "Sequential": "scratchcnn.model",
    "reference_cnn": "scratchcnn.model",
    "SoftmaxCrossEntropy": "scratchcnn.losses",
    "Adam": "scratchcnn.optim",
    "SGD": "scratchcnn.optim",
    "configure_threads": "scratchcnn.threads",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scratchcnn' has no attribute {name!r}")
