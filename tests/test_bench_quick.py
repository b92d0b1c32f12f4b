"""bench/compare.py and bench/loader.py in tiny quick runs on the real CIFAR-10.

The benchmark runs use the real data (``SCRATCHCNN_DATA`` must point at the
folder containing ``cifar-10-batches-py/``) and are skipped without it. The
PyTorch part runs only where torch is installed (``pip install -e .[bench]``).
Each run is a separate process: Numba's pool size is fixed at import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_file_as

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = os.environ.get("SCRATCHCNN_DATA")
HAVE_DATA = bool(DATA) and (Path(DATA) / "cifar-10-batches-py" / "batches.meta").is_file()
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="needs the real CIFAR-10: set SCRATCHCNN_DATA to the folder that "
                          "contains cifar-10-batches-py/ (e.g. SCRATCHCNN_DATA=/work/shared/data)")
needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="PyTorch not installed (pip install -e .[bench]); the --reference torch part is skipped")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Hand count for the reference network (see bench/harness.py:training_flops):
#: conv1 2*32*3*9*900 x 2 (no input gradient), conv2 2*64*32*9*169 x 3,
#: conv3 2*64*64*9*16 x 3, dense1 2*1024*64 x 3, dense2 2*64*10 x 3.
FLOPS_PER_IMAGE = 3_110_400 + 18_690_048 + 3_538_944 + 393_216 + 3_840
SMALL = ["--limit-train", "256", "--limit-test", "256", "--epochs", "1", "--repeats", "1",
         "--gemm-size", "256"]


def run_bench(script: str, out: Path, *flags: str) -> dict:
    cmd = [sys.executable, str(BENCH / script), "--out", str(out), *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads((out / script.replace(".py", ".json")).read_text())


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000, f"{path} is not a non-empty PNG"


def assert_spread(sp: dict) -> None:
    assert 0 < sp["min"] <= sp["median"] <= sp["max"] and sp["n"] >= 1


def test_flop_count_matches_the_hand_count():
    sys.path.insert(0, str(BENCH))
    try:
        from harness import training_flops
    finally:
        sys.path.remove(str(BENCH))
    from scratchcnn.model import reference_cnn

    f = training_flops(reference_cnn(seed=0, backend="serial"))
    assert f["per_image"] == FLOPS_PER_IMAGE
    assert 1.28e12 < 50_000 * f["per_image"] < 1.37e12  # the issue's ~1.29-1.37 TFLOP/epoch
    assert f["per_layer"]["conv1"]["backward"] == f["per_layer"]["conv1"]["forward"]
    assert f["per_layer"]["conv2"]["backward"] == 2 * f["per_layer"]["conv2"]["forward"]


def test_compare_loader_threads_follow_the_training_cli(capsys):
    """--loader-threads auto (the default): each configuration gets the training CLI's
    auto rule for its backend and thread count, PyTorch at n threads the parallel
    backend's at n; a number gives every configuration that many; junk is refused."""
    from scratchcnn.threads import auto_loader_threads

    compare = load_file_as("bench_compare", BENCH / "compare.py")
    args = compare.build_parser().parse_args([])
    assert args.loader_threads == "auto"
    expected = {"serial": auto_loader_threads("serial", 1),
                "parallel@1": auto_loader_threads("parallel", 1),
                "parallel@2": auto_loader_threads("parallel", 2),
                "torch@1": auto_loader_threads("parallel", 1),
                "torch@2": auto_loader_threads("parallel", 2)}
    assert {n: compare.loader_threads_for(args.loader_threads, n) for n in expected} == expected
    if (os.cpu_count() or 1) == 2:  # this project's machines: the rule's two answers
        assert expected == {"serial": 1, "parallel@1": 1, "parallel@2": 0, "torch@1": 1,
                            "torch@2": 0}
    fixed = compare.build_parser().parse_args(["--loader-threads", "3"])
    assert {compare.loader_threads_for(fixed.loader_threads, n) for n in expected} == {3}
    with pytest.raises(SystemExit):
        compare.build_parser().parse_args(["--loader-threads", "many"])
    assert "expected auto or an integer >= 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    if not HAVE_DATA:
        pytest.skip("needs SCRATCHCNN_DATA (real CIFAR-10)")
    out = tmp_path_factory.mktemp("compare")
    return out, run_bench("compare.py", out, *SMALL, "--threads", "1", "2")


