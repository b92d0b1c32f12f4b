"""Download and extract the official CIFAR-10 archive, atomically.

Steps: stream the archive to ``<data_dir>/cifar-10-python.tar.gz.XXXX.part``
with a progress bar, check its MD5, extract it into a temporary folder inside
``data_dir`` (refusing links, devices and paths that leave that folder), check
that the extracted ``cifar-10-batches-py/`` holds every expected file, and
only then rename it into place. A run interrupted at any point (network error,
wrong checksum, Ctrl-C) leaves neither a partial archive nor a partial folder
behind, so the next run starts clean instead of tripping over half a dataset.

Environment overrides (for mirrors, and for tests):

* ``SCRATCHCNN_CIFAR10_URL``: the archive's URL (any scheme urllib opens);
* ``SCRATCHCNN_CIFAR10_MD5``: its MD5, when the mirror serves a different archive.

Hostile or broken archives: extraction stops once the members would exceed
``MAX_EXTRACT_BYTES`` (the official archive extracts to ~178 MB) or
``MAX_MEMBERS``, whatever checksum the user supplied. Downloads into one folder
are serialized by a lock (``flock`` on the folder); whoever holds it removes
the ``.part`` files and extraction folders a killed download left behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .layout import ALL_FILES, BATCH_FOLDER, DATA_ENV, DataError, one_line

__all__ = ["CIFAR10_MD5", "CIFAR10_URL", "download_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
URL_ENV = "SCRATCHCNN_CIFAR10_URL"
MD5_ENV = "SCRATCHCNN_CIFAR10_MD5"

_CHUNK = 1 << 20
#: Extraction stops past this many bytes or members, whatever the checksum.
MAX_EXTRACT_BYTES = 512 << 20
#: A download stops past this many bytes (the official archive: 163 MB).
MAX_DOWNLOAD_BYTES = 1 << 30
MAX_MEMBERS = 1000


class _Failure(Exception):
    """Internal: one step of the download failed; the message says which."""


# tarfile.FilterError exists where extraction filters do (Python 3.12, 3.11.4, 3.10.12).
_FilterError = getattr(tarfile, "FilterError", _Failure)


def download_cifar10(
    data_dir: str | os.PathLike[str],
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download CIFAR-10 into ``data_dir`` and return ``<data_dir>/cifar-10-batches-py``.

    ``url`` defaults to ``$SCRATCHCNN_CIFAR10_URL`` if set, else :data:`CIFAR10_URL`;
    ``md5`` defaults to ``$SCRATCHCNN_CIFAR10_MD5`` if set, else :data:`CIFAR10_MD5`.
    ``timeout`` (seconds) applies to connecting and to each read. If the folder
    already exists nothing is downloaded.

    On any failure the partial archive and the temporary folder are removed
    and :class:`~scratchcnn.data.cifar10.DataError` is raised with a one-line
    message: the URL, what failed, and how to use an existing copy instead.
    """
    url = url or os.environ.get(URL_ENV) or CIFAR10_URL
    md5 = (md5 or os.environ.get(MD5_ENV) or CIFAR10_MD5).lower()
    data_dir = Path(data_dir)
    target = data_dir / BATCH_FOLDER
    if target.is_dir():
        return target

    part: Path | None = None
    tmp_dir: Path | None = None
    lock_fd: int | None = None
    try:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock(data_dir)
            if target.is_dir():  # another process finished the download while we waited
                return target
            _remove_leftovers(data_dir)
            fd, name = tempfile.mkstemp(
                dir=data_dir, prefix="cifar-10-python.tar.gz.", suffix=".part"
            )
            part = Path(name)
            os.close(fd)
        except OSError as err:
            raise _Failure(f"cannot write into {data_dir} ({err.strerror or err})") from None
        got_md5 = _fetch(url, part, progress=progress, timeout=timeout)
        if got_md5 != md5:
            raise _Failure(
                f"MD5 mismatch: the download has {got_md5}, expected {md5} "
                f"(corrupt transfer, or a different file at that address)"
            )
        tmp_dir = Path(tempfile.mkdtemp(dir=data_dir, prefix=".cifar-10-extract-"))
        _extract(part, tmp_dir)
        extracted = tmp_dir / BATCH_FOLDER
        if not extracted.is_dir():
            raise _Failure(f"the archive has no {BATCH_FOLDER}/ folder")
        missing = [f for f in ALL_FILES if not (extracted / f).is_file()]
        if missing:
            raise _Failure(f"the archive's {BATCH_FOLDER}/ lacks {', '.join(missing)}")
        try:
            os.replace(extracted, target)  # atomic: same filesystem
        except OSError:
            if not target.is_dir():  # else: another process finished first; fine
                raise
    except _Failure as err:
        raise DataError(_message(url, str(err))) from None
    except DataError:
        raise
    except OSError as err:
        raise DataError(_message(url, f"{type(err).__name__}: {err}")) from None
    finally:  # also on KeyboardInterrupt: no partial file survives
        if part is not None:
            part.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)
    return target


