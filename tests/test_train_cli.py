"""python -m scratchcnn.train on a tiny generated CIFAR-10: determinism, resume, signals, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scratchcnn.checkpoint import read_progress, restore
from scratchcnn.model import reference_cnn

from conftest import write_fake_cifar_files

N_PER_BATCH = 16  # 5 x 16 = 80 training images, 16 test images


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar_files(root, n=N_PER_BATCH, seed=5)
    return root


def train(data_dir: Path, out: Path, *flags: str, check: bool = True, background: bool = False):
    cmd = [sys.executable, "-m", "scratchcnn.train", "--data-dir", str(data_dir),
           "--out", str(out), "--no-progress", *flags]
    if "--batch-size" not in flags and "--resume" not in flags:
        cmd += ["--batch-size", "16"]
    env = {**os.environ, "SCRATCHCNN_CIFAR10_URL": "http://127.0.0.1:9/none.tar.gz"}
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out: Path, name: str = "checkpoint.npz") -> dict[str, np.ndarray]:
    with np.load(out / name) as z:
        return {k: z[k] for k in z.files if k.startswith(("model/", "optim/"))}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


LEARNED = ("train_loss", "train_acc", "test_loss", "test_acc")


def test_run_folder_contents(data_dir, tmp_path):
    out = tmp_path / "run"
    r = train(data_dir, out, "--epochs", "2", "--augment")
    assert "epoch   2/2" in r.stdout and "img/s" in r.stdout
    for f in ("config.json", "metrics.jsonl", "checkpoint.npz", "best.npz", "curves.png"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = metrics(out)
    assert [m["epoch"] for m in rows] == [1, 2]
    for key in (*LEARNED, "epoch_seconds", "images_per_second", "loader_wait_seconds"):
        assert all(np.isfinite(m[key]) for m in rows), key
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["augment"] is True and cfg["backend"] == "parallel"
    assert cfg["versions"]["numba"] and cfg["machine"]["cpu_count"] >= 1
    assert "--augment" in cfg["command"]
    # --loader-threads auto (the default), resolved as scratchcnn.threads says and recorded
    from scratchcnn.threads import auto_loader_threads

    assert cfg["args"]["loader_threads_auto"] is True
    assert cfg["loader_threads"] == auto_loader_threads("parallel", cfg["threads"])
    assert f"{cfg['loader_threads']} loader thread(s) (auto)" in r.stdout
    arrays, progress = read_progress(out / "checkpoint.npz")
    assert progress.epoch == 2 and progress.batch == 0
    assert not list(out.glob(".*.tmp"))


def test_identical_across_loader_threads_and_backends(data_dir, tmp_path):
    runs = {
        "loader0": ["--loader-threads", "0"],
        "loader1": ["--loader-threads", "1"],
        "loader4": ["--loader-threads", "4", "--prefetch", "2"],
        "serial": ["--backend", "serial"],
        "parallel3": ["--threads", "3"],
    }
    results = {}
    for name, flags in runs.items():
        out = tmp_path / name
        train(data_dir, out, "--epochs", "2", "--augment", "--seed", "4", *flags)
        results[name] = ([{k: m[k] for k in LEARNED} for m in metrics(out)], weights(out))
    base_metrics, base_weights = results.pop("loader0")
    for name, (m, w) in results.items():
        assert m == base_metrics, name
        assert same_weights(w, base_weights), name


def test_resume_matches_uninterrupted(data_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(data_dir, full, "--epochs", "3", "--seed", "2")
    train(data_dir, part, "--epochs", "1", "--seed", "2")
    r = train(data_dir, tmp_path / "x", "--resume", str(part), "--epochs", "3")
    assert "epoch   3/3" in r.stdout
    resumed = tmp_path / "x"
    assert same_weights(weights(resumed), weights(full))
    assert [m["test_loss"] for m in metrics(resumed)][-2:] == [m["test_loss"]
                                                             for m in metrics(full)][-2:]
    # resuming into the checkpoint's own folder continues its metrics.jsonl
    train(data_dir, part, "--resume", str(part / "checkpoint.npz"), "--epochs", "3")
    assert [m["epoch"] for m in metrics(part)] == [1, 2, 3]
    assert same_weights(weights(part), weights(full))


def test_resume_refuses_changed_settings(data_dir, tmp_path):
    out = tmp_path / "run"
    train(data_dir, out, "--epochs", "1")
    r = train(data_dir, out, "--resume", str(out), "--epochs", "2", "--lr", "0.5", check=False)
    assert r.returncode == 1 and "--lr 0.5 differs" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_sigint_checkpoints_and_resumes_exactly(tmp_path, write_fake_cifar):
    """Ctrl-C lands wherever it lands (mid-epoch or between); resuming ends identically."""
    big = tmp_path / "data"
    write_fake_cifar(big, n=400, seed=1)  # 2000 images: 250 batches of 8 per epoch
    flags = ["--epochs", "3", "--batch-size", "8", "--seed", "1", "--loader-threads", "2"]
    full = tmp_path / "full"
    train(big, full, *flags)
    run = tmp_path / "run"
    p = train(big, run, *flags, background=True)
    # wait until training has started (its first batch is reported; the Ctrl-C handler is
    # installed by then), then let it run a little
    for line in p.stdout:
        if line.startswith("first batch"):
            break
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.fail(f"training finished before the interrupt arrived:\n{stdout}")
    assert p.returncode == 130, stderr
    assert "Resume with:" in stderr and "Traceback" not in stderr
    _, progress = read_progress(run / "checkpoint.npz")
    assert progress.epoch < 3
    train(big, run, "--resume", str(run), "--epochs", "3")
    assert same_weights(weights(run), weights(full))
    assert [m["train_loss"] for m in metrics(run)] == [m["train_loss"] for m in metrics(full)]


def test_sigkill_never_leaves_a_broken_checkpoint(tmp_path, write_fake_cifar):
    """Kill -9 a run that writes a checkpoint every few milliseconds, again and again."""
    data = tmp_path / "data"
    write_fake_cifar(data, n=8, seed=2)  # 40 images: a checkpoint every 3 batches
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    model = reference_cnn(seed=0, backend="serial")
    kills_after_a_checkpoint = 0
    for attempt in range(8):
        flags = ["--epochs", "1000", "--batch-size", "16", "--limit-test", "16"]
        if (run / "checkpoint.npz").exists():
            flags += ["--resume", str(run)]
        p = train(data, run, *flags, background=True)
        deadline = time.time() + 120
        while not (run / "checkpoint.npz").exists() and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.2, 1.5)))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL, f"attempt {attempt}: run ended on its own"
        arrays, progress = read_progress(run / "checkpoint.npz")  # loads, whole
        restore(arrays, "checkpoint", model)
        assert progress.epoch >= 1 and progress.batch == 0
        assert len(metrics(run)) >= progress.epoch - 1
        kills_after_a_checkpoint += 1
    assert kills_after_a_checkpoint == 8


def _one_line_failure(r, *needles):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("flags,needle", [
    (["--threads", "0"], "--threads: must be >= 1"),
    (["--threads", "two"], "expected an integer"),
    (["--epochs", "-3"], "--epochs: must be >= 1"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
    (["--lr", "nan"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--backend", "cuda"], "--backend parallel"),
])
def test_bad_flags(data_dir, tmp_path, flags, needle):
    _one_line_failure(train(data_dir, tmp_path / "r", *flags, check=False), needle)


def test_missing_data_dir_offline(tmp_path):
    r = train(tmp_path / "nowhere", tmp_path / "r", check=False)
    _one_line_failure(r, "nowhere", "--data-dir")
    assert not (tmp_path / "nowhere" / "cifar-10-batches-py").exists()


def test_bad_resume_and_eval_paths(data_dir, tmp_path):
    _one_line_failure(train(data_dir, tmp_path / "r", "--resume", str(tmp_path / "no"),
                            check=False), "no such checkpoint")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 100)
    _one_line_failure(train(data_dir, tmp_path / "r", "--resume", str(junk), check=False),
                      "junk.npz")
    _one_line_failure(train(data_dir, tmp_path / "r", "--eval-only", str(junk), check=False),
                      "junk.npz")


def test_bad_resume_fails_before_compiling(data_dir, tmp_path):
    """A cold Numba cache and a junk checkpoint: the one-line error comes before any
    compile worker starts (no "compiling ..." line, no wait for the kernels)."""
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 100)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cold-cache")}
    r = subprocess.run([sys.executable, "-m", "scratchcnn.train", "--data-dir", str(data_dir),
                        "--no-progress", "--resume", str(junk)],
                       env=env, capture_output=True, text=True, timeout=120)
    _one_line_failure(r, "junk.npz")
    assert "compiling" not in r.stdout, r.stdout


def test_eval_only(data_dir, tmp_path):
    out = tmp_path / "run"
    train(data_dir, out, "--epochs", "1")
    best = metrics(out)[0]["test_acc"]
    r = train(data_dir, tmp_path / "unused", "--eval-only", str(out / "best.npz"))
    assert f"test accuracy {100 * best:.2f}%" in r.stdout
    assert not (tmp_path / "unused").exists()


def test_nan_loss_stops_and_keeps_last_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    from scratchcnn import losses
    from scratchcnn import train as train_mod

    out = tmp_path / "run"
    base = ["--data-dir", str(data_dir), "--out", str(out), "--no-progress",
            "--batch-size", "16", "--threads", "2"]
    assert train_mod.main([*base, "--epochs", "1"]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    calls = {"n": 0}
    real_forward = losses.SoftmaxCrossEntropy.forward

    def poisoned(self, logits, labels):
        calls["n"] += 1
        value = real_forward(self, logits, labels)
        return float("nan") if calls["n"] == 3 else value  # warm-up, batch 1, batch 2

    monkeypatch.setattr(losses.SoftmaxCrossEntropy, "forward", poisoned)
    with pytest.raises(SystemExit) as e:
        train_mod.main([*base, "--resume", str(out), "--epochs", "3"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "loss became nan at epoch 2, batch 2" in err and "(1 epochs)" in err and "--lr" in err
    assert (out / "checkpoint.npz").read_bytes() == before


def test_help_documents_every_flag():
    r = subprocess.run([sys.executable, "-m", "scratchcnn.train", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("--threads", "--backend", "--epochs", "--batch-size", "--optimizer", "--lr",
                 "--seed", "--data-dir", "--loader-threads", "--prefetch", "--augment",
                 "--limit-train", "--limit-test", "--out", "--resume", "--eval-only"):
        assert flag in r.stdout, flag
    assert "default: 2" in r.stdout  # loader threads


def test_serial_first_cold_start(data_dir, tmp_path):
    """--cold-start serial-first on an empty Numba cache: the serial kernels are compiled
    first, the parallel ones in the background (waited for at the end if the run is
    shorter), and the weights are those of a plain parallel run; the run after it starts
    warm, on kernels with the same bits as those the test suite compiled in-process.
    (A cold compile of both backends: about half a minute on 2 cores.)"""
    cache = tmp_path / "numba-cache"
    env_before = os.environ.get("NUMBA_CACHE_DIR")
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    try:
        first = train(data_dir, tmp_path / "first", "--epochs", "2", "--cold-start",
                      "serial-first")
        again = train(data_dir, tmp_path / "again", "--epochs", "1")
    finally:
        if env_before is None:
            del os.environ["NUMBA_CACHE_DIR"]
        else:
            os.environ["NUMBA_CACHE_DIR"] = env_before
    out = first.stdout
    assert "compiling the serial backend's kernels" in out, out
    assert "training starts on the serial kernels" in out and "(serial kernels until then)" in out
    assert ("parallel kernels ready" in out) or ("finishing the parallel kernels'" in out), out
    assert "compiling" not in again.stdout, again.stdout  # the background compile filled it
    train(data_dir, tmp_path / "plain", "--epochs", "2")
    assert same_weights(weights(tmp_path / "first"), weights(tmp_path / "plain"))
    # "again" ran on the kernels the compile workers wrote (lazy_llvm, deferred helpers);
    # "plain1" on those of the suite's cache: the same bits
    train(data_dir, tmp_path / "plain1", "--epochs", "1")
    assert same_weights(weights(tmp_path / "again"), weights(tmp_path / "plain1"))
