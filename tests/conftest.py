"""Shared test set-up.

The bit-for-bit tests run the parallel kernels at 1, 2 and 3 threads (3 is
more than this machine's 2 cores, on purpose). Numba fixes its thread-pool size
when it is first imported, so the pool is widened here, before any test module
imports numba -- never below the machine's cores: the training CLI's default
``--threads`` is the core count, and a smaller pool would refuse it (seen on a
16-core GPU machine).
"""

import os

_POOL = max(3, os.cpu_count() or 1)
if int(os.environ.get("NUMBA_NUM_THREADS", "0") or 0) < _POOL:
    os.environ["NUMBA_NUM_THREADS"] = str(_POOL)

import numba  # noqa: E402
import pytest  # noqa: E402

# What the CLI's compile workers do (scratchcnn/lazy_llvm.py): each parallel kernel's chain
# gets machine code once. On here too, so that the bit-level tests (test_fingerprint.py,
# recorded without it) check the kernels compiled that way -- and the suite compiles faster.
from scratchcnn.lazy_llvm import enable_from_env  # noqa: E402

enable_from_env(default=True)

THREAD_COUNTS = (1, 2, 3)


@pytest.fixture
def numba_threads():
    """Call with n to set Numba's thread count for this test; restored afterwards."""
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


# data fixtures ----------------------------------------------------------------------
# Fixtures for tests/test_data_*.py: tiny fake CIFAR-10 files, archives, a local HTTP
# server. Nothing here touches numba or the network.

import functools  # noqa: E402
import hashlib  # noqa: E402
import http.server  # noqa: E402
import io  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402
import tarfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

FAKE_LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
FAKE_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 ``str`` opcodes (BINSTRING), as the official
    (Python 2, cPickle protocol 2) files do."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def _save_py2_unicode(self, obj: str) -> None:
        self._save_py2_str(obj.encode("latin1"))

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_unicode


def _dumps(obj: object, style: str) -> bytes:
    if style == "py2":  # Python 2 str opcodes and the NumPy 1 module name
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    return pickle.dumps(obj, protocol=int(style))


def _key(k: str, keys: str) -> str | bytes:
    return k.encode() if keys == "bytes" else k


def write_fake_cifar_files(
    root: Path, n: int = 4, keys: str = "bytes", style: str = "4", seed: int = 0
) -> dict:
    """Write a tiny CIFAR-10 in the official layout under ``root``.

    Creates ``root/cifar-10-batches-py/`` with six batches of ``n`` random images
    (``keys`` "bytes" or "str", pickle ``style`` "4", "2" or "py2") and
    ``batches.meta``; returns ``{"folder": Path, file name: (data, labels)}``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict = {"folder": folder}
    for name in FAKE_FILES:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {
            _key("batch_label", keys): _key(f"fake {name}", keys),
            _key("labels", keys): labels,
            _key("data", keys): data,
            _key("filenames", keys): [_key(f"img_{i}.png", keys) for i in range(n)],
        }
        (folder / name).write_bytes(_dumps(batch, style))
        out[name] = (data, np.array(labels, dtype=np.int64))
    meta = {
        _key("num_cases_per_batch", keys): n,
        _key("label_names", keys): [_key(s, keys) for s in FAKE_LABEL_NAMES],
        _key("num_vis", keys): 3072,
    }
    (folder / "batches.meta").write_bytes(_dumps(meta, style))
    return out



@pytest.fixture
def write_fake_cifar() -> Callable[..., dict]:
    """The factory ``write_fake_cifar_files`` (see there)."""
    return write_fake_cifar_files


@pytest.fixture
def make_tarball(write_fake_cifar: Callable[..., dict], tmp_path: Path) -> Callable[..., tuple]:
    """Factory: ``make(dest_dir, members=None)`` -> (archive path, md5).

    Default content: a tiny ``cifar-10-batches-py/`` folder. ``members`` maps
    archive names to bytes, for archives with other content.
    """

    def make(dest_dir: Path, members: dict[str, bytes] | None = None) -> tuple[Path, str]:
        dest_dir.mkdir(parents=True, exist_ok=True)
        archive = dest_dir / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            if members is None:
                src = tmp_path / "tarball-src"
                write_fake_cifar(src, n=3)
                tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
            else:
                for name, payload in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        return archive, hashlib.md5(archive.read_bytes()).hexdigest()

    return make


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1; yields (base URL, folder it serves)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="test-http", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def cuda_unavailable() -> str | None:
    """Why the CUDA backend cannot be tested in this process, or None if it can (the skip
    reason of the tests in tests/cuda/, which run in a process of their own)."""
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install -e '.[test,cuda]')"
    from numba import config, cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and not config.ENABLE_CUDASIM:
        return ("NUMBA_ENABLE_CUDASIM=1 was set after numba was imported; run "
                "'NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda' in its own process")
    if not cuda.is_available():
        return ("no CUDA GPU here; the simulator runs these tests in their own process: "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda")
    return None


def load_file_as(name: str, path: Path):
    """Import the Python file ``path`` as module ``name`` (registered in ``sys.modules``:
    Numba's cache and dataclasses look a module up by its name). For scripts and teaching
    files outside the package; give each file one name (a Numba cache entry records it)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def assert_skeleton_fails(check: Callable[[], None], path: Path, marker: str) -> None:
    """The exercise skeleton ``path`` must fail ``check`` with an AssertionError naming
    ``marker`` (the check can tell wrong from right); if it passes, the file is no longer
    the skeleton, and the failure says how to restore it."""
    try:
        check()
    except AssertionError as e:
        assert marker in str(e), str(e)
    else:
        pytest.fail(f"docs/exercises/{path.name} passed the check, so it is no longer the "
                    "skeleton (a solved exercise?): restore it with "
                    "`git checkout -- docs/exercises/`")