def _lock(data_dir: Path) -> int:
    """Hold the folder's download lock (waits for another downloader to finish)."""
    import fcntl

    fd = os.open(data_dir, os.O_RDONLY)  # the folder itself: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_leftovers(data_dir: Path) -> None:
    """Partial archives and extraction folders of a killed download (lock held)."""
    for stale in data_dir.glob("cifar-10-python.tar.gz.*.part"):
        stale.unlink(missing_ok=True)
    for stale in data_dir.glob(".cifar-10-extract-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _message(url: str, what: str) -> str:
    return one_line(
        f"could not download CIFAR-10 from {url}: {what}; to use a copy you already "
        f"have, pass --data-dir DIR or set {DATA_ENV}=DIR, where DIR is the folder "
        f"that contains {BATCH_FOLDER}/ (set {URL_ENV} to use a mirror)"
    )


def _fetch(url: str, dest: Path, *, progress: bool, timeout: float,
           label: str = "cifar-10-python.tar.gz", what: str = "a CIFAR-10 archive") -> str:
    """Stream ``url`` into ``dest``; return the MD5 hex digest of what was received.
    ``label`` names the progress bar (the file), ``what`` the file in the size-cap error."""
    digest = hashlib.md5()
    received = 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "scratchcnn"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if progress:
                print(f"Downloading {url} to {dest.parent}", file=sys.stderr)
            with open(dest, "wb") as out, tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                disable=None if progress else True,  # None: off when stderr is no terminal
                leave=False,
            ) as bar:
                if total is not None and total > MAX_DOWNLOAD_BYTES:
                    raise _Failure(f"the server announces {total:,} bytes, more than the "
                                   f"{MAX_DOWNLOAD_BYTES >> 20} MiB {what} can be")
                while chunk := response.read(_CHUNK):
                    if received + len(chunk) > MAX_DOWNLOAD_BYTES:
                        raise _Failure(f"stopped after {received:,} bytes: more than the "
                                       f"{MAX_DOWNLOAD_BYTES >> 20} MiB {what} can be")
                    try:
                        out.write(chunk)
                    except OSError as err:
                        raise _Failure(f"cannot write {dest} ({err.strerror or err})") from None
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise _Failure(f"connection closed after {received:,} of {total:,} bytes")
    except urllib.error.HTTPError as err:
        err.close()  # an HTTPError holds the open response
        raise _Failure(f"HTTP error {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError):
            raise _Failure(f"timed out after {timeout:g} s") from None
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise _Failure(f"cannot connect ({text})") from None
    except TimeoutError:
        raise _Failure(f"timed out after {timeout:g} s (received {received:,} bytes)") from None
    except OSError as err:
        if err.filename == str(dest):
            raise _Failure(f"cannot write {dest} ({err.strerror or err})") from None
        raise _Failure(f"connection failed after {received:,} bytes ({err})") from None
    except ValueError as err:  # e.g. a malformed URL
        raise _Failure(f"bad URL ({err})") from None
    return digest.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz into ``dest``, refusing anything that would land outside it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            total, count = 0, 0
            for m in tar:  # headers only: sizes are checked before anything is written
                count += 1
                total += max(m.size, 0)
                if count > MAX_MEMBERS or total > MAX_EXTRACT_BYTES:
                    raise _Failure(f"refused archive: more than {MAX_MEMBERS} members or "
                                   f"{MAX_EXTRACT_BYTES >> 20} MiB once extracted (CIFAR-10 "
                                   f"has 8 files, ~178 MB)")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # pragma: no cover - Python without PEP 706 filters
                members = tar.getmembers()
                root = dest.resolve()
                for m in members:
                    target = (dest / m.name).resolve()
                    if not (m.isfile() or m.isdir()) or (
                        target != root and root not in target.parents
                    ):
                        raise _Failure(f"refused unsafe archive member {m.name!r}")
                tar.extractall(dest, members=members)
    except _Failure:
        raise
    except _FilterError as err:
        raise _Failure(f"refused unsafe archive ({err})") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        raise _Failure(f"bad archive ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001 - zlib.error and friends
        raise _Failure(f"bad archive ({type(err).__name__}: {err})") from None
