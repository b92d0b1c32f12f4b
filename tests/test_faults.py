"""What an adversarial user can do to the training CLI and the library, as the suite's own cases.

Every case ends in one line (``python -m scratchcnn.train: error: <file or flag>: <what is
wrong>; <what to do>``) and a non-zero exit, never a traceback; nothing the user owns is
overwritten or deleted without consent; NaN never hides; nothing hostile allocates
memory it chose. Tiny generated data (tests/conftest.py); most cases call ``main`` in this
process (fast), the signal and resource-limit cases run the CLI as a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn import files
from scratchcnn import train as train_mod
from scratchcnn.checkpoint import read_progress
from scratchcnn.data import DataError, download_cifar10
from scratchcnn.data import download as download_mod
from scratchcnn.data.cifar10 import safe_unpickle

from conftest import write_fake_cifar_files

PREFIX = "python -m scratchcnn.train: error: "
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar data")  # a space: paths must be quoted
    write_fake_cifar_files(root, n=16, seed=5)  # 80 train, 16 test images
    return root


@pytest.fixture(scope="module")
def one_epoch(data_dir, tmp_path_factory):
    """A finished 1-epoch run folder, copied by the tests that tamper with it."""
    out = tmp_path_factory.mktemp("runs") / "one"
    assert train_mod.main(_flags(data_dir, out, "--epochs", "1")) == 0
    return out


def _flags(data_dir: Path, out: Path | None, *more: str) -> list[str]:
    flags = ["--data-dir", str(data_dir), "--no-progress", "--threads", "2",
             "--loader-threads", "0"]
    if out is not None:
        flags += ["--out", str(out)]
    if "--resume" not in more and "--eval-only" not in more:
        flags += ["--batch-size", "16"]
    return [*flags, *more]


def _fails(capsys, argv: list[str], *needles: str, code: int = 1) -> str:
    """Run main in-process; it must exit ``code`` with one line holding every needle."""
    with pytest.raises(SystemExit) as e:
        train_mod.main(argv)
    assert e.value.code == code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX) and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def _cli(args: list[str], env: dict | None = None, cwd: Path | None = None,
         preexec=None, background: bool = False, timeout: float = 300):
    cmd = [sys.executable, "-m", "scratchcnn.train", *args]
    e = {**os.environ, "SCRATCHCNN_CIFAR10_URL": "http://127.0.0.1:9/none.tar.gz",
         "PYTHONPATH": str(REPO), **(env or {})}
    kw = dict(env=e, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
              preexec_fn=preexec)
    if background:
        return subprocess.Popen(cmd, **kw)
    return subprocess.run(cmd, timeout=timeout, **kw)


def _one_line(r) -> str:
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), r.stderr
    return lines[0]


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in train_mod.RUN_FILES:
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _rewrite_checkpoint(path: Path, meta_edit=None, arrays_edit=None) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    if meta_edit:
        meta_edit(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    if arrays_edit:
        arrays_edit(arrays)
    files.save_npz_atomic(path, arrays)


# ----------------------------------------------------------------------------- 1. --out

def test_out_is_an_existing_file(data_dir, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    _fails(capsys, _flags(data_dir, f), f"--out {f}", "not a folder")
    assert f.read_text() == "mine"


def test_out_under_a_file(data_dir, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    _fails(capsys, _flags(data_dir, f / "run"), "--out", "cannot create", "writable --out")


def test_out_under_proc(data_dir, capsys):
    _fails(capsys, _flags(data_dir, Path("/proc/scratchcnn-run")), "--out /proc/scratchcnn-run",
           "cannot create", "writable --out")


def test_out_on_a_read_only_filesystem(data_dir, tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if self == tmp_path / "ro":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    _fails(capsys, _flags(data_dir, tmp_path / "ro"), "--out", "Read-only file system")


# ----------------------------------------------------------------------------- 1. disk full

@pytest.mark.parametrize("target", ["metrics.jsonl", "best.npz", "checkpoint.npz", "curves.png"])
def test_disk_full_keeps_the_previous_checkpoint(one_epoch, data_dir, tmp_path, capsys,
                                                 monkeypatch, target):
    run = _copy_run(one_epoch, tmp_path / "run")
    real = files.write_bytes_atomic

    def full(path, data):
        if Path(path).name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    # best.npz is written too: any test accuracy beats -1
    _rewrite_checkpoint(run / "checkpoint.npz", lambda m: m.update(best_test_acc=-1.0))
    before = (run / "checkpoint.npz").read_bytes()
    monkeypatch.setattr(files, "write_bytes_atomic", full)
    line = _fails(capsys, _flags(data_dir, None, "--resume", str(run), "--epochs", "2"),
                  target, "No space left on device", "is intact", "--resume")
    assert str(run / "checkpoint.npz") in line
    assert (run / "checkpoint.npz").read_bytes() == before or target == "curves.png"
    assert read_progress(run / "checkpoint.npz")[1].epoch in (1, 2)
    assert not list(run.glob(".*.tmp"))


def test_disk_full_in_a_new_folder_prints_a_working_resume_command(one_epoch, data_dir, tmp_path,
                                                                   capsys, monkeypatch):
    real = files.write_bytes_atomic

    def full(path, data):
        if Path(path).name == "checkpoint.npz":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data)

    monkeypatch.setattr(files, "write_bytes_atomic", full)
    new = tmp_path / "new run"
    line = _fails(capsys, _flags(data_dir, new, "--resume", str(one_epoch), "--epochs", "2"),
                  "No space left on device", str(one_epoch / "checkpoint.npz"), "is intact")
    monkeypatch.setattr(files, "write_bytes_atomic", real)  # space freed
    argv = shlex.split(line.split("resume with: ", 1)[1])
    assert argv[:3] == ["python", "-m", "scratchcnn.train"]
    assert train_mod.main(argv[3:]) == 0
    assert [m["epoch"] for m in _metrics(new)] == [1, 2]
    assert read_progress(new / "checkpoint.npz")[1].epoch == 2


def test_real_file_size_limit_in_a_subprocess(one_epoch, data_dir, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the checkpoint's bytes (EFBIG), as a full disk
    would: one line, the old checkpoint intact and loadable, no temporary file left."""
    run = _copy_run(one_epoch, tmp_path / "run")
    before = (run / "checkpoint.npz").read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # checkpoints: ~1.5 MB

    r = _cli(_flags(data_dir, None, "--resume", str(run), "--epochs", "2"), preexec=limit)
    line = _one_line(r)
    assert "cannot write" in line and "is intact" in line
    assert (run / "checkpoint.npz").read_bytes() == before
    assert not list(run.glob(".*.tmp"))


