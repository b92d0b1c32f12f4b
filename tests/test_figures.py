"""The guide's pictures are current: docs/figures.py recomputes the data each figure
draws and it must equal the committed docs/figures/figures.json; every figure's PNG
exists, is not trivially small and is linked from the guide. (PNG bytes depend on the
matplotlib version, so they are not compared.)"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_file_as

ROOT = Path(__file__).resolve().parent.parent
FIG = ROOT / "docs" / "figures"


@pytest.fixture(scope="module")
def figures():
    return load_file_as("docs_figures", ROOT / "docs" / "figures.py")


def test_figure_data_is_current(figures):
    committed = json.loads((FIG / "figures.json").read_text())
    fresh = json.loads(json.dumps(figures.compute()))
    assert fresh == committed, "figures are stale: run python docs/figures.py"


def test_im2col_example_is_the_textbook_matrix(figures):
    d = figures.data_im2col()
    x = d["x"]
    # column p holds the 3x3 patch whose top-left corner is output pixel p = (i, j)
    expect = [[x[i + ki][j + kj] for i in range(2) for j in range(2)]
              for ki in range(3) for kj in range(3)]
    assert d["cols"] == expect


def test_timeline_comes_from_a_committed_measurement(figures):
    d = figures.data_loader_timeline()
    assert (ROOT / d["source"]).is_file()
    kinds = {e["what"] for e in d["events"]}
    assert kinds == {"prepare", "wait"}
    assert all(e["end_ms"] >= e["start_ms"] >= 0 for e in d["events"])


def test_race_figure_loses_an_update(figures):
    d = figures.data_race()
    assert d["steps"][-1][3] == d["got"] < d["expected"]


@pytest.mark.parametrize("name", ["loop_nest", "im2col", "groups", "race", "cuda",
                                  "loader_timeline"])
def test_png_exists_and_is_linked(name):
    png = FIG / f"{name}.png"
    assert png.is_file() and png.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figures/{name}.png" in (ROOT / "docs" / "guide.md").read_text()


def _bench(name: str):
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def test_amdahl_parts_are_current_and_add_up():
    """docs/results/compare/amdahl_parts.json is bench/amdahl.py's bottom-up split of the
    committed compare.json, and the parts' shares add up to the f of the breakdown."""
    amdahl = _bench("amdahl")
    report = json.loads((ROOT / "docs/results/compare/compare.json").read_text())
    fresh = json.loads(json.dumps(amdahl.bottom_up(report)))
    assert fresh == json.loads((ROOT / "docs/results/compare/amdahl_parts.json").read_text())
    n, T, Tp = fresh["threads"], fresh["total_serial_s"], fresh["total_parallel_s"]
    assert amdahl.amdahl(fresh["f"], n) == pytest.approx(T / Tp)
    # the parts' shares add up to f, the convolutions' to their share (either may be
    # negative: a part that ran more than n times faster, as with two cores' two L2s)
    shares = {p["part"]: p["share_of_f"] for p in fresh["parts"]}
    assert sum(shares.values()) == pytest.approx(fresh["f"])
    assert fresh["conv_share_of_f"] == pytest.approx(
        sum(v for k, v in shares.items() if k.startswith("conv")))


DATA = os.environ.get("SCRATCHCNN_DATA")
HAVE_DATA = bool(DATA) and (Path(DATA) / "cifar-10-batches-py" / "batches.meta").is_file()


@pytest.mark.skipif(not HAVE_DATA, reason="needs the real CIFAR-10: set SCRATCHCNN_DATA")
@pytest.mark.parametrize("gil", ["hold", "release"])
def test_loader_gil_knob_and_timeline(tmp_path, gil):
    cmd = [sys.executable, str(ROOT / "bench" / "loader.py"), "--out", str(tmp_path),
           "--limit-train", "256", "--repeats", "1", "--gemm-size", "256",
           "--loader-threads", "0", "--train-loader-threads", "0", "2", "--train-augment", "off",
           "--prep-cost", "1", "--prep-gil", gil, "--timeline", "4"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "loader.json").read_text())
    assert rep["settings"]["prep_gil"] == gil and rep["settings"]["prep_iterations"] > 0
    for run in rep["training"]:
        ev = run["timeline"]
        assert sorted(e["batch"] for e in ev if e["what"] == "wait") == [0, 1, 2, 3]
        prep = [e for e in ev if e["what"] == "prepare"]
        assert sorted(e["batch"] for e in prep) == [0, 1, 2, 3]
        threaded = {e["thread"].startswith("scratchcnn-loader") for e in prep}
        assert threaded == {run["loader_threads"] > 0}
