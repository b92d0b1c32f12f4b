"""--dataset: MNIST/Fashion-MNIST IDX files, image folders, the registry, the CLI on them.

Tiny generated files in each format; the download runs against a local HTTP
server. Real-data tests read $SCRATCHCNN_DATA and skip, saying why, without it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchcnn.data import DataError, load_dataset
from scratchcnn.data.datasets import CIFAR10_META, recorded_meta, weights_file
from scratchcnn.data.folder import ImageError, load_image_folder, read_image
from scratchcnn.data.idx import FILES, IDX_DATASETS, load_idx_dataset, read_idx
from scratchcnn.model import reference_cnn

PIL = pytest.importorskip("PIL.Image")


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``arr``."""
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_dataset(folder: Path, n_train: int = 40, n_test: int = 12, seed: int = 0,
                      gz: bool = True) -> dict:
    """The four official files of a tiny MNIST-like set in ``folder``; returns the arrays.

    Class k has a bright bar at rows 2k..2k+5, so a network can learn it quickly."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 40).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 2 * label:2 * label + 6, 4:24] = 250
        for kind, arr in (("images", x), ("labels", y)):
            name = FILES[f"{split}_{kind}"]
            data = idx_bytes(arr)
            if gz:
                (folder / name).write_bytes(gzip.compress(data))
            else:
                (folder / name.removesuffix(".gz")).write_bytes(data)
        out[split] = (x, y)
    return out


# -- IDX ---------------------------------------------------------------------------------


def test_idx_reads_gzip_and_plain(tmp_path):
    arrays = write_idx_dataset(tmp_path / "data" / "fashion-mnist")
    ds = load_dataset("fashion-mnist", tmp_path / "data", download=False)
    assert ds.train_images.shape == (40, 1, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.dtype == np.int64 and ds.input_shape == (1, 28, 28)
    assert np.array_equal(ds.train_images[:, 0], arrays["train"][0])
    assert np.array_equal(ds.test_labels, arrays["test"][1])
    assert ds.label_names[0] == "T-shirt/top" and ds.num_classes == 10
    assert ds.train_images.flags.writeable and ds.train_images.flags.c_contiguous
    plain = write_idx_dataset(tmp_path / "plain", gz=False)  # the folder itself, no .gz
    ds2 = load_dataset("mnist", tmp_path / "plain", download=False)
    assert np.array_equal(ds2.train_labels, plain["train"][1])
    assert ds2.label_names == [str(d) for d in range(10)]


@pytest.mark.parametrize("payload, needle", [
    (b"", "bad header"),
    (b"\x00\x00\x0d\x03" + b"\x00" * 12, "type 0x0d"),
    (idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-5], "truncated"),
    (b"\x1f\x8b\x08garbage", "cannot read"),
])
def test_idx_bad_files_one_line(tmp_path, payload, needle):
    path = tmp_path / ("x.gz" if payload.startswith(b"\x1f\x8b") else "x")
    path.write_bytes(payload)
    with pytest.raises(DataError) as e:
        read_idx(path, 3)
    msg = str(e.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_idx_missing_without_download(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, download=False)
    assert "mnist" in str(e.value) and "--data-dir" in str(e.value)


def test_idx_download_checks_md5(tmp_path, http_server, monkeypatch):
    base, served = http_server
    write_idx_dataset(served)
    spec = IDX_DATASETS["mnist"]
    for name in FILES.values():
        monkeypatch.setitem(spec.md5, name, hashlib.md5((served / name).read_bytes()).hexdigest())
    monkeypatch.setenv(spec.url_env, base)
    d = load_idx_dataset("mnist", tmp_path / "data", progress=False)
    assert d["train_images"].shape == (40, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(FILES.values())

    # a wrong checksum: a one-line error, and nothing left behind
    monkeypatch.setitem(spec.md5, FILES["train_images"], "0" * 32)
    with pytest.raises(DataError) as e:
        load_idx_dataset("mnist", tmp_path / "other", progress=False)
    msg = str(e.value)
    assert "MD5 mismatch" in msg and base in msg and "--data-dir" in msg and "\n" not in msg
    assert not list((tmp_path / "other" / "mnist").glob("*train-images*"))


def test_idx_download_names_its_own_files(tmp_path, http_server, monkeypatch):
    """The progress bar and the size-cap error name the file being fetched, not CIFAR-10's
    archive (download.py's fetcher once labelled every download with it)."""
    import scratchcnn.data.download as download_mod

    base, served = http_server
    write_idx_dataset(served)
    spec = IDX_DATASETS["mnist"]
    monkeypatch.setenv(spec.url_env, base)
    labels = []
    real_tqdm = download_mod.tqdm

    def recording_tqdm(*a, **kw):
        labels.append(kw.get("desc"))
        return real_tqdm(*a, **kw)

    monkeypatch.setattr(download_mod, "tqdm", recording_tqdm)
    monkeypatch.setattr(download_mod, "MAX_DOWNLOAD_BYTES", 100)
    with pytest.raises(DataError) as e:
        load_idx_dataset("mnist", tmp_path, progress=True)
    msg = str(e.value)
    assert "a mnist file" in msg and "CIFAR" not in msg, msg
    assert labels and labels[0] in FILES.values()


def test_idx_download_404(tmp_path, http_server, monkeypatch):
    base, _ = http_server
    monkeypatch.setenv(IDX_DATASETS["fashion-mnist"].url_env, base)
    with pytest.raises(DataError) as e:
        load_idx_dataset("fashion-mnist", tmp_path, progress=False)
    assert "404" in str(e.value)
    assert not list((tmp_path / "fashion-mnist").iterdir())


# -- image folders -------------------------------------------------------------------------


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6,
                       test: bool = True, size=(40, 30)) -> None:
    """PNG/JPEG images, one colour per class, in root/train/<class>/ (and root/test/)."""
    colours = {c: (60 + 150 * i % 256, 200 - 90 * i % 256, 30 * i % 256)
               for i, c in enumerate(classes)}
    for part, n in (("train", per_class), ("test", 2 if test else 0)):
        for c in classes:
            if n == 0:
                continue
            d = root / part / c
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                ext = "png" if k % 2 else "jpg"
                PIL.new("RGB", size, colours[c]).save(d / f"{k:02d}.{ext}")