# ----------------------------------------------------------------------------- 1. tampered

def _tamper_cases():
    def meta(fn):
        return (fn, None)

    def arrays(fn):
        return (None, fn)

    def set_partial(m):
        m.update(batch=999, partial={"loss": 1.0, "correct": 1, "seen": 16, "seconds": 1.0,
                                     "wait": 0.0})

    return {
        "extra key": (meta(lambda m: m.update(surprise=1)), "unexpected keys"),
        "missing key": (meta(lambda m: m.pop("best_test_acc")), "missing keys"),
        "wrong type": (meta(lambda m: m.update(epoch="1")), "'epoch'"),
        "settings not a dict": (meta(lambda m: m.update(config={"settings": 3})), "'config'"),
        "no settings": (meta(lambda m: m.update(config={})), "no run settings"),
        "batch size 0": (meta(lambda m: m["config"]["settings"].update(batch_size=0)),
                         "'batch_size'"),
        "unknown optimizer": (meta(lambda m: m["config"]["settings"].update(optimizer="x")),
                              "'optimizer'"),
        "partial sums wrong": (meta(lambda m: m.update(batch=2, partial={"loss": "a"})),
                               "'partial'"),
        "batch past the end": (meta(set_partial), "past the end"),
        "non-scalar step counter": (arrays(lambda a: a.update({"optim/t": np.arange(3)})),
                                    "'optim/t'"),
        "string weights": (arrays(lambda a: a.update({"model/conv1.bias": np.array(["a"] * 32)})),
                           "'model/conv1.bias'"),
        "NaN weights": (arrays(lambda a: a["model/dense2.weight"].__setitem__((0, 0), np.nan)),
                        "'model/dense2.weight'"),
        "inf optimizer state": (arrays(lambda a: a["optim/m.0"].__setitem__((0, 0, 0, 0), np.inf)),
                                "'optim/m.0'"),
    }


