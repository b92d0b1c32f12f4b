"""The CIFAR-10 layout, the data folder and the one error type of the data package.

Shared by the reader (``cifar10.py``) and the downloader (``download.py``), so
neither imports the other's module at import time (no import cycle).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Name of the folder the official archive extracts to.
BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
#: Every file of the official layout; the downloader checks for these too.
ALL_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
#: The standard class names, for reference (the loader reads them from batches.meta).
LABEL_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
ROW_LENGTH = 3 * 32 * 32

#: Environment variable naming the folder that CONTAINS cifar-10-batches-py/.
DATA_ENV = "SCRATCHCNN_DATA"

HOW_TO_POINT = (
    f"point --data-dir DIR or {DATA_ENV}=DIR at a complete copy "
    f"(DIR is the folder that contains {BATCH_FOLDER}/)"
)


class DataError(Exception):
    """A problem with the dataset files; ``str(err)`` is one line fit to show a user."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: object) -> str:
    """Collapse ``text`` to a single line (user-facing messages must be one line)."""
    return " ".join(str(text).split())


def default_data_dir() -> Path:
    """The data folder to use when none is given: ``$SCRATCHCNN_DATA``, else ``./data``."""
    return Path(os.environ.get(DATA_ENV) or "data")
