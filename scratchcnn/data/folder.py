"""Your own images: a folder with one subfolder per class (torchvision's ``ImageFolder``).

Layout (``--dataset folder --data-dir PATH``)::

    PATH/train/<class name>/<any name>.png|.jpg|.jpeg|.bmp|.gif|.webp
    PATH/test/<class name>/...

Class names are the subfolder names of ``train/``, sorted (label 0 is the
first, as in torchvision); ``test/`` may only use those names. Without a
``test/`` folder, every 10th image of each class (in sorted file-name order)
is held out as the test set: a fixed split, the same on every run.

Every image is decoded with Pillow, converted to RGB (or to grayscale, ``L``,
for a 1-channel model), its shorter side resized to the target size and the
centre cropped to ``H x W`` (torchvision's ``Resize(size)`` + ``CenterCrop``),
then stored as uint8 NCHW like CIFAR-10. Decoding runs in a thread pool
(Pillow releases the GIL while decoding and resizing); the batches then come
from the same ``BatchLoader`` as every other dataset. A file that cannot be
decoded gives one line on stderr and is skipped; a class left without images
is an error.

:func:`read_image` is the same preprocessing for one file; ``scratchcnn.predict``
uses it.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .cifar10 import DataError, one_line

__all__ = ["IMAGE_SUFFIXES", "ImageError", "load_image_folder", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HOLD_OUT_EVERY = 10


class ImageError(ValueError):
    """One image file cannot be used; ``str(err)`` is one line naming the file."""


def read_image(path: str | os.PathLike[str], input_shape: tuple[int, int, int]) -> np.ndarray:
    """One image file as uint8 ``(C, H, W)`` for a model taking ``input_shape``.

    Any size and any mode Pillow reads: converted to RGB (C = 3) or grayscale
    (C = 1), the shorter side resized to max(H, W) (bilinear, antialiased), the
    centre cropped to H x W. Raises :class:`ImageError` (one line) otherwise.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow is an install requirement
        raise ImageError("reading image files needs Pillow; pip install pillow") from None
    c, h, w = input_shape
    path = Path(path)
    if c not in (1, 3):
        raise ImageError(f"{path}: the model takes {c}-channel images; only 1 (grayscale) and "
                         f"3 (RGB) are supported for image files")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if c == 3 else "L")
            scale = max(h / im.height, w / im.width)
            size = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BILINEAR)
            left, top = (im.width - w) // 2, (im.height - h) // 2
            arr = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file; check the path") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder; pass image files") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read; pass a PNG or JPEG "
                         f"file") from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, decompression bomb, ...
        raise ImageError(f"{path}: cannot decode the image ({one_line(e)}); pass an intact "
                         f"PNG or JPEG file") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _list_classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _decode(paths: list[Path], input_shape: tuple[int, int, int], threads: int
            ) -> tuple[np.ndarray, list[bool]]:
    """Decode ``paths`` in a thread pool; (images, ok flags). Bad files: one line each."""
    out = np.zeros((len(paths), *input_shape), np.uint8)

    def one(i: int) -> bool:
        try:
            out[i] = read_image(paths[i], input_shape)
            return True
        except ImageError as e:
            print(f"warning: {e}; skipped", file=sys.stderr)
            return False

    if threads <= 0:
        ok = [one(i) for i in range(len(paths))]
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="scratchcnn-decode") as pool:
            ok = list(pool.map(one, range(len(paths))))
    return out, ok


def load_image_folder(root: str | os.PathLike[str], image_size: int = 32, channels: int = 3,
                      *, threads: int = 2) -> dict:
    """Load ``root/train/<class>/*`` and ``root/test/<class>/*`` (see the module docstring).

    Returns a dict: ``train_images``/``test_images`` uint8 ``(N, channels,
    image_size, image_size)``, ``train_labels``/``test_labels`` int64,
    ``label_names`` (sorted class folder names), ``split`` ("folders" or
    "every 10th image held out"). :class:`DataError` (one line) for a bad layout.
    """
    root = Path(root)
    shape = (channels, image_size, image_size)
    hint = ("arrange it as PATH/train/<class>/<image> (and PATH/test/<class>/<image>), one "
            "subfolder per class")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; {hint}")
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: no train/ folder; {hint}")
    classes = _list_classes(train_dir)
    if len(classes) < 2:
        raise DataError(f"{train_dir}: found {len(classes)} class folder(s), need at least 2; "
                        f"{hint}")
    train_files: list[tuple[Path, int]] = []
    test_files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = _files(train_dir / name)
        if not files:
            raise DataError(f"{train_dir / name}: no image files ({', '.join(IMAGE_SUFFIXES)}); "
                            f"add images or remove the folder")
        if test_dir.is_dir():
            train_files += [(f, label) for f in files]
        else:
            test_files += [(f, label) for k, f in enumerate(files) if k % HOLD_OUT_EVERY ==
                           HOLD_OUT_EVERY - 1]
            train_files += [(f, label) for k, f in enumerate(files) if k % HOLD_OUT_EVERY !=
                            HOLD_OUT_EVERY - 1]
    split = "every 10th image held out"
    if test_dir.is_dir():
        split = "folders"
        extra = sorted(set(_list_classes(test_dir)) - set(classes))
        if extra:
            raise DataError(f"{test_dir / extra[0]}: class {extra[0]!r} is not among the "
                            f"train/ classes {classes}; rename or remove it")
        for label, name in enumerate(classes):
            if (test_dir / name).is_dir():
                test_files += [(f, label) for f in _files(test_dir / name)]
    out: dict = {"label_names": classes, "split": split}
    for part, files in (("train", train_files), ("test", test_files)):
        images, ok = _decode([f for f, _ in files], shape, threads)
        labels = np.array([lab for _, lab in files], np.int64)
        keep = np.array(ok, bool) if files else np.zeros(0, bool)
        out[f"{part}_images"] = np.ascontiguousarray(images[keep])
        out[f"{part}_labels"] = labels[keep] if len(labels) else labels
        if part == "train":
            counts = np.bincount(out["train_labels"], minlength=len(classes))
            if counts.min() == 0:
                empty = classes[int(np.argmin(counts))]
                raise DataError(f"{train_dir / empty}: no readable images left in this class; "
                                f"fix or replace its files")
    if len(out["test_labels"]) == 0:
        raise DataError(f"{root}: no test images (test/ is empty, or every class has fewer "
                        f"than {HOLD_OUT_EVERY} images); add images to test/<class>/")
    return out