@pytest.mark.parametrize("case", list(_tamper_cases()))
def test_tampered_checkpoint_is_refused_in_one_line(one_epoch, data_dir, tmp_path, capsys, case):
    (meta_fn, arrays_fn), needle = _tamper_cases()[case]
    run = _copy_run(one_epoch, tmp_path / "run")
    _rewrite_checkpoint(run / "checkpoint.npz", meta_fn, arrays_fn)
    before = sorted(p.name for p in run.iterdir())
    _fails(capsys, _flags(data_dir, None, "--resume", str(run), "--epochs", "2"),
           str(run / "checkpoint.npz"), needle)
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == before


def test_half_written_meta_json(one_epoch, data_dir, tmp_path, capsys):
    run = _copy_run(one_epoch, tmp_path / "run")
    with np.load(run / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array(str(arrays["meta"])[:40])
    files.save_npz_atomic(run / "checkpoint.npz", arrays)
    _fails(capsys, _flags(data_dir, None, "--resume", str(run), "--epochs", "2"),
           "checkpoint.npz", "corrupt checkpoint metadata")


@pytest.mark.parametrize("text,line", [('{"train_loss": 1.0}\n', 1),
                                       ('{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, "tr', 2),
                                       ('[1, 2]\n', 1), ('{"epoch": "1"}\n', 1)])
def test_damaged_metrics_file(one_epoch, data_dir, tmp_path, capsys, text, line):
    run = _copy_run(one_epoch, tmp_path / "run")
    (run / "metrics.jsonl").write_text(text)
    _fails(capsys, _flags(data_dir, None, "--resume", str(run), "--epochs", "2"),
           str(run / "metrics.jsonl"), f"line {line}", "repair or delete")


@pytest.mark.parametrize("what", ["string", "nan"])
def test_eval_only_refuses_bad_weights(one_epoch, data_dir, tmp_path, capsys, what):
    w = tmp_path / "w.npz"
    m = sc.reference_cnn(seed=0, backend="serial")
    state = dict(m.state_dict())
    if what == "string":
        state["conv2.bias"] = np.array(["x"] * 64)
    else:
        state["conv2.bias"] = np.full(64, np.nan, np.float32)
    files.save_npz_atomic(w, state)
    _fails(capsys, _flags(data_dir, None, "--eval-only", str(w)), str(w), "'conv2.bias'")


# ----------------------------------------------------------------------------- 1. signals

def test_ctrl_c_during_start_up(data_dir, tmp_path, capsys, monkeypatch):
    from scratchcnn.data import cifar10

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cifar10, "load_cifar10", interrupted)
    _fails(capsys, _flags(data_dir, tmp_path / "run"), "interrupted during start-up", code=130)
    assert not (tmp_path / "run").exists()


def test_sigterm_during_start_up(data_dir, tmp_path, capsys, monkeypatch):
    from scratchcnn.data import cifar10

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(cifar10, "load_cifar10", terminated)
    _fails(capsys, _flags(data_dir, tmp_path / "run"), "interrupted", code=130)
    assert signal.getsignal(signal.SIGTERM) is not train_mod._raise_interrupt  # restored


class _InterruptingBar:
    """Stands in for tqdm in the downloader: Ctrl-C after the first chunk is on disk."""

    def __init__(self, *a, **k):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        raise KeyboardInterrupt


def test_ctrl_c_during_download_removes_partial_files(tmp_path, http_server, make_tarball,
                                                      monkeypatch, capsys):
    base, served = http_server
    make_tarball(served)
    monkeypatch.setattr(download_mod, "tqdm", _InterruptingBar)
    monkeypatch.setenv("SCRATCHCNN_CIFAR10_URL", f"{base}/cifar-10-python.tar.gz")
    data = tmp_path / "data"
    _fails(capsys, ["--data-dir", str(data), "--out", str(tmp_path / "run"), "--no-progress"],
           "interrupted during start-up", code=130)
    assert list(data.iterdir()) == []  # no .part, no extraction folder
    assert not (tmp_path / "run").exists()


