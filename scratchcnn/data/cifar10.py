"""Read CIFAR-10 in its official "python version" layout, safely.

The dataset is a folder ``cifar-10-batches-py/`` holding six pickled batches
(``data_batch_1`` … ``data_batch_5``, ``test_batch``) and ``batches.meta``.
Pickle can run arbitrary code, so the files are read with a restricted
unpickler that only admits plain containers and NumPy array reconstruction:
a dataset file can never run code on this machine.

Images are returned as one uint8 array per split in **NCHW** layout,
``(N, 3, 32, 32)``, C-contiguous: the layout the whole project uses. Each
stored row is R(1024) G(1024) B(1024), every plane 32 rows of 32 pixels, so
NCHW is a plain reshape of the stored rows (no transposition, no copy per
image).

Every problem with the data (missing folder, missing or truncated file, wrong
shape, forbidden pickle content, failed download) raises :class:`DataError`
whose message is a single line naming the file, what is wrong, and what to do.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BATCH_FOLDER",
    "LABEL_NAMES",
    "TEST_FILE",
    "TRAIN_FILES",
    "Cifar10",
    "DataError",
    "default_data_dir",
    "load_cifar10",
    "read_batch",
    "read_meta",
    "safe_unpickle",
]

from .layout import (  # noqa: F401 - re-exported: the names have always lived here
    ALL_FILES,
    BATCH_FOLDER,
    DATA_ENV,
    HOW_TO_POINT,
    IMAGE_SHAPE,
    LABEL_NAMES,
    META_FILE,
    NUM_CLASSES,
    ROW_LENGTH,
    TEST_FILE,
    TRAIN_FILES,
    DataError,
    default_data_dir,
    one_line,
)


# --------------------------------------------------------------------------- unpickling


def _numpy_multiarray() -> Any:
    """NumPy's ``multiarray`` module, under its NumPy 2 name or its NumPy 1 name."""
    try:
        from numpy._core import multiarray  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


#: Largest array a dataset pickle may ask to allocate: a CIFAR-10 batch is 30 MB.
MAX_ARRAY_BYTES = 256 << 20


class _TooLarge(pickle.UnpicklingError):
    pass


def _check_alloc(shape: object, dtype: object) -> None:
    """Refuse an array of more than MAX_ARRAY_BYTES before it is allocated."""
    dims = shape if isinstance(shape, tuple) else (shape,)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    try:
        itemsize = np.dtype(dtype).itemsize if dtype is not None else 8
    except TypeError:
        itemsize = 8
    n = itemsize
    for d in dims:
        n *= d
    if n > MAX_ARRAY_BYTES:
        raise _TooLarge(f"the file asks for an array of {n:,} bytes (shape {shape!r}); "
                        f"CIFAR-10 arrays are at most {MAX_ARRAY_BYTES:,} bytes")


def _guarded_reconstruct(subtype: object, shape: object, dtype: object) -> Any:
    if subtype is not _GuardedNdarray and subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} is not numpy.ndarray")
    _check_alloc(shape, dtype)
    return _numpy_multiarray()._reconstruct(np.ndarray, shape, dtype)


class _GuardedNdarray:
    """Stands for ``numpy.ndarray`` in a pickle: as ``_reconstruct``'s subtype (the
    normal case) or called directly, with the size check first."""

    def __new__(cls, shape: object, dtype: object = float, *args: Any, **kw: Any) -> Any:
        _check_alloc(shape, dtype)
        return np.ndarray(shape, dtype, *args, **kw)


def _guarded_scalar(dtype: object, *args: Any) -> Any:
    if isinstance(dtype, np.dtype) and dtype.itemsize > MAX_ARRAY_BYTES:
        raise _TooLarge(f"the file asks for a scalar of {dtype.itemsize:,} bytes")
    return _numpy_multiarray().scalar(dtype, *args)


