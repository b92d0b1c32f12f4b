"""Every file the project writes, written one way: atomically, durably, with one mode.

* ``write_bytes_atomic`` / ``write_text_atomic`` / ``save_npz_atomic``: the
  content goes to a temporary file in the same folder (``.<name>.XXXX.tmp``),
  is flushed and fsync'ed, gets the usual file mode (``0666 & ~umask``, the
  same for every file of a run folder), and is renamed over the target; the
  folder is fsync'ed so the rename survives a power cut. A kill, a full disk
  or any other error at any moment leaves the previous complete file (or
  none), never half of one, and no temporary file.
* ``RunLock``: an exclusive, non-blocking ``flock`` on ``<folder>/.lock``,
  held while a run writes its folder; a second run on the same folder is
  refused. The kernel drops the lock when the process dies (even by SIGKILL),
  so a stale lock file never blocks anyone.
* ``load_npz``: every array of an .npz, or a one-line ``ValueError``.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["RunLock", "RunLocked", "file_mode", "load_npz", "save_npz_atomic",
           "write_bytes_atomic", "write_text_atomic"]


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0666 & ~umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring); OSError on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; every run file gets the same mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``write_bytes_atomic`` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` of ``arrays`` written atomically to ``path`` (folder created if needed).

    A reader, or a crash at any moment, sees either the old complete file or the
    new complete file, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


#: An .npz may declare at most this much beyond 8 times its own size (a compressed member
#: of zeros is legitimate; a 1 kB file that unpacks to gigabytes is not).
NPZ_SLACK_BYTES = 64 << 20


class _Refused(ValueError):
    pass


def _check_npz_sizes(path: str | os.PathLike) -> None:
    """Refuse, before anything is allocated, an .npz whose members declare more bytes than
    the file can plausibly hold, or whose array headers claim more than their member."""
    import zipfile

    limit = 8 * os.path.getsize(path) + NPZ_SLACK_BYTES
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos)
        if declared > limit:
            raise _Refused(f"its members declare {declared:,} bytes, far more than a file of "
                           f"this size holds")
        for info in infos:
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:  # 3.0: structured dtypes with non-Latin-1 names; no checkpoint has them
                    raise _Refused(f"entry {info.filename!r} has .npy version {version}")
                if dtype.hasobject:
                    raise _Refused(f"entry {info.filename!r} holds Python objects")
                if int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
                    raise _Refused(f"entry {info.filename!r} claims shape {shape} of "
                                   f"{dtype}, more than its {info.file_size:,} bytes")


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an .npz into memory; ValueError (one line) if unreadable.

    Sizes are checked first (``_check_npz_sizes``): a hostile file cannot make this
    allocate more than about 8 times its own size."""
    try:
        _check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except _Refused as e:
        raise ValueError(f"{path}: refused to load: {e}; use another checkpoint or start "
                         f"without it") from None
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError, ...
        what = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(f"{path}: not a readable .npz checkpoint ({what}); "
                         f"use another checkpoint or start without it") from None


class RunLocked(RuntimeError):
    """Another process holds the folder's lock."""


class RunLock:
    """Exclusive lock on a folder (``<folder>/.lock``) for as long as this object lives.

    ``RunLock(folder)`` raises ``RunLocked`` at once if another process holds it;
    ``release()`` (or the process ending, however it ends) drops it.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike) -> None:
        import fcntl

        self.path = Path(folder) / self.NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise RunLocked(f"{folder}: another run is writing this folder") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