def test_killed_downloads_leftovers_are_removed(tmp_path, http_server, make_tarball):
    base, served = http_server
    _, md5 = make_tarball(served)
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-10-python.tar.gz.k1ll3d.part").write_bytes(b"half")
    (data / ".cifar-10-extract-k1ll3d").mkdir()
    (data / "mine.txt").write_text("not the downloader's")
    download_cifar10(data, url=f"{base}/cifar-10-python.tar.gz", md5=md5, progress=False)
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-py", "mine.txt"]


def _wait_for_training(p: subprocess.Popen) -> None:
    """Read the run's stdout until its first batch is trained (the signal handlers are
    installed by then: no race with start-up, however loaded the machine)."""
    for line in p.stdout:
        if line.startswith("first batch"):
            return
    raise AssertionError(f"the run ended before its first batch: {p.stderr.read()}")


def test_sigterm_checkpoints_and_the_printed_command_resumes(tmp_path, write_fake_cifar):
    """SIGTERM = Ctrl-C: finish the batch, checkpoint, print a resume command that works as
    printed, from another folder, with no $SCRATCHCNN_DATA, paths with spaces included."""
    data = tmp_path / "my data"
    write_fake_cifar(data, n=400, seed=1)  # 2000 images: 250 batches of 8
    run = tmp_path / "my run"
    env = {"SCRATCHCNN_DATA": ""}
    p = _cli(["--data-dir", str(data), "--out", str(run), "--epochs", "3", "--batch-size", "8",
              "--threads", "2"], env=env, background=True)
    _wait_for_training(p)
    p.send_signal(signal.SIGTERM)  # in epoch 1 of 3: it stops at the end of this batch
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "Resume with: " in err
    command = err.split("Resume with: ", 1)[1].strip().splitlines()[0]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "scratchcnn.train"]
    assert argv[argv.index("--data-dir") + 1] == str(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = _cli(argv[3:], env=env, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in _metrics(run)] == [1, 2, 3]
    assert read_progress(run / "checkpoint.npz")[1].epoch == 3


# ----------------------------------------------------------------------------- 1. library

@pytest.mark.parametrize("kw,needles", [
    (dict(kernel_size=2.5), ("conv", "kernel_size", "2.5")),
    (dict(kernel_size=(3,)), ("conv", "kernel_size", "(3,)")),
    (dict(kernel_size="3"), ("conv", "kernel_size", "'3'")),
    (dict(kernel_size=3, stride=None), ("conv", "stride", "None")),
    (dict(kernel_size=3, stride=(1, 1.5)), ("conv", "stride")),
    (dict(kernel_size=3, padding=(1, 2, 3)), ("conv", "padding", "(1, 2, 3)")),
    (dict(kernel_size=3, padding=1.0), ("conv", "padding")),
    (dict(kernel_size=3, padding="full"), ("conv", "padding", "'full'")),
    (dict(kernel_size=3, in_channels=2.5), ("conv", "in_channels", "2.5")),
    (dict(kernel_size=3, backend="gpu"), ("conv", "unknown backend 'gpu'")),
    (dict(kernel_size=3, dtype=np.float16), ("conv", "float16")),
    (dict(kernel_size=3, dtype=np.int32), ("conv", "int32")),
    (dict(kernel_size=3, dtype="no-such-type"), ("conv",)),
    (dict(kernel_size=3, stride=2, padding="same"), ("conv", "same", "stride 1", "Keras")),
])
def test_conv_constructor_errors_are_one_line(kw, needles):
    kw = {"in_channels": 3, **kw}
    with pytest.raises(ValueError) as e:
        sc.Conv2D(kw.pop("in_channels"), 4, name="conv", **kw)
    msg = str(e.value)
    assert "\n" not in msg and "numba" not in msg.lower()
    for n in needles:
        assert n in msg, (n, msg)


def test_other_constructor_errors():
    for make, needle in [(lambda: sc.Dense(2.5, 3), "in_features"),
                         (lambda: sc.Dense(3, True), "out_features"),
                         (lambda: sc.MaxPool2D(2.0), "pool_size"),
                         (lambda: sc.MaxPool2D(2, stride=(2,)), "stride"),
                         (lambda: sc.Dense(3, 4, name=5), "name"),
                         (lambda: sc.Sequential([sc.Flatten(), 3]), "item 1 is a int")]:
        with pytest.raises(ValueError, match=needle):
            make()


def test_same_padding_at_stride_one_matches_a_hand_computed_example():
    """Keras 'same', stride 1, 3x3 on a 3x3 input: one zero row/column on each side."""
    conv = sc.Conv2D(1, 1, 3, padding="same", backend="serial", dtype=np.float64)
    conv.weight.value[...] = 1.0
    conv.bias.value[...] = 0.0
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    # sums of each pixel's 3x3 neighbourhood inside the image
    want = np.array([[8, 15, 12], [21, 36, 27], [20, 33, 24]], np.float64)
    assert np.array_equal(conv.forward(x)[0, 0], want)


@pytest.mark.parametrize("make,needles", [
    (lambda p: sc.Adam(p, lr=float("nan")), ("Adam", "lr", "nan")),
    (lambda p: sc.Adam(p, lr=float("inf")), ("Adam", "lr")),
    (lambda p: sc.Adam(p, lr=-1e-3), ("Adam", "lr")),
    (lambda p: sc.Adam(p, beta1=1.0), ("Adam", "beta1")),
    (lambda p: sc.Adam(p, beta2=float("nan")), ("Adam", "beta2")),
    (lambda p: sc.Adam(p, eps=0), ("Adam", "eps")),
    (lambda p: sc.Adam(p, lr="0.1"), ("Adam", "lr")),
    (lambda p: sc.SGD(p, momentum=-0.5), ("SGD", "momentum")),
    (lambda p: sc.SGD(p, momentum=float("nan")), ("SGD", "momentum")),
    (lambda p: sc.SGD(p, lr=float("inf")), ("SGD", "lr")),
    (lambda p: sc.SGD(p, weight_decay=-1), ("SGD", "weight_decay")),
    (lambda p: sc.SGD(p, backend="gpu"), ("SGD", "unknown backend")),
])
def test_optimizer_arguments_are_checked(make, needles):
    with pytest.raises(ValueError) as e:
        make(sc.Dense(3, 4, backend="serial").params())
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


@pytest.mark.parametrize("dtype", [np.float16, np.int32])
def test_optimizer_refuses_unsupported_dtypes(dtype):
    from scratchcnn.layers import Parameter

    p = Parameter("w", np.zeros(4, dtype), np.zeros(4, dtype))
    for opt in (sc.Adam, sc.SGD):
        with pytest.raises(ValueError, match=f"{opt.__name__}: parameter 'w' has dtype"):
            opt([p], backend="serial")


@pytest.mark.parametrize("flags,needles", [
    (["--momentum", "0.5"], ("--momentum", "sgd")),
    (["--optimizer", "sgd", "--momentum", "1.5"], ("--momentum", "[0, 1)")),
    (["--optimizer", "sgd", "--momentum", "nan"], ("--momentum",)),
    (["--lr", "inf"], ("--lr",)),
    (["--lr", "-1"], ("--lr",)),
])
def test_cli_refuses_bad_optimizer_flags(data_dir, tmp_path, capsys, flags, needles):
    with pytest.raises(SystemExit) as e:
        train_mod.main(_flags(data_dir, tmp_path / "run", *flags))
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 2. consent

def test_non_empty_folder_is_not_replaced(one_epoch, data_dir, tmp_path, capsys):
    run = _copy_run(one_epoch, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    _fails(capsys, _flags(data_dir, run, "--epochs", "1"), f"--out {run}", "not empty",
           "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # not even a .lock
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    _fails(capsys, _flags(data_dir, tmp_path / "mine", "--epochs", "1"), "notes.txt")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my notes"


def test_overwrite_replaces_only_the_runs_own_files(one_epoch, data_dir, tmp_path):
    run = _copy_run(one_epoch, tmp_path / "run")
    (run / "notes.txt").write_text("my notes")
    (run / ".notes.tmp").write_text("my temporary notes")
    (run / "best.npz").unlink()
    stale = run / ".checkpoint.npz.abc123.tmp"
    stale.write_bytes(b"left by a kill")
    assert train_mod.main(_flags(data_dir, run, "--epochs", "1", "--overwrite",
                                 "--seed", "3")) == 0
    assert (run / "notes.txt").read_text() == "my notes"
    assert (run / ".notes.tmp").read_text() == "my temporary notes"
    assert not stale.exists()
    assert read_progress(run / "checkpoint.npz")[1].config["settings"]["seed"] == 3
    assert [m["epoch"] for m in _metrics(run)] == [1]


def test_a_second_run_on_a_locked_folder_is_refused(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with files.RunLock(run):
        _fails(capsys, _flags(data_dir, run, "--epochs", "1"), f"--out {run}",
               "another run is writing")
    assert train_mod.main(_flags(data_dir, run, "--epochs", "1")) == 0  # free again


def test_two_processes_on_one_folder(data_dir, tmp_path):
    run = tmp_path / "run"
    p = _cli(_flags(data_dir, run, "--epochs", "1000", "--limit-test", "16"), background=True)
    try:
        _wait_for_training(p)
        r = _cli(_flags(data_dir, run, "--epochs", "1", "--overwrite"))
        assert "another run is writing" in _one_line(r)
    finally:
        p.kill()
        p.communicate(timeout=60)


def test_resume_into_a_new_folder_carries_metrics_and_best(one_epoch, data_dir, tmp_path):
    new = tmp_path / "new"
    assert train_mod.main(_flags(data_dir, new, "--resume", str(one_epoch), "--epochs", "2")) == 0
    rows = _metrics(new)
    assert [m["epoch"] for m in rows] == [1, 2]
    assert rows[0] == _metrics(one_epoch)[0]
    assert (new / "best.npz").is_file()
    assert read_progress(one_epoch / "checkpoint.npz")[1].epoch == 1  # the source untouched


def test_metrics_are_written_before_the_checkpoint(data_dir, tmp_path, monkeypatch):
    order = []
    real = files.write_bytes_atomic

    def logged(path, data):
        order.append(Path(path).name)
        return real(path, data)

    monkeypatch.setattr(files, "write_bytes_atomic", logged)
    assert train_mod.main(_flags(data_dir, tmp_path / "run", "--epochs", "2")) == 0
    epochs = [i for i, n in enumerate(order) if n == "checkpoint.npz"]
    assert len(epochs) == 2
    for at in epochs:
        assert "metrics.jsonl" in order[:at] and order[:at].count("metrics.jsonl") >= 1
        last_metrics = max(i for i, n in enumerate(order[:at]) if n == "metrics.jsonl")
        assert "checkpoint.npz" not in order[last_metrics:at]


def test_kill_between_metrics_and_checkpoint_leaves_a_consistent_run(one_epoch, data_dir,
                                                                     tmp_path):
    """What a kill after the metrics write and before the checkpoint rename leaves: a row
    ahead of the checkpoint. Resuming drops it and retrains that epoch: epochs [1, 2]."""
    run = _copy_run(one_epoch, tmp_path / "run")
    rows = _metrics(run)
    ghost = {**rows[0], "epoch": 2, "train_loss": 123.0}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, ghost]))
    assert train_mod.main(_flags(data_dir, None, "--resume", str(run), "--epochs", "2")) == 0
    new = _metrics(run)
    assert [m["epoch"] for m in new] == [1, 2] and new[1]["train_loss"] != 123.0


def test_run_files_share_one_mode(data_dir, tmp_path):
    run = tmp_path / "run"
    assert train_mod.main(_flags(data_dir, run, "--epochs", "1")) == 0
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert set(modes) == {*train_mod.RUN_FILES, ".lock"}
    assert set(modes.values()) == {files.file_mode()}, modes


# ----------------------------------------------------------------------------- 3. NaN

def test_non_finite_gradient_stops_before_the_update():
    from scratchcnn.loop import NonFiniteParameter, train_step

    model = sc.reference_cnn(seed=0, backend="serial")
    opt = sc.Adam(model.parameters(), backend="serial")
    loss = sc.SoftmaxCrossEntropy(backend="serial")
    x, y = np.zeros((2, 3, 32, 32), np.float32), np.zeros(2, np.int64)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    real_backward = model.backward

    def poisoned(dout, *a, **k):
        out = real_backward(dout, *a, **k)
        model.layers[2].weight.grad[0, 0, 0, 0] = np.nan
        return out

    model.backward = poisoned
    with pytest.raises(NonFiniteParameter, match="gradient of conv2.weight"):
        train_step(model, loss, opt, x, y)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_non_finite_weight_after_the_update_is_reported():
    from scratchcnn.loop import NonFiniteParameter, train_step

    model = sc.reference_cnn(seed=0, backend="serial")
    opt = sc.SGD(model.parameters(), lr=0.1, backend="serial")
    loss = sc.SoftmaxCrossEntropy(backend="serial")
    real_step = opt.step

    def overflowing_step():
        real_step()
        model.layers[-1].bias.value[3] = np.inf  # as an overflowing update would leave it

    opt.step = overflowing_step
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    with pytest.raises(NonFiniteParameter, match="weight dense2.bias became non-finite"):
        train_step(model, loss, opt, x, np.arange(4, dtype=np.int64))


def test_nan_stop_names_a_checkpoint_that_exists(one_epoch, data_dir, tmp_path, capsys,
                                                 monkeypatch):
    """Resumed into a new folder, the stop message names the resumed checkpoint (the new
    folder has none yet), and that file exists."""
    from scratchcnn import loop

    real = loop.first_non_finite
    monkeypatch.setattr(loop, "first_non_finite",
                        lambda model, opt, what: "dense1.weight" if what == "grad"
                        else real(model, opt, what))
    new = tmp_path / "new"
    line = _fails(capsys, _flags(data_dir, new, "--resume", str(one_epoch), "--epochs", "2"),
                  "gradient of dense1.weight became non-finite", "training stopped")
    named = line.split("the last good checkpoint (1 epochs) is ", 1)[1].split(";")[0]
    assert Path(named).is_file() and Path(named) == one_epoch / "checkpoint.npz"
    assert not (new / "checkpoint.npz").exists()


# ----------------------------------------------------------------------------- 5. hostile data

class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_unpickler_refuses_bytearray_allocation(tmp_path):
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps(_Reduce(bytearray, (512 << 20,)), protocol=2))
    assert len(f.read_bytes()) < 40  # a 30-byte file that would allocate 512 MiB
    with pytest.raises(DataError, match="forbidden global '(__builtin__|builtins).bytearray'"):
        safe_unpickle(f)