@needs_data
def test_compare_json(compare_run):
    _, r = compare_run
    assert r["command"].startswith("python bench/compare.py")
    for key in ("cpu_model", "cpu_count", "physical_cores", "threading_layer", "numba", "numpy"):
        assert r["machine"][key], key
    assert r["gemm_peak"]["one_thread_gflops"] > 0 and r["gemm_peak"]["all_threads_gflops"] > 0
    assert r["flops"]["per_image"] == FLOPS_PER_IMAGE
    assert set(r["warm_up"]) >= {"serial", "parallel", "loader"}
    assert r["settings"]["train_images"] == 256 and r["settings"]["test_images"] == 256
    configs = {c["name"]: c for c in r["configurations"]}
    assert list(configs) == ["serial", "parallel@1", "parallel@2"]
    for c in configs.values():
        assert_spread(c["epoch_seconds"])
        assert c["images_per_second"]["median"] > 0
        assert c["speedup"] > 0 and c["efficiency"] == pytest.approx(c["speedup"] / c["threads"])
        # consistency, not speed: a loaded machine changes the numbers, never these relations
        assert c["gflops"] > 0 and c["peak_gflops"] > 0
        assert c["peak_fraction"] == pytest.approx(c["gflops"] / c["peak_gflops"])
        assert 0 <= c["final_test_acc"] <= 1 and len(c["test_acc_per_epoch"]) == 1
        # the parallel backend is bit-for-bit equal to the serial one at any thread count
        assert c["bit_equal_to_serial"] is True
        parts = c["breakdown_seconds"]
        assert {"conv2 forward", "conv2 backward", "loss", "optimizer", "data wait",
                "other"} <= set(parts)
        assert sum(parts.values()) == pytest.approx(c["epoch_seconds"]["median"], rel=0.05)
    assert configs["serial"]["speedup"] == 1.0
    assert r["versus_torch"] == []
    # the default --loader-threads auto, recorded per configuration
    per = r["settings"]["loader_threads_per_configuration"]
    assert r["settings"]["loader_threads"] == "auto" and set(per) == set(configs)
    assert all(c["loader_threads"] == per[n] for n, c in configs.items())


@needs_data
def test_compare_outputs(compare_run):
    out, r = compare_run
    for name in ("speedup.png", "accuracy.png", "breakdown.png"):
        assert_png(out / name)
    md = (out / "compare.md").read_text()
    assert r["command"] in md and r["machine"]["cpu_model"] in md
    assert "| parallel@2 |" in md
    per = r["settings"]["loader_threads_per_configuration"]
    assert f"--loader-threads auto` picks them (serial {per['serial']}, " in md


@needs_data
@needs_torch
def test_compare_with_torch(tmp_path):
    r = run_bench("compare.py", tmp_path, "--limit-train", "128", "--limit-test", "128",
                  "--epochs", "1", "--repeats", "1", "--gemm-size", "256", "--threads", "1",
                  "--reference", "torch", "--torch-threads", "1", "--breakdown", "none")
    configs = {c["name"]: c for c in r["configurations"]}
    assert list(configs) == ["serial", "parallel@1", "torch@1"]
    t = configs["torch@1"]
    assert t["bit_equal_to_serial"] is None and 0 <= t["final_test_acc"] <= 1
    assert r["machine"]["torch"].startswith("2.13.0")
    assert {(v["ours"], v["torch"]) for v in r["versus_torch"]} == {
        ("parallel@1", "torch@1"), ("serial", "torch@1")}
    for v in r["versus_torch"]:
        assert v["ratio"] == pytest.approx(v["ours_seconds"] / v["torch_seconds"])
    assert_png(tmp_path / "speedup.png")


@needs_data
def test_loader_bench(tmp_path):
    r = run_bench("loader.py", tmp_path, "--limit-train", "256", "--repeats", "1",
                  "--gemm-size", "256", "--loader-threads", "0", "2")
    alone = {(x["augment"], x["threads"]): x for x in r["loader_alone"]}
    assert set(alone) == {(False, 0), (False, 2), (True, 0), (True, 2)}
    for x in alone.values():
        assert_spread(x["batches_per_second"])
    train = {(x["loader_threads"], x["augment"]): x for x in r["training"]}
    assert set(train) == {(0, False), (2, False), (0, True), (2, True)}
    for x in train.values():
        assert_spread(x["epoch_seconds"])
        assert 0 <= x["wait_seconds"]["median"] <= x["epoch_seconds"]["median"]
    assert_png(tmp_path / "loader.png")
    assert "| loader threads |" in (tmp_path / "loader.md").read_text()


def test_fusion_bench():
    cmd = [sys.executable, str(BENCH / "fusion.py"), "--threads", "2", "--rounds", "1",
           "--steps", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines()
            if line.startswith(("| serial", "| parallel@2"))]
    assert [row[0].strip() for row in rows] == ["serial", "parallel@2"]
    for _, plain, fused, ratio in rows:
        plain, fused = float(plain), float(fused)
        assert plain > 0 and fused > 0
        assert float(ratio.strip().rstrip("x")) == pytest.approx(fused / plain, abs=0.01)


def test_kernel_bench_cases_match_the_kernels():
    """Every case of bench/kernels.py's default table calls its kernel with the kernel's
    current arguments (a changed signature once broke `python bench/kernels.py`)."""
    sys.path.insert(0, str(BENCH))  # its own imports (common.py)
    kernel_bench = load_file_as("bench_kernels", BENCH / "kernels.py")  # "kernels": the package

    from scratchcnn.kernels import serial

    cases = kernel_bench.cases(2)
    assert len(cases) > 10
    for label, kname, kargs, flops in cases:
        getattr(serial, kname)(*kargs)  # raises TypeError on a stale argument list
        assert flops > 0, label