_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(text: object, encoding: object = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode`` as protocol < 3 pickles use it (str -> bytes in Latin-1, one byte
    per character); other codecs (some expand their input many times) are refused."""
    if not isinstance(text, str) or not isinstance(encoding, str) or (
            encoding.lower() not in _LATIN1) or rest:
        raise pickle.UnpicklingError(f"_codecs.encode is only admitted for Latin-1 text, got "
                                     f"encoding {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What a dataset pickle may name. None of these can allocate more than the file
    holds, except arrays, whose size is checked (MAX_ARRAY_BYTES) before allocation:
    ``builtins.bytearray(n)`` would allocate n bytes from a 30-byte file, so it is out."""
    allowed: dict[tuple[str, str], Any] = {
        # NumPy array reconstruction, under the NumPy 1 name (official Python 2
        # files, NumPy 1 re-packs) and the NumPy 2 name, size-checked.
        ("numpy.core.multiarray", "_reconstruct"): _guarded_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _guarded_reconstruct,
        ("numpy.core.multiarray", "scalar"): _guarded_scalar,
        ("numpy._core.multiarray", "scalar"): _guarded_scalar,
        ("numpy", "ndarray"): _GuardedNdarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of protocol < 3 store bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _latin1_encode,
    }
    # Plain builtin containers and scalars (only needed by protocol 0/1 pickles); each
    # holds no more than the pickle itself does.
    for name in ("set", "frozenset", "complex"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None


class _ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only what CIFAR-10 files contain.

    Allowed globals: NumPy array reconstruction (``_reconstruct``, ``ndarray``,
    ``dtype``, ``scalar``; array sizes capped before allocation),
    ``_codecs.encode`` and a few builtin containers.
    Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, …)
    raises before it is even imported.
    """

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        key = ("builtins" if module == "__builtin__" else module, name)
        try:
            return _ALLOWED[key]
        except KeyError:
            raise _ForbiddenGlobal(module, name) from None


def safe_unpickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (``encoding="bytes"``).

    Raises :class:`DataError` if the file is missing, unreadable, truncated, not
    a pickle, or refers to anything but containers and NumPy arrays.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
            trailing = f.read(1)
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found; it is part of the CIFAR-10 python layout: "
            f"delete the folder and re-download, or {HOW_TO_POINT}"
        ) from None
    except _ForbiddenGlobal as err:
        raise DataError(
            f"{path}: refused to load: the file tries to load the forbidden global "
            f"'{err.qualname}' (a CIFAR-10 file only holds lists, dicts and NumPy "
            f"arrays, so it may be corrupt or malicious); delete it and re-download, "
            f"or {HOW_TO_POINT}"
        ) from None
    except _TooLarge as err:
        raise DataError(f"{path}: refused to load: {err}; the file is corrupt or malicious: "
                        f"delete it and re-download, or {HOW_TO_POINT}") from None
    except (EOFError, pickle.UnpicklingError) as err:
        if isinstance(err, EOFError) or "truncated" in str(err):
            what = f"truncated pickle (file is {size:,} bytes; {_expected_size(path)})"
        else:
            what = f"not a valid pickle ({one_line(err)}; file is {size:,} bytes)"
        raise DataError(
            f"{path}: {what}; delete the folder and re-download, or {HOW_TO_POINT}"
        ) from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a pickle file; {HOW_TO_POINT}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err}); {HOW_TO_POINT}") from None
    except Exception as err:  # noqa: BLE001 - malformed content fails in many ways
        raise DataError(
            f"{path}: not a valid CIFAR-10 pickle ({type(err).__name__}: {one_line(err)}); "
            f"delete the folder and re-download, or {HOW_TO_POINT}"
        ) from None
    if trailing:
        raise DataError(
            f"{path}: unexpected bytes after the end of the pickle (file is {size:,} "
            f"bytes); delete the folder and re-download, or {HOW_TO_POINT}"
        )
    return obj


def _expected_size(path: Path) -> str:
    if path.name == META_FILE:
        return "expected a small pickle of the label names"
    return "expected a CIFAR-10 batch of ~30 MB"


# --------------------------------------------------------------------------- validation


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    """The dict ``obj`` with bytes keys decoded to str (files may have either)."""
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: expected a pickled dict, found {type(obj).__name__}; "
            f"delete the folder and re-download, or {HOW_TO_POINT}"
        )
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            key = key.decode("latin1")
        if isinstance(key, str):
            out[key] = value
    return out


def _bad(path: Path, what: str) -> DataError:
    return DataError(
        f"{path}: {what}; the file does not follow the CIFAR-10 python layout: "
        f"delete the folder and re-download, or {HOW_TO_POINT}"
    )


def read_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file.

    Returns ``(images, labels)``: uint8 ``(n, 3, 32, 32)`` C-contiguous (NCHW)
    and int64 ``(n,)`` with values 0–9. Raises :class:`DataError` naming the file
    on any problem.
    """
    path = Path(path)
    d = _str_keys(safe_unpickle(path), path)
    if "data" not in d:
        raise _bad(path, "no 'data' entry")
    if "labels" not in d:
        hint = " (this looks like CIFAR-100, not CIFAR-10)" if "fine_labels" in d else ""
        raise _bad(path, f"no 'labels' entry{hint}")

    data = d["data"]
    if not isinstance(data, np.ndarray):
        raise _bad(path, f"'data' is a {type(data).__name__}, expected a uint8 NumPy array")
    if data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        raise _bad(path, f"'data' has shape {data.shape}, expected (n, {ROW_LENGTH})")
    if data.dtype != np.uint8 and (
        data.dtype.kind not in "iu"
        or (data.size and (int(data.min()) < 0 or int(data.max()) > 255))
    ):
        raise _bad(path, f"'data' has dtype {data.dtype}, expected uint8 (values 0-255)")
    n = data.shape[0]

    raw_labels = d["labels"]
    if not isinstance(raw_labels, (list, tuple, np.ndarray)):
        raise _bad(path, f"'labels' is a {type(raw_labels).__name__}, expected a list of ints")
    if not isinstance(raw_labels, np.ndarray) and any(isinstance(v, bool) for v in raw_labels):
        raise _bad(path, "'labels' holds booleans, expected ints 0-9")
    try:
        labels = np.asarray(raw_labels)
    except Exception:  # noqa: BLE001 - ragged or odd content
        raise _bad(path, "'labels' is not a flat list of ints") from None
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise _bad(path, "'labels' is not a flat list of ints")
    if labels.shape[0] != n:
        raise _bad(path, f"'labels' has {labels.shape[0]} entries but 'data' has {n} rows")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise _bad(
            path, f"labels range {int(labels.min())}..{int(labels.max())}, expected 0..9"
        )

    images = np.ascontiguousarray(data, dtype=np.uint8).reshape(n, *IMAGE_SHAPE)
    return images, labels.astype(np.int64)


def read_meta(path: str | os.PathLike[str]) -> list[str]:
    """Read ``batches.meta`` and return the 10 class names as str."""
    path = Path(path)
    d = _str_keys(safe_unpickle(path), path)
    names = d.get("label_names")
    if not isinstance(names, (list, tuple)):
        raise _bad(path, "no 'label_names' list")
    out: list[str] = []
    for name in names:
        if isinstance(name, bytes):
            name = name.decode("utf-8", errors="replace")
        if not isinstance(name, str):
            raise _bad(path, f"'label_names' holds a {type(name).__name__}, expected strings")
        out.append(name)
    if len(out) != NUM_CLASSES:
        raise _bad(path, f"'label_names' has {len(out)} names, expected {NUM_CLASSES}")
    return out


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True, repr=False)
class Cifar10:
    """CIFAR-10 in memory: uint8 NCHW images and int64 labels, per split."""

    train_images: np.ndarray  #: uint8 (50000, 3, 32, 32), C-contiguous
    train_labels: np.ndarray  #: int64 (50000,)
    test_images: np.ndarray  #: uint8 (10000, 3, 32, 32), C-contiguous
    test_labels: np.ndarray  #: int64 (10000,)
    label_names: list[str]  #: the 10 class names, index = label

    def __repr__(self) -> str:
        return (
            f"Cifar10(train={self.train_images.shape[0]} images, "
            f"test={self.test_images.shape[0]} images, classes={self.label_names})"
        )