def test_unpickler_refuses_huge_arrays_before_allocating(tmp_path):
    from scratchcnn.data.cifar10 import _numpy_multiarray

    f = tmp_path / "data_batch_1"
    huge = _Reduce(_numpy_multiarray()._reconstruct, (np.ndarray, (1 << 40,), b"b"))
    f.write_bytes(pickle.dumps(huge, protocol=2))
    with pytest.raises(DataError, match="array of 1,099,511,627,776 bytes"):
        safe_unpickle(f)
    f.write_bytes(pickle.dumps(_Reduce(np.ndarray, ((1 << 20, 1 << 20),)), protocol=2))
    with pytest.raises(DataError, match="refused to load"):
        safe_unpickle(f)


def test_unpickler_admits_codecs_encode_for_latin1_only(tmp_path):
    import _codecs

    f = tmp_path / "batches.meta"
    f.write_bytes(pickle.dumps(_Reduce(_codecs.encode, ("ab", "latin1")), protocol=2))
    assert safe_unpickle(f) == b"ab"
    f.write_bytes(pickle.dumps(_Reduce(_codecs.encode, ("\U0010ffff" * 4, "unicode_escape")),
                               protocol=2))
    with pytest.raises(DataError, match="only admitted for Latin-1"):
        safe_unpickle(f)