def test_read_image_resizes_and_crops(tmp_path):
    PIL.new("RGB", (80, 40), (255, 0, 0)).save(tmp_path / "wide.png")
    PIL.new("L", (10, 30), 200).save(tmp_path / "tall.jpg")
    a = read_image(tmp_path / "wide.png", (3, 32, 32))
    assert a.shape == (3, 32, 32) and a.dtype == np.uint8
    assert a[0].min() > 240 and a[1].max() < 15
    b = read_image(tmp_path / "tall.jpg", (1, 28, 28))
    assert b.shape == (1, 28, 28) and abs(int(b.mean()) - 200) <= 2
    c = read_image(tmp_path / "tall.jpg", (3, 32, 32))  # grayscale -> RGB
    assert c.shape == (3, 32, 32)


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"), (b"hello", "not an image"), ("truncated", "cannot decode")])
def test_read_image_bad_files(tmp_path, content, needle):
    path = tmp_path / "x.png"
    if content == "truncated":
        PIL.new("RGB", (64, 64), (1, 2, 3)).save(path)
        path.write_bytes(path.read_bytes()[:60])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as e:
        read_image(path, (3, 32, 32))
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_image_folder_layouts(tmp_path, capsys):
    write_image_folder(tmp_path / "a")
    (tmp_path / "a" / "train" / "dog" / "broken.png").write_bytes(b"junk")
    d = load_image_folder(tmp_path / "a", image_size=24, threads=2)
    assert d["label_names"] == ["cat", "dog"] and d["split"] == "folders"
    assert d["train_images"].shape == (12, 3, 24, 24) and d["test_images"].shape == (4, 3, 24, 24)
    assert d["train_labels"].tolist() == [0] * 6 + [1] * 6
    err = capsys.readouterr().err
    assert "broken.png" in err and "skipped" in err and err.count("\n") == 1
    # threads=0 decodes in this thread: same arrays
    d0 = load_image_folder(tmp_path / "a", image_size=24, threads=0)
    assert np.array_equal(d0["train_images"], d["train_images"])

    write_image_folder(tmp_path / "b", per_class=20, test=False)  # no test/: every 10th held out
    d = load_image_folder(tmp_path / "b")
    assert d["split"].startswith("every 10th")
    assert len(d["train_labels"]) == 36 and d["test_labels"].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("make, needle", [
    (lambda r: None, "no such folder"),
    (lambda r: (r / "cat").mkdir(parents=True), "no train/ folder"),
    (lambda r: (r / "train" / "cat").mkdir(parents=True), "need at least 2"),
    (lambda r: [(r / "train" / c).mkdir(parents=True) for c in ("a", "b")], "no image files"),
])
def test_image_folder_bad_layouts(tmp_path, make, needle):
    root = tmp_path / "imgs"
    make(root)
    with pytest.raises(DataError) as e:
        load_dataset("folder", root)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_image_folder_unknown_test_class(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(DataError, match="'bird' is not among"):
        load_dataset("folder", tmp_path)


# -- registry, model, recorded metadata ------------------------------------------------------


def test_registry_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="only for --dataset folder"):
        load_dataset("mnist", tmp_path, image_size=32)