def find_batch_folder(data_dir: str | os.PathLike[str]) -> Path | None:
    """``<data_dir>/cifar-10-batches-py`` if it exists.

    As a convenience, a ``data_dir`` that is itself the batch folder (it holds
    ``batches.meta``) is accepted too. Returns None when neither exists.
    """
    data_dir = Path(data_dir)
    folder = data_dir / BATCH_FOLDER
    if folder.is_dir():
        return folder
    if (data_dir / META_FILE).is_file():
        return data_dir
    return None


def _stack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    n = sum(p[0].shape[0] for p in parts)
    images = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    start = 0
    for imgs, labs in parts:
        stop = start + imgs.shape[0]
        images[start:stop] = imgs
        labels[start:stop] = labs
        start = stop
    return images, labels


def load_cifar10(
    data_dir: str | os.PathLike[str], download: bool = True, *, progress: bool = True
) -> Cifar10:
    """Load CIFAR-10 from ``<data_dir>/cifar-10-batches-py/``.

    If that folder is missing and ``download`` is true, the official archive is
    downloaded and extracted there first (see
    :func:`scratchcnn.data.download.download_cifar10`); with ``download=False``
    a missing folder is a :class:`DataError` saying where it looked.

    The six batches are read one after the other: unpickling holds the GIL and
    takes ~0.1 s per batch, so threads would not help.
    """
    data_dir = Path(data_dir)
    folder = find_batch_folder(data_dir)
    if folder is None:
        if not download:
            raise DataError(
                f"{data_dir / BATCH_FOLDER}: CIFAR-10 not found (looked for the folder "
                f"{BATCH_FOLDER}/ in {data_dir}); allow the download, or {HOW_TO_POINT}"
            )
        from .download import download_cifar10

        try:
            folder = download_cifar10(data_dir, progress=progress)
        except DataError as e:  # say where we looked first, then why the download failed
            raise DataError(f"no CIFAR-10 in {data_dir / BATCH_FOLDER}, and {e}") from None

    label_names = read_meta(folder / META_FILE)
    train_images, train_labels = _stack([read_batch(folder / f) for f in TRAIN_FILES])
    test_images, test_labels = read_batch(folder / TEST_FILE)
    return Cifar10(train_images, train_labels, test_images, test_labels, label_names)
