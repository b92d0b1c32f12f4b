"""Real MPI: ``mpiexec -n P python -m mpi4py -m scratchcnn.train --distributed`` against one
process, bit for bit; a failing rank ends the job; Ctrl-C stops every rank at one batch.

The ranks run as subprocesses of ``mpiexec`` (with a timeout); nothing here imports
``mpi4py.MPI``. The first test trains one process first, which also warms the Numba
cache the ranks then load from. Skipped where the ``mpi`` extra (mpi4py and an MPI
runtime's ``mpiexec``) is not installed. The exhaustive combinations (P = 1...4,
threads, optimizers, empty shares) run without MPI in tests/test_distributed.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_fake_cifar_files

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="the mpi extra is not installed (pip install '.[mpi]': mpi4py and mpich)")

LEARNED = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar_files(root, n=21, seed=8)  # 105 training images: batches 32, 32, 32, 9
    return root


def _env() -> dict:
    return {**os.environ, "SCRATCHCNN_CIFAR10_URL": "http://127.0.0.1:9/none.tar.gz"}


def _cmd(data_dir: Path, out: Path, *flags: str) -> list[str]:
    return ["-m", "scratchcnn.train", "--data-dir", str(data_dir), "--out", str(out),
            "--no-progress", "--batch-size", "32", "--limit-test", "40", *flags]


def one_process(data_dir, out, *flags, timeout=240):
    r = subprocess.run([sys.executable, *_cmd(data_dir, out, *flags)], env=_env(),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r


def mpi(ranks: int, data_dir, out, *flags, check=True, timeout=120, mpmd_extra=None):
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py",
           *_cmd(data_dir, out, "--distributed", *flags)]
    if mpmd_extra:  # MPMD: one more rank with other flags (MPICH/Open MPI syntax)
        cmd += [":", "-n", "1", sys.executable, "-m", "mpi4py",
                *_cmd(data_dir, out, "--distributed", *mpmd_extra)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def arrays(out: Path) -> dict[str, bytes]:
    with np.load(out / "checkpoint.npz") as z:
        return {k: z[k].tobytes() for k in z.files if k != "meta"}


def learned(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in LEARNED} for r in rows]


CASES = [  # (ranks, threads per rank, flags)
    (2, 1, ("--optimizer", "adam", "--augment")),
    (3, 2, ("--optimizer", "sgd",)),
    (4, 1, ("--optimizer", "adam", "--augment")),
]


def test_ranks_match_one_process(data_dir, tmp_path):
    refs = {}
    for ranks, threads, flags in CASES:
        if flags not in refs:
            ref = tmp_path / f"ref{len(refs)}"
            one_process(data_dir, ref, "--epochs", "2", "--threads", "2", *flags)
            refs[flags] = ref
        out = tmp_path / f"p{ranks}t{threads}"
        mpi(ranks, data_dir, out, "--epochs", "2", "--threads", str(threads), *flags)
        assert arrays(out) == arrays(refs[flags]), (ranks, threads, flags)
        assert learned(out) == learned(refs[flags]), (ranks, threads, flags)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["distributed"]["world_size"] == ranks
        assert "MPICH" in cfg["distributed"]["mpi_library"] or "Open MPI" in \
            cfg["distributed"]["mpi_library"]
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(r["comm_seconds"] >= 0 and r["world_size"] == ranks for r in rows)


def test_mismatched_ranks_refuse_to_start(data_dir, tmp_path):
    r = mpi(1, data_dir, tmp_path / "x", "--epochs", "1", check=False,
            mpmd_extra=("--epochs", "1", "--seed", "9"))
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if "error:" in x]
    assert len(lines) == 1 and "rank 1 differs from rank 0 in initial parameters" in lines[0]
    assert "Traceback" not in r.stderr


def test_an_error_on_one_rank_ends_the_job(data_dir, tmp_path):
    # rank 0 would train 50 epochs; rank 1 fails at start. Without the abort, rank 0
    # would wait in a collective forever: the subprocess timeout would fail the test.
    r = mpi(1, data_dir, tmp_path / "x", "--epochs", "50", check=False, timeout=90,
            mpmd_extra=("--epochs", "50", "--data-dir", str(tmp_path / "missing")))
    assert r.returncode != 0
    assert "rank 1:" in r.stderr


def test_cuda_is_refused(data_dir, tmp_path):
    r = subprocess.run([sys.executable, *_cmd(data_dir, tmp_path / "x", "--distributed",
                                               "--backend", "cuda")],
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "CPU backends only" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_interrupt_stops_every_rank_and_resume_with_other_ranks(data_dir, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    one_process(data_dir, full, "--epochs", "3", "--threads", "1")
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py",
           *_cmd(data_dir, part, "--distributed", "--epochs", "3", "--threads", "1")]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    for line in p.stdout:  # wait until training runs, then Ctrl-C the job
        if line.startswith("epoch   1/3"):
            p.send_signal(signal.SIGINT)
            break
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Resume with" in err
    resumed = tmp_path / "resumed"
    mpi(3, data_dir, resumed, "--resume", str(part), "--epochs", "3", "--threads", "1")
    assert arrays(resumed) == arrays(full)
    assert learned(resumed)[-1] == learned(full)[-1]
