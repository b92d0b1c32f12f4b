"""CIFAR-10 download: against a local HTTP server only (no internet)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from scratchcnn.data import DataError, download_cifar10, load_cifar10


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def _assert_clean_error(err: pytest.ExceptionInfo, url: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert url in msg
    assert "--data-dir" in msg and "SCRATCHCNN_DATA=" in msg
    return msg


def test_good_archive(tmp_path, http_server, make_tarball):
    base, served = http_server
    _, md5 = make_tarball(served)
    url = f"{base}/cifar-10-python.tar.gz"
    data_dir = tmp_path / "data"

    folder = download_cifar10(data_dir, url=url, md5=md5, progress=False)

    assert folder == data_dir / "cifar-10-batches-py" and folder.is_dir()
    assert _listing(data_dir) == ["cifar-10-batches-py"]  # no .part, no temp folder
    ds = load_cifar10(data_dir, download=False)
    assert ds.train_images.shape == (15, 3, 32, 32) and ds.test_images.shape == (3, 3, 32, 32)
    # a second call finds the folder and does not download again
    assert download_cifar10(data_dir, url=f"{base}/absent", md5=md5, progress=False) == folder


def test_progress_bar_does_not_break(tmp_path, http_server, make_tarball, capsys):
    base, served = http_server
    _, md5 = make_tarball(served)
    download_cifar10(tmp_path, url=f"{base}/cifar-10-python.tar.gz", md5=md5, progress=True)
    assert "Downloading" in capsys.readouterr().err


def test_wrong_md5_leaves_nothing(tmp_path, http_server, make_tarball):
    base, served = http_server
    make_tarball(served)
    url = f"{base}/cifar-10-python.tar.gz"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError) as err:
        download_cifar10(data_dir, url=url, md5="0" * 32, progress=False)
    assert "MD5 mismatch" in _assert_clean_error(err, url)
    assert _listing(data_dir) == []


def test_http_404(tmp_path, http_server):
    base, _ = http_server
    url = f"{base}/nothing-here.tar.gz"
    with pytest.raises(DataError) as err:
        download_cifar10(tmp_path / "data", url=url, progress=False)
    assert "404" in _assert_clean_error(err, url)
    assert _listing(tmp_path / "data") == []


def test_connection_refused(tmp_path):
    # A bound but not listening TCP socket: connecting to it is refused, and no
    # other process can take the port while we hold it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/cifar-10-python.tar.gz"
        with pytest.raises(DataError) as err:
            download_cifar10(tmp_path / "data", url=url, progress=False, timeout=5)
    msg = _assert_clean_error(err, url)
    assert "refused" in msg.lower()
    assert _listing(tmp_path / "data") == []


def test_timeout(tmp_path):
    # A server that accepts the connection and never answers.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/cifar-10-python.tar.gz"
        with pytest.raises(DataError) as err:
            download_cifar10(tmp_path / "data", url=url, progress=False, timeout=0.3)
    assert "timed out" in _assert_clean_error(err, url)
    assert _listing(tmp_path / "data") == []


def test_short_read(tmp_path):
    # The server announces 10 000 bytes, sends 100, and hangs up.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)

        def serve() -> None:
            conn, _ = sock.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"x" * 100)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/cifar-10-python.tar.gz"
        with pytest.raises(DataError) as err:
            download_cifar10(tmp_path / "data", url=url, progress=False, timeout=5)
        thread.join(5)
    _assert_clean_error(err, url)
    assert _listing(tmp_path / "data") == []


@pytest.mark.parametrize(
    "members, fragment",
    [
        ({"something-else/readme.txt": b"hello"}, "no cifar-10-batches-py/"),
        ({"cifar-10-batches-py/batches.meta": b"x"}, "lacks data_batch_1"),
        ({"../escaped.txt": b"gotcha"}, "unsafe"),
        # the "data" filter strips the leading "/", so this lands inside the temp folder
        ({"/tmp/absolute-scratchcnn-test.txt": b"gotcha"}, "no cifar-10-batches-py/"),
    ],
    ids=["no-folder", "incomplete", "path-traversal", "absolute-path"],
)
def test_bad_archive_content(tmp_path, http_server, make_tarball, members, fragment):
    base, served = http_server
    _, md5 = make_tarball(served, members=members)
    url = f"{base}/cifar-10-python.tar.gz"
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as err:
        download_cifar10(data_dir, url=url, md5=md5, progress=False)
    assert fragment in _assert_clean_error(err, url)
    assert _listing(data_dir) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/absolute-scratchcnn-test.txt").exists()


def test_not_a_gzip(tmp_path, http_server):
    import hashlib

    base, served = http_server
    payload = b"<html>captive portal</html>"
    (served / "cifar-10-python.tar.gz").write_bytes(payload)
    url = f"{base}/cifar-10-python.tar.gz"
    with pytest.raises(DataError) as err:
        download_cifar10(
            tmp_path / "data", url=url, md5=hashlib.md5(payload).hexdigest(), progress=False
        )
    assert "bad archive" in _assert_clean_error(err, url)
    assert _listing(tmp_path / "data") == []


def test_load_downloads_via_env_url(tmp_path, http_server, make_tarball, monkeypatch):
    base, served = http_server
    _, md5 = make_tarball(served)
    monkeypatch.setenv("SCRATCHCNN_CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.setenv("SCRATCHCNN_CIFAR10_MD5", md5)
    data_dir = tmp_path / "empty"
    data_dir.mkdir()

    ds = load_cifar10(data_dir, download=True, progress=False)

    assert ds.train_images.shape == (15, 3, 32, 32)
    assert ds.train_labels.dtype == np.int64
    assert _listing(data_dir) == ["cifar-10-batches-py"]


def test_env_url_failure_names_that_url(tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mirror.tar.gz"
        monkeypatch.setenv("SCRATCHCNN_CIFAR10_URL", url)
        with pytest.raises(DataError) as err:
            load_cifar10(tmp_path, download=True, progress=False)
    _assert_clean_error(err, url)
    assert _listing(tmp_path) == []