def test_download_stops_past_the_size_cap(tmp_path, http_server, make_tarball, monkeypatch):
    base, served = http_server
    _, md5 = make_tarball(served)
    monkeypatch.setattr(download_mod, "MAX_DOWNLOAD_BYTES", 1000)
    data = tmp_path / "data"
    with pytest.raises(DataError, match="more than the 0 MiB"):
        download_cifar10(data, url=f"{base}/cifar-10-python.tar.gz", md5=md5, progress=False)
    assert list(data.iterdir()) == []


def test_npz_declaring_huge_arrays_is_refused_before_allocating(tmp_path, capsys, data_dir):
    """A 1 kB checkpoint whose array header claims 1 TB, and one whose compressed member
    unpacks to far more than the file: refused in one line, nothing allocated."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 38,)})
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as zf:
        zf.writestr("model/conv1.weight.npy", header.getvalue() + b"\0" * 64)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("model/conv1.weight.npy", "w", force_zip64=True) as f:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (25 << 20,)})
            f.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(100):  # 100 MiB of zeros in ~100 kB
                f.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    for path, needle in ((liar, "claims shape"), (bomb, "declare")):
        with pytest.raises(ValueError, match=needle):
            files.load_npz(path)
        _fails(capsys, _flags(data_dir, None, "--eval-only", str(path)), str(path),
               "refused to load")


def test_extraction_stops_past_the_size_cap_even_with_the_users_checksum(
        tmp_path, http_server, make_tarball, monkeypatch):
    base, served = http_server
    _, md5 = make_tarball(served)  # the user supplies the right checksum of this archive
    monkeypatch.setattr(download_mod, "MAX_EXTRACT_BYTES", 10_000)  # the archive: ~60 kB
    data = tmp_path / "data"
    with pytest.raises(DataError, match="refused archive"):
        download_cifar10(data, url=f"{base}/cifar-10-python.tar.gz", md5=md5, progress=False)
    assert list(data.iterdir()) == []


# ----------------------------------------------------------------------------- 7. output

def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, http_server, make_tarball):
    """No --no-progress, stderr a pipe: neither the download's nor training's bar appears."""
    base, served = http_server
    _, md5 = make_tarball(served)
    r = _cli(["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
              "--epochs", "1", "--batch-size", "5", "--threads", "2"],
             env={"SCRATCHCNN_CIFAR10_URL": f"{base}/cifar-10-python.tar.gz",
                  "SCRATCHCNN_CIFAR10_MD5": md5})
    assert r.returncode == 0, r.stderr
    assert "Downloading" in r.stderr  # the one-line notice stays
    assert "\r" not in r.stderr and "it/s" not in r.stderr and "batch/s" not in r.stderr
    assert "%|" not in r.stderr


def test_progress_bars_are_off_with_no_progress_even_on_a_terminal(data_dir, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert train_mod.main(_flags(data_dir, tmp_path / "run", "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err


# ----------------------------------------------------------------------------- 9. README

def test_readme_reliability_claims_point_to_existing_tests():
    """Every test the README's Reliability section names exists (a renamed test fails here)."""
    import re

    readme = (REPO / "README.md").read_text()
    section = readme.split("### Reliability", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"`((?:tests/\w+\.py::)?test_\w+)\*?(?:\[[^\]]*\])?`", section)
    assert len(names) >= 25
    here = Path(__file__).read_text()
    for name in names:
        path, _, test = name.rpartition("::")
        source = (REPO / path).read_text() if path else here
        if test.endswith("_"):  # a prefix: test_out_*
            assert f"def {test}" in source, name
        else:
            assert re.search(rf"^def {test}\(", source, re.M), name