def test_reference_cnn_adapts_to_the_input_shape():
    m = reference_cnn(input_shape=(1, 28, 28), num_classes=10, backend="serial")
    assert m.layers[6].in_features == 64 * 3 * 3  # 28 -> 26 -> 13 -> 11 -> 5 -> 3
    assert m.num_parameters() == 93_322
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    assert m.forward(x).shape == (5, 10)
    big = reference_cnn(input_shape=(3, 64, 64), num_classes=4)
    assert big.layers[6].in_features == 64 * 12 * 12
    # the default network is unchanged: same weights as before input_shape existed
    a, b = reference_cnn(seed=3), reference_cnn(seed=3, input_shape=(3, 32, 32))
    assert all(np.array_equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert a.num_parameters() == 122_570
    with pytest.raises(ValueError, match="too small"):
        reference_cnn(input_shape=(3, 16, 16))


def test_recorded_meta_defaults_to_cifar10(tmp_path):
    m = reference_cnn(backend="serial")
    m.save(tmp_path / "weights.npz")  # weights only: nothing recorded
    assert recorded_meta(tmp_path / "weights.npz") == CIFAR10_META
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match="no best.npz or checkpoint.npz"):
        weights_file(tmp_path / "run")
    m.save(tmp_path / "run" / "checkpoint.npz")
    assert weights_file(tmp_path / "run") == tmp_path / "run" / "checkpoint.npz"
    m.save(tmp_path / "run" / "best.npz")
    assert weights_file(tmp_path / "run") == tmp_path / "run" / "best.npz"
    with pytest.raises(ValueError, match="no such file or folder"):
        weights_file(tmp_path / "nothing")


# -- the training CLI on them ------------------------------------------------------------------


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCRATCHCNN_MNIST_URL": "http://127.0.0.1:9/",
           "SCRATCHCNN_FASHION_MNIST_URL": "http://127.0.0.1:9/"}
    r = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_train_eval_resume_on_fashion_mnist(tmp_path):
    write_idx_dataset(tmp_path / "data" / "fashion-mnist")
    out = tmp_path / "run"
    common = ["--data-dir", str(tmp_path / "data"), "--no-progress", "--threads", "2",
              "--batch-size", "8"]
    r = _cli("scratchcnn.train", "--dataset", "fashion-mnist", "--epochs", "1", "--out",
             str(out), "--augment", *common)  # crop + flip work on 1-channel images too
    assert "fashion-mnist: 40 train / 12 test images" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"]["name"] == "fashion-mnist"
    assert cfg["dataset"]["input_shape"] == [1, 28, 28]
    assert cfg["dataset"]["label_names"][9] == "Ankle boot"
    assert recorded_meta(out / "best.npz") == cfg["dataset"]  # from the checkpoint itself

    # resume: the dataset comes from the checkpoint; another one is refused in one line
    _cli("scratchcnn.train", "--resume", str(out), "--epochs", "2", *common)
    _one_error(_cli("scratchcnn.train", "--resume", str(out), "--epochs", "3", "--dataset",
                    "mnist", *common, check=False), "--dataset mnist differs")

    # eval-only on the run folder: the report, for the right dataset
    r = _cli("scratchcnn.train", "--eval-only", str(out), *common)
    assert "on 12 fashion-mnist images" in r.stdout and "Ankle boot" in r.stdout
    for f in ("confusion.png", "confusion.csv", "per_class.csv", "predictions.png", "curves.png"):
        assert (out / f).stat().st_size > 0, f


