"""The guide's pictures are current: docs/figures.py recomputes the data each figure
draws and it must equal the committed docs/figures/figures.json; every figure's PNG
exists, is not trivially small and is linked from the guide. (PNG bytes depend on the
matplotlib version, so they are not compared.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIG = ROOT / "docs" / "figures"


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "docs" / "figures.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["docs_figures"] = mod
    spec.loader.exec_module(mod)
    return mod


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