def test_an_error_never_lands_on_a_progress_bar_line(data_dir, tmp_path):
    """stderr on a terminal (a pty), the bar drawn, then training diverges mid-epoch: the
    error line starts on a cleared line, not after the bar's text."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    cmd = [sys.executable, "-m", "scratchcnn.train", "--data-dir", str(data_dir), "--out",
           str(tmp_path / "run"), "--threads", "2", "--batch-size", "8", "--lr", "1e30"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert p.wait(timeout=120) == 1
    text = raw.decode("utf-8", "replace")
    assert "%|" in text or "batch/s" in text  # the bar was drawn
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if "error:" in ln]
    assert len(lines) == 1 and "became" in lines[0] and "Traceback" not in text, text
    segments = lines[0].split("\r")
    assert segments[-1].startswith(PREFIX), repr(lines[0])
    assert all(not seg.strip() for seg in segments[-2:-1]), repr(lines[0])  # cleared first



def test_no_import_cycle_in_the_data_package():
    """cifar10.py may import download.py (lazily); download.py imports only layout.py."""
    import ast

    folder = REPO / "scratchcnn" / "data"
    graph = {}
    for f in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "scratchcnn.data."):
                deps.add(node.module.rsplit(".", 1)[1])
        graph[f.stem] = deps - {"__init__"}

    def reaches(a, b, seen=()):
        return any(d == b or (d not in seen and reaches(d, b, (*seen, d)))
                   for d in graph.get(a, ()))

    assert "layout" in graph["download"] and "cifar10" not in graph["download"]
    for module in graph:
        if module != "__init__":
            assert not reaches(module, module), module