def test_old_checkpoint_without_dataset_resumes_as_cifar10(tmp_path, write_fake_cifar):
    from scratchcnn.checkpoint import Progress, save_checkpoint
    from scratchcnn.optim import Adam

    write_fake_cifar(tmp_path / "data", n=8)
    m = reference_cnn(seed=0, backend="serial")
    old_settings = {"batch_size": 8, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9,
                    "seed": 0, "augment": False, "limit_train": None, "limit_test": None}
    save_checkpoint(tmp_path / "run" / "checkpoint.npz", m, Adam(m.parameters()),
                    Progress(epoch=1, best_test_acc=0.1, config={"settings": old_settings}))
    assert recorded_meta(tmp_path / "run" / "checkpoint.npz") == CIFAR10_META
    r = _cli("scratchcnn.train", "--resume", str(tmp_path / "run"), "--epochs", "2",
             "--data-dir", str(tmp_path / "data"), "--no-progress", "--threads", "2")
    assert "cifar10: 40 train / 8 test images" in r.stdout and "epoch   2/2" in r.stdout
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["dataset"] == CIFAR10_META and cfg["settings"]["dataset"] == "cifar10"


def test_train_on_an_image_folder(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("apple", "banana", "cherry"))
    out = tmp_path / "run"
    r = _cli("scratchcnn.train", "--dataset", "folder", "--data-dir", str(tmp_path / "imgs"),
             "--image-size", "20", "--epochs", "1", "--out", str(out), "--no-progress",
             "--threads", "2", "--batch-size", "4")
    assert "folder: 18 train / 6 test images" in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == {"name": "folder", "label_names": ["apple", "banana", "cherry"],
                              "input_shape": [3, 20, 20]}
    r = _cli("scratchcnn.train", "--eval-only", str(out / "best.npz"), "--data-dir",
             str(tmp_path / "imgs"), "--threads", "2")  # dataset and image size recorded
    assert "on 6 folder images" in r.stdout and "cherry" in r.stdout


def _one_error(r: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 1, no traceback, exactly one error line, containing ``needle``."""
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr
    assert needle in errors[0], errors[0]


def test_cli_data_errors_are_one_line(tmp_path):
    _one_error(_cli("scratchcnn.train", "--dataset", "mnist", "--data-dir",
                    str(tmp_path / "none"), "--no-progress", check=False),
               "could not download mnist")
    _one_error(_cli("scratchcnn.train", "--dataset", "folder", "--data-dir", str(tmp_path),
                    "--no-progress", check=False), "no train/ folder")
    _one_error(_cli("scratchcnn.train", "--dataset", "mnist", "--image-size", "30",
                    "--data-dir", str(tmp_path), check=False),
               "--image-size 30: only for --dataset folder")


# -- the real datasets, where present -------------------------------------------------------------


def _real(name: str, folder: str) -> Path:
    root = os.environ.get("SCRATCHCNN_DATA")
    if not root:
        pytest.skip("SCRATCHCNN_DATA is not set (the folder holding the real datasets)")
    if not (Path(root) / folder).is_dir():
        pytest.skip(f"no {folder}/ in SCRATCHCNN_DATA={root}")
    return Path(root)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_datasets(name):
    root = _real(name, name)
    ds = load_dataset(name, root, download=False)
    assert ds.train_images.shape == (60_000, 1, 28, 28)
    assert ds.test_images.shape == (10_000, 1, 28, 28)
    assert np.bincount(ds.test_labels).tolist() == (
        [1000] * 10 if name == "fashion-mnist" else np.bincount(ds.test_labels).tolist())


def test_real_cifar10_through_the_registry():
    root = _real("cifar10", "cifar-10-batches-py")
    ds = load_dataset("cifar10", root, download=False)
    assert ds.input_shape == (3, 32, 32) and ds.meta() == CIFAR10_META
