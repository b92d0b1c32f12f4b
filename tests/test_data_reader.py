"""CIFAR-10 reader: layout, keys, safety, and error messages (tiny generated files)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from scratchcnn.data import DataError, load_cifar10, read_batch
from scratchcnn.data.cifar10 import safe_unpickle

TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "\r" not in msg
    assert str(path) in msg
    return msg


@pytest.mark.parametrize(
    "keys, style",
    [("bytes", "py2"), ("bytes", "4"), ("bytes", "2"), ("str", "4"), ("str", "2")],
    ids=["python2-official", "bytes-keys-p4", "bytes-keys-p2", "str-keys-p4", "str-keys-p2"],
)
def test_load_layout_and_keys(tmp_path, write_fake_cifar, keys, style):
    raw = write_fake_cifar(tmp_path, n=5, keys=keys, style=style)
    ds = load_cifar10(tmp_path, download=False)

    assert ds.train_images.shape == (25, 3, 32, 32)
    assert ds.test_images.shape == (5, 3, 32, 32)
    for arr in (ds.train_images, ds.test_images):
        assert arr.dtype == np.uint8 and arr.flags.c_contiguous
    for arr in (ds.train_labels, ds.test_labels):
        assert arr.dtype == np.int64 and arr.ndim == 1
    assert ds.label_names[0] == "airplane" and ds.label_names[9] == "truck"
    assert all(isinstance(s, str) for s in ds.label_names)

    # train batches are concatenated in file order
    np.testing.assert_array_equal(
        ds.train_labels, np.concatenate([raw[f][1] for f in TRAIN])
    )
    np.testing.assert_array_equal(ds.test_labels, raw["test_batch"][1])

    # NCHW: row = R(1024) G(1024) B(1024), each plane 32 rows of 32 pixels
    data3 = raw["data_batch_3"][0]
    img = 2 * 5 + 4  # 5th image of data_batch_3
    for c, y, x in [(0, 0, 0), (1, 3, 7), (2, 31, 30), (0, 17, 5)]:
        assert ds.train_images[img, c, y, x] == data3[4, c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(ds.test_images.reshape(5, -1), raw["test_batch"][0])


def test_batch_folder_itself_is_accepted(tmp_path, write_fake_cifar):
    raw = write_fake_cifar(tmp_path, n=2)
    ds = load_cifar10(raw["folder"], download=False)
    assert ds.train_images.shape[0] == 10


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("where", ["top", "nested"])
def test_pickle_that_runs_code_is_refused(tmp_path, where):
    sentinel = tmp_path / "SENTINEL"
    payload = _RunsCode(os.system, f"touch {sentinel}")
    obj = payload if where == "top" else {b"data": [payload], b"labels": [0]}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError) as err:
        read_batch(path)
    msg = _assert_one_line_naming(err, path)
    assert "forbidden global" in msg and "system" in msg
    assert not sentinel.exists()


@pytest.mark.parametrize("func", [eval, exec, getattr, __import__])
def test_builtins_other_than_containers_are_refused(tmp_path, func):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps(_RunsCode(func, "1+1"), protocol=4))
    with pytest.raises(DataError, match="forbidden global 'builtins"):
        safe_unpickle(path)


def test_subprocess_popen_refused_and_not_imported(tmp_path):
    import subprocess

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps(_RunsCode(subprocess.Popen, "true"), protocol=4))
    with pytest.raises(DataError, match="forbidden global 'subprocess.Popen'"):
        safe_unpickle(path)


def test_truncated_file(tmp_path, write_fake_cifar):
    raw = write_fake_cifar(tmp_path, n=4)
    path = raw["folder"] / "data_batch_3"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    msg = _assert_one_line_naming(err, path)
    assert "truncated" in msg and f"{len(data) // 2:,} bytes" in msg
    assert "re-download" in msg and "--data-dir" in msg and "SCRATCHCNN_DATA" in msg


def test_empty_file(tmp_path, write_fake_cifar):
    raw = write_fake_cifar(tmp_path, n=2)
    path = raw["folder"] / "test_batch"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="truncated") as err:
        load_cifar10(tmp_path, download=False)
    _assert_one_line_naming(err, path)


def test_garbage_file(tmp_path, write_fake_cifar):
    raw = write_fake_cifar(tmp_path, n=2)
    path = raw["folder"] / "data_batch_1"
    path.write_bytes(b"<html>\n<body>Not Found</body>\n</html>\n")
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path, download=False)
    _assert_one_line_naming(err, path)


@pytest.mark.parametrize("name", ["data_batch_4", "test_batch", "batches.meta"])
def test_missing_file(tmp_path, write_fake_cifar, name):
    raw = write_fake_cifar(tmp_path, n=2)
    path = raw["folder"] / name
    path.unlink()
    with pytest.raises(DataError, match="not found") as err:
        load_cifar10(tmp_path, download=False)
    _assert_one_line_naming(err, path)


def test_missing_folder_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar10(tmp_path / "nowhere", download=False)
    msg = _assert_one_line_naming(err, tmp_path / "nowhere" / "cifar-10-batches-py")
    assert "--data-dir" in msg and "SCRATCHCNN_DATA" in msg


def _write_batch(path: Path, **entries) -> Path:
    path.write_bytes(pickle.dumps({k.encode(): v for k, v in entries.items()}, protocol=4))
    return path


@pytest.mark.parametrize(
    "entries, fragment",
    [
        ({"data": np.zeros((3, 3000), np.uint8), "labels": [0, 1, 2]}, "shape (3, 3000)"),
        ({"data": np.zeros((3, 3, 32, 32), np.uint8), "labels": [0, 1, 2]}, "shape"),
        ({"data": np.zeros((3, 3072), np.float32), "labels": [0, 1, 2]}, "dtype float32"),
        ({"data": np.full((3, 3072), 300, np.int64), "labels": [0, 1, 2]}, "dtype int64"),
        ({"data": [[0] * 3072] * 3, "labels": [0, 1, 2]}, "'data' is a list"),
        ({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}, "2 entries"),
        ({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1, 10]}, "expected 0..9"),
        ({"data": np.zeros((3, 3072), np.uint8), "labels": [0, -1, 2]}, "expected 0..9"),
        ({"data": np.zeros((3, 3072), np.uint8), "labels": ["a", "b", "c"]}, "ints"),
        ({"data": np.zeros((3, 3072), np.uint8), "labels": [True, False, True]}, "booleans"),
        ({"data": np.zeros((3, 3072), np.uint8)}, "no 'labels'"),
        ({"data": np.zeros((3, 3072), np.uint8), "fine_labels": [0, 1, 2]}, "CIFAR-100"),
        ({"labels": [0, 1, 2]}, "no 'data'"),
    ],
)
def test_malformed_batch(tmp_path, entries, fragment):
    path = _write_batch(tmp_path / "data_batch_2", **entries)
    with pytest.raises(DataError) as err:
        read_batch(path)
    msg = _assert_one_line_naming(err, path)
    assert fragment in msg


def test_not_a_dict(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a pickled dict"):
        read_batch(path)


def test_uint8_compatible_ints_and_label_arrays_accepted(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3072) % 256
    path = _write_batch(tmp_path / "b", data=data, labels=np.array([3, 9], dtype=np.int32))
    images, labels = read_batch(path)
    assert images.dtype == np.uint8 and images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(images.reshape(2, -1), data)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 9]


def test_bad_meta(tmp_path, write_fake_cifar):
    raw = write_fake_cifar(tmp_path, n=2)
    path = raw["folder"] / "batches.meta"
    path.write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}))
    with pytest.raises(DataError, match="2 names") as err:
        load_cifar10(tmp_path, download=False)
    _assert_one_line_naming(err, path)


def test_real_cifar10():
    root = os.environ.get("SCRATCHCNN_DATA")
    if not root:
        pytest.skip("set SCRATCHCNN_DATA to the folder containing cifar-10-batches-py/")
    if not (Path(root) / "cifar-10-batches-py").is_dir():
        pytest.skip(f"SCRATCHCNN_DATA={root} has no cifar-10-batches-py/ folder")
    ds = load_cifar10(root, download=False)
    assert ds.train_images.shape == (50000, 3, 32, 32)
    assert ds.test_images.shape == (10000, 3, 32, 32)
    assert ds.train_images.dtype == np.uint8 and ds.train_images.flags.c_contiguous
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    assert ds.train_labels.min() >= 0 and ds.train_labels.max() <= 9
    assert ds.test_labels.min() >= 0 and ds.test_labels.max() <= 9
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [5000] * 10
    assert len(ds.label_names) == 10 and ds.label_names[0] == "airplane"


def test_default_data_dir(monkeypatch, tmp_path):
    from scratchcnn.data import default_data_dir

    monkeypatch.delenv("SCRATCHCNN_DATA", raising=False)
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("SCRATCHCNN_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
