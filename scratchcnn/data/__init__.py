"""CIFAR-10 reading, download and the thread-pool batch loader.

Public API::

    load_cifar10(data_dir, download=True) -> Cifar10   # uint8 NCHW images, int64 labels
    download_cifar10(data_dir, url=None, md5=None, progress=True, timeout=30) -> Path
    BatchLoader(images, labels, batch_size, *, shuffle, seed, augment, threads,
                prefetch, drop_last).epoch(e) -> iterator of (x float32, y int64)
    DataError                                          # every data problem; one-line message
    load_dataset(name, data_dir) -> Dataset            # cifar10, fashion-mnist, mnist, folder
    read_image(path, input_shape) -> uint8 (C, H, W)   # one image file, resized and cropped
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
from .datasets import DATASETS, Dataset, load_dataset
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
from .folder import read_image
from .loader import BatchLoader

__all__ = [
    "BATCH_FOLDER",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATASETS",
    "LABEL_NAMES",
    "BatchLoader",
    "Cifar10",
    "DataError",
    "Dataset",
    "default_data_dir",
    "download_cifar10",
    "load_cifar10",
    "load_dataset",
    "read_batch",
    "read_image",
    "read_meta",
]
