"""MNIST and Fashion-MNIST from their official IDX files (gzip), with checksums.

Layout: ``<data_dir>/<name>/`` (``mnist/`` or ``fashion-mnist/``) holding the
four official files::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

(uncompressed copies without ``.gz`` work too, and so does a ``data_dir`` that
holds the files itself). Missing files are downloaded from the official mirror
(the address torchvision uses), each streamed to a temporary ``.part`` file,
MD5-checked and only then renamed into place -- the same machinery as the
CIFAR-10 download (``scratchcnn.data.download``). A failed download leaves
nothing behind.

The IDX format: a big-endian header (two zero bytes, a type code -- 0x08 =
unsigned byte --, the number of dimensions, then one 32-bit size per
dimension) followed by the raw values. Images are returned as uint8
``(N, 1, 28, 28)`` (NCHW, one channel), labels as int64.

Environment overrides (mirrors, tests): ``SCRATCHCNN_MNIST_URL`` and
``SCRATCHCNN_FASHION_MNIST_URL`` (the base address the four file names are
appended to), ``SCRATCHCNN_IDX_MD5=off`` to skip the checksums of a mirror
serving other files.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cifar10 import DATA_ENV, DataError, one_line

__all__ = ["IDX_DATASETS", "IdxSpec", "download_idx", "load_idx_dataset", "read_idx"]

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class IdxSpec:
    """One IDX dataset: folder name, mirror, MD5 of each file, class names."""

    name: str
    folder: str
    url: str
    url_env: str
    md5: dict[str, str]
    label_names: tuple[str, ...]


IDX_DATASETS: dict[str, IdxSpec] = {
    "mnist": IdxSpec(
        "mnist", "mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "SCRATCHCNN_MNIST_URL",
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        tuple(str(d) for d in range(10))),
    "fashion-mnist": IdxSpec(
        "fashion-mnist", "fashion-mnist",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "SCRATCHCNN_FASHION_MNIST_URL",
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
}
MD5_ENV = "SCRATCHCNN_IDX_MD5"
_UBYTE = 0x08


def _how_to_point(spec: IdxSpec) -> str:
    return (f"point --data-dir DIR or {DATA_ENV}=DIR at a copy (DIR contains {spec.folder}/ "
            f"with the four official .gz files)")


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzip-compressed if it ends in ``.gz``).

    Returns a uint8 array of ``ndim`` dimensions; :class:`DataError` (one line,
    naming the file) if it is missing, truncated or not an IDX file of that kind.
    """
    path = Path(path)
    what = "IDX file of unsigned bytes"
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {one_line(e)}); delete it "
                        f"and download again") from None
    if len(raw) < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an {what} (bad header); delete it and download again")
    if raw[2] != _UBYTE or raw[3] != ndim:
        raise DataError(f"{path}: IDX type 0x{raw[2]:02x} with {raw[3]} dimension(s), expected "
                        f"0x08 (unsigned byte) with {ndim}; is this the right file?")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    start, count = 4 + 4 * ndim, int(np.prod(shape))
    if len(raw) - start != count:
        raise DataError(f"{path}: holds {len(raw) - start:,} values after the header, the header "
                        f"says {shape} = {count:,} (truncated?); delete it and download again")
    return np.frombuffer(raw, np.uint8, count, start).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    for p in (folder / name, folder / name.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def _folder(data_dir: Path, spec: IdxSpec) -> Path:
    """``data_dir/<folder>``, or ``data_dir`` itself when it holds the files."""
    if _find(data_dir / spec.folder, FILES["train_images"]) is None and \
            _find(data_dir, FILES["train_images"]) is not None:
        return data_dir
    return data_dir / spec.folder


def download_idx(spec: IdxSpec, folder: Path, *, progress: bool = True,
                 timeout: float = 30) -> None:
    """Download the files of ``spec`` missing from ``folder``, MD5-checked, atomically."""
    from .download import _Failure, _fetch

    base = os.environ.get(spec.url_env) or spec.url
    base = base if base.endswith("/") else base + "/"
    check = os.environ.get(MD5_ENV, "").lower() != "off"
    for name in FILES.values():
        if _find(folder, name) is not None:
            continue
        url = base + name
        part: Path | None = None
        try:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{name}.", suffix=".part")
                os.close(fd)
                part = Path(tmp)
            except OSError as e:
                raise _Failure(f"cannot write into {folder} ({e.strerror or e})") from None
            got = _fetch(url, part, progress=progress, timeout=timeout, label=name,
                         what=f"a {spec.name} file")  # says "Downloading ..." itself
            if check and got != spec.md5[name]:
                raise _Failure(f"MD5 mismatch: the download has {got}, expected "
                               f"{spec.md5[name]} (corrupt transfer, or a different file at "
                               f"that address)")
            os.replace(part, folder / name)
            part = None
        except _Failure as e:
            raise DataError(f"could not download {spec.name} from {url}: {e}; to use a copy "
                            f"you already have, {_how_to_point(spec)} (set {spec.url_env} to "
                            f"use a mirror)") from None
        finally:
            if part is not None:
                part.unlink(missing_ok=True)


def load_idx_dataset(name: str, data_dir: str | os.PathLike[str], download: bool = True,
                     *, progress: bool = True) -> dict:
    """Load MNIST or Fashion-MNIST: a dict of the four arrays plus ``label_names``.

    Images uint8 ``(N, 1, 28, 28)``, labels int64 ``(N,)``. Missing files are
    downloaded when ``download`` is true, else :class:`DataError` says where it looked.
    """
    spec = IDX_DATASETS[name]
    folder = _folder(Path(data_dir), spec)
    missing = [f for f in FILES.values() if _find(folder, f) is None]
    if missing:
        if not download:
            raise DataError(f"{folder / missing[0]}: {spec.name} not found (missing "
                            f"{', '.join(missing)}); allow the download, or "
                            f"{_how_to_point(spec)}")
        download_idx(spec, folder, progress=progress)
    out: dict = {"label_names": list(spec.label_names)}
    for split in ("train", "test"):
        img_path = _find(folder, FILES[f"{split}_images"])
        lab_path = _find(folder, FILES[f"{split}_labels"])
        images, labels = read_idx(img_path, 3), read_idx(lab_path, 1)
        if len(images) != len(labels):
            raise DataError(f"{lab_path}: {len(labels):,} labels for {len(images):,} images in "
                            f"{img_path.name}; delete both and download again")
        if labels.size and labels.max() >= len(spec.label_names):
            raise DataError(f"{lab_path}: label {labels.max()} out of range 0-"
                            f"{len(spec.label_names) - 1}; delete it and download again")
        out[f"{split}_images"] = images[:, None, :, :].copy()  # writable: frombuffer is not
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out
