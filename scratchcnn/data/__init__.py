"""CIFAR-10 reading, download and the thread-pool batch loader.

Public API::

    load_cifar10(data_dir, download=True) -> Cifar10   # uint8 NCHW images, int64 labels
    download_cifar10(data_dir, url=None, md5=None, progress=True, timeout=30) -> Path
    BatchLoader(images, labels, batch_size, *, shuffle, seed, augment, threads,
                prefetch, drop_last).epoch(e) -> iterator of (x float32, y int64)
    DataError                                          # every data problem; one-line message
"""

from .cifar10 import (
    BATCH_FOLDER,
    LABEL_NAMES,
    Cifar10,
    DataError,
    default_data_dir,
    load_cifar10,
    read_batch,
    read_meta,
)
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
from .loader import BatchLoader

__all__ = [
    "BATCH_FOLDER",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "LABEL_NAMES",
    "BatchLoader",
    "Cifar10",
    "DataError",
    "default_data_dir",
    "download_cifar10",
    "load_cifar10",
    "read_batch",
    "read_meta",
]
