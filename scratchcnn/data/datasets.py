"""The datasets the training CLI, ``scratchcnn.predict`` and the benchmarks can use.

    data = load_dataset("fashion-mnist", "./data")    # -> Dataset
    data.train_images  # uint8 (60000, 1, 28, 28), NCHW
    data.input_shape, data.num_classes, data.label_names
    model = reference_cnn(input_shape=data.input_shape, num_classes=data.num_classes)

=================  =========================  ============  ==================================
name               files (in ``data_dir``)    images        model
=================  =========================  ============  ==================================
``cifar10``        ``cifar-10-batches-py/``   (3, 32, 32)   ``reference_cnn()``: flatten 1024
``fashion-mnist``  ``fashion-mnist/*.gz``     (1, 28, 28)   ``reference_cnn(input_shape=(1,
                                                            28, 28))``: flatten 64x3x3 = 576
``mnist``          ``mnist/*.gz``             (1, 28, 28)   as fashion-mnist
``folder``         ``train/<class>/*.png``…   (3, S, S)     ``input_shape=(3, S, S)``,
                                                            ``num_classes`` = class folders
=================  =========================  ============  ==================================

Each run records ``Dataset.meta()`` (name, class names, input shape) in its
``config.json`` and checkpoint metadata; :func:`recorded_meta` reads it back
(a checkpoint from before datasets were recorded is CIFAR-10).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cifar10 import LABEL_NAMES, DataError

__all__ = ["CIFAR10_META", "DATASETS", "Dataset", "dataset_for_run", "load_dataset",
           "recorded_meta", "weights_file"]

#: Names accepted by ``--dataset``.
DATASETS = ("cifar10", "fashion-mnist", "mnist", "folder")
#: What a checkpoint without a recorded dataset was trained on.
CIFAR10_META = {"name": "cifar10", "label_names": list(LABEL_NAMES), "input_shape": [3, 32, 32]}
DEFAULT_IMAGE_SIZE = 32


@dataclass(frozen=True, repr=False)
class Dataset:
    """A dataset in memory: uint8 NCHW images and int64 labels per split, class names."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W): what the model takes."""
        return tuple(int(v) for v in self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def meta(self) -> dict:
        """``{"name", "label_names", "input_shape"}``: recorded with every run."""
        return {"name": self.name, "label_names": list(self.label_names),
                "input_shape": list(self.input_shape)}

    def __repr__(self) -> str:
        return (f"Dataset({self.name}: {len(self.train_labels)} train / "
                f"{len(self.test_labels)} test images of {self.input_shape}, "
                f"{self.num_classes} classes)")


def load_dataset(name: str, data_dir: str | os.PathLike[str], *, download: bool = True,
                 image_size: int | None = None, threads: int = 2,
                 progress: bool = True) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``data_dir``.

    ``download``: fetch missing CIFAR-10/MNIST/Fashion-MNIST files (MD5-checked).
    ``image_size``: side of the square images of a ``folder`` dataset (default
    32); the other datasets have a fixed size. ``threads``: decoding threads for
    ``folder``. Raises :class:`DataError` with a one-line message.
    """
    if name not in DATASETS:
        raise DataError(f"--dataset {name}: unknown dataset; choose one of "
                        f"{', '.join(DATASETS)}")
    if image_size is not None and name != "folder":
        raise DataError(f"--image-size {image_size}: only for --dataset folder ({name} images "
                        f"have a fixed size); leave it out")
    if name == "cifar10":
        from .cifar10 import load_cifar10

        c = load_cifar10(data_dir, download=download, progress=progress)
        return Dataset(name, c.train_images, c.train_labels, c.test_images, c.test_labels,
                       list(c.label_names))
    if name == "folder":
        from .folder import load_image_folder

        d = load_image_folder(data_dir, image_size or DEFAULT_IMAGE_SIZE, threads=threads)
    else:
        from .idx import load_idx_dataset

        d = load_idx_dataset(name, data_dir, download=download, progress=progress)
    return Dataset(name, d["train_images"], d["train_labels"], d["test_images"],
                   d["test_labels"], list(d["label_names"]))


def recorded_meta(checkpoint: str | os.PathLike[str]) -> dict:
    """The dataset a checkpoint was trained on: ``{"name", "label_names", "input_shape"}``.

    Read from the checkpoint's metadata, else from ``config.json`` in its folder;
    a checkpoint that records neither (written before datasets were recorded, or
    a weights-only ``Sequential.save`` file) is CIFAR-10.
    """
    from scratchcnn.model import load_npz

    path = Path(checkpoint)
    arrays = load_npz(path)
    if "meta" in arrays:
        try:
            meta = json.loads(str(arrays["meta"]))
        except json.JSONDecodeError:
            meta = {}
        found = (meta.get("config") or {}).get("dataset")
        if isinstance(found, dict) and {"name", "label_names", "input_shape"} <= found.keys():
            return found
    config = path.parent / "config.json"
    if config.is_file():
        try:
            found = json.loads(config.read_text()).get("dataset")
        except (json.JSONDecodeError, OSError, AttributeError):
            found = None
        if isinstance(found, dict) and {"name", "label_names", "input_shape"} <= found.keys():
            return found
    return dict(CIFAR10_META)


def weights_file(path: str | os.PathLike[str]) -> Path:
    """A weights file, or a run folder: its ``best.npz``, else its ``checkpoint.npz``.

    ValueError (one line) when there is neither.
    """
    p = Path(path)
    if p.is_dir():
        for name in ("best.npz", "checkpoint.npz"):
            if (p / name).is_file():
                return p / name
        raise ValueError(f"{p}: no best.npz or checkpoint.npz in this folder; pass a run folder "
                         f"or a .npz file")
    if not p.is_file():
        raise ValueError(f"{p}: no such file or folder; pass a run folder or a .npz file")
    return p


def dataset_for_run(name: str | None, data_dir: str | os.PathLike[str], *,
                    checkpoint: str | os.PathLike[str] | None = None,
                    image_size: int | None = None, threads: int = 2,
                    checkpoint_is_run: bool = False, progress: bool = True) -> Dataset:
    """The training CLI's one call: ``name`` if given, else the dataset ``checkpoint``
    was trained on (``--resume``/``--eval-only``), else CIFAR-10; downloaded if missing.

    A ``folder`` dataset reused from a checkpoint keeps the checkpoint's image size.
    ``checkpoint_is_run``: a folder ``checkpoint`` means its ``checkpoint.npz``
    (``--resume``), else its ``best.npz`` (``--eval-only``).
    """
    recorded = None
    if checkpoint is not None:  # a path that does not exist is reported by the caller
        p = Path(checkpoint)
        if p.is_dir():
            p = p / "checkpoint.npz" if checkpoint_is_run else weights_file(p)
        if p.is_file():
            recorded = recorded_meta(p)
    if checkpoint_is_run and recorded and name and name != recorded["name"]:
        raise DataError(f"--dataset {name} differs from the resumed run's {recorded['name']}; "
                        f"a resumed run keeps its settings")
    if name is None:
        name = recorded["name"] if recorded else "cifar10"
    if (name == "folder" and image_size is None and recorded
            and recorded["name"] == "folder"):
        image_size = int(recorded["input_shape"][1])
    return load_dataset(name, data_dir, image_size=image_size, threads=threads,
                        progress=progress)
