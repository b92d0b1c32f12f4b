"""Draw the guide's pictures: ``python docs/figures.py`` writes docs/figures/*.png.

Next to the PNGs it writes docs/figures/figures.json: for every figure the data
it draws (numbers, labels, shapes). PNG bytes change with the matplotlib
version, the data does not, so tests/test_figures.py recomputes the data and
compares it with the committed JSON (``--check`` does the same from the command
line). The im2col example is computed by the project's own ``im2col`` helper.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "figures"


def data_loop_nest() -> dict:
    """Forward convolution at N=2 samples, F=3 filters, 2 threads: who owns which plane."""
    N, F, threads = 2, 3, 2
    tasks = N * F
    chunk = -(-tasks // threads)  # static schedule: contiguous chunks
    owner = [[(n * F + f) // chunk for f in range(F)] for n in range(N)]
    return {"N": N, "F": F, "threads": threads, "owner": owner,
            "parallel_loop": "for nf in prange(N * F)",
            "serial_loops": ["i", "j", "c", "ki", "kj"]}


def data_im2col() -> dict:
    """1 channel, 4x4 input 1..16, 3x3 kernel, no padding, stride 1: the 9x4 matrix."""
    # the installed package's name: a top-level "kernels" import would compile (and cache)
    # a second copy of the module under another name
    from scratchcnn.kernels.conv_fast import im2col

    x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4)
    cols = np.zeros((9, 4), dtype=np.float32)
    im2col(x, 3, 3, 1, 1, 0, 0, cols, 0)
    return {"x": x[0].astype(int).tolist(), "cols": cols.astype(int).tolist()}


def data_groups() -> dict:
    """Weight gradient of a batch of 8 in groups of 2: partials summed in group order."""
    rng = np.random.default_rng(0)
    per_sample = rng.integers(-5, 6, size=8).tolist()
    G = 2
    partials = [sum(per_sample[g:g + G]) for g in range(0, 8, G)]
    running, total = [], 0
    for p in partials:
        total += p
        running.append(total)
    return {"per_sample": per_sample, "group": G, "partials": partials,
            "running_sum": running, "total": total}


def data_race() -> dict:
    """Two threads each add 1 to the same accumulator; one update is lost."""
    steps = [  # (thread, action, value seen or written, accumulator after)
        ("A", "read", 0, 0), ("B", "read", 0, 0),
        ("A", "write", 1, 1), ("B", "write", 1, 1)]
    return {"steps": [list(s) for s in steps], "expected": 2, "got": 1}


def data_cuda() -> dict:
    """A grid of 4 blocks x 8 threads; tree reduction inside a block (shared memory)."""
    vals = list(range(1, 9))
    levels = [vals]
    while len(levels[-1]) > 1:
        v = levels[-1]
        h = len(v) // 2
        levels.append([v[i] + v[i + h] for i in range(h)])
    return {"blocks": 4, "threads_per_block": 8, "levels": levels}


TIMELINE = ROOT / "docs" / "results" / "loader" / "gil-release-threads2" / "loader.json"


def data_loader_timeline() -> dict:
    """Measured: when the loader's pool prepared each batch and when training waited.

    From the --timeline record of bench/loader.py (committed JSON), the training
    configuration with 2 loader threads; times in ms from the first event."""
    rep = json.loads(TIMELINE.read_text())
    run = next(r for r in rep["training"] if r["loader_threads"] == 2 and "timeline" in r)
    ev = run["timeline"]
    t0 = min(e["start"] for e in ev)
    rows = []
    for e in ev:
        rows.append({"what": e["what"], "batch": e["batch"],
                     "thread": e.get("thread", "training"),
                     "start_ms": round(1e3 * (e["start"] - t0), 3),
                     "end_ms": round(1e3 * (e["end"] - t0), 3)})
    return {"source": str(TIMELINE.relative_to(ROOT)), "command": rep["command"],
            "events": rows}


DATA = {"loop_nest": data_loop_nest, "im2col": data_im2col, "groups": data_groups,
        "race": data_race, "cuda": data_cuda, "loader_timeline": data_loader_timeline}


def compute() -> dict:
    return {name: fn() for name, fn in DATA.items()}


def _grid(ax, M, x0, y0, color=None, fs=9):
    for r, row in enumerate(M):
        for c, v in enumerate(row):
            fc = color(r, c) if color else "white"
            ax.add_patch(plt.Rectangle((x0 + c, y0 - r), 1, 1, fc=fc, ec="black"))
            ax.text(x0 + c + .5, y0 - r + .5, str(v), ha="center", va="center", fontsize=fs)


def draw_loop_nest(d, path):
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = ["#9ecae1", "#fdae6b"]
    for n in range(d["N"]):
        for f in range(d["F"]):
            t = d["owner"][n][f]
            ax.add_patch(plt.Rectangle((f * 1.3, -n * 1.3), 1, 1, fc=colors[t], ec="black"))
            ax.text(f * 1.3 + .5, -n * 1.3 + .5, f"out[{n},{f}]\nthread {t}",
                    ha="center", va="center", fontsize=8)
    ax.text(4.3, .9, d["parallel_loop"] + "   # split over threads", fontsize=9,
            family="monospace", color="darkred")
    for k, loop in enumerate(d["serial_loops"]):
        ax.text(4.3 + .3 * (k + 1), .5 - .35 * (k + 1), f"for {loop} ...   # inside one thread",
                fontsize=9, family="monospace")
    ax.set_title("Forward convolution: each thread owns whole output planes out[n, f]")
    ax.set_xlim(-.2, 10.5)
    ax.set_ylim(-1.6, 1.4)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def draw_im2col(d, path):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    patch_colors = ["#c6dbef", "#fdd0a2", "#c7e9c0", "#dadaeb"]

    def xcolor(r, c):  # colour by the first patch that covers this pixel
        return patch_colors[0] if r < 3 and c < 3 else "white"

    _grid(ax, d["x"], 0, 0, xcolor)
    ax.text(2, 1.3, "x (1 channel, 4×4)\nshaded: patch 0", ha="center")
    _grid(ax, d["cols"], 7, 2, lambda r, c: patch_colors[c])
    ax.text(9, 3.3, "cols = im2col(x), 9×4\ncolumn p = patch p (output pixel p)", ha="center")
    for r in range(9):
        ax.text(6.6, 2 - r + .5, f"(ki={r // 3},kj={r % 3})", ha="right", va="center", fontsize=7)
    ax.set_xlim(-.5, 11.5)
    ax.set_ylim(-7.5, 4.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("im2col: every 3×3 patch becomes one column; conv = w(1×9) @ cols(9×4)")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def draw_groups(d, path):
    fig, ax = plt.subplots(figsize=(7, 2.8))
    G = d["group"]
    for i, v in enumerate(d["per_sample"]):
        ax.add_patch(plt.Rectangle((i, 1.5), .9, .9, fc="#c6dbef", ec="black"))
        ax.text(i + .45, 1.95, str(v), ha="center", va="center")
    for g, p in enumerate(d["partials"]):
        ax.add_patch(plt.Rectangle((g * G + .4, 0), .9, .9, fc="#fdd0a2", ec="black"))
        ax.text(g * G + .85, .45, str(p), ha="center", va="center")
        ax.annotate("", (g * G + .85, .9), (g * G + .9, 1.5), arrowprops={"arrowstyle": "->"})
        ax.text(g * G + .85, -.35, f"+ → {d['running_sum'][g]}", ha="center", fontsize=8)
    ax.text(8.3, 1.95, "per-sample terms\n(any thread)", va="center", fontsize=8)
    ax.text(8.3, .45, f"group partials (G={G}),\nadded left to right: {d['total']}",
            va="center", fontsize=8)
    ax.set_xlim(-.2, 11)
    ax.set_ylim(-.7, 2.6)
    ax.axis("off")
    ax.set_title("Weight gradient: groups fixed by the shapes, partials summed in a fixed order")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def draw_race(d, path):
    fig, ax = plt.subplots(figsize=(6, 2.8))
    for t, (th, act, val, acc) in enumerate(d["steps"]):
        y = 1 if th == "A" else 0
        ax.add_patch(plt.Rectangle((t, y), .9, .8, fc="#9ecae1" if th == "A" else "#fdae6b",
                                   ec="black"))
        label = f"{act}\nacc={val}" if act == "read" else f"write\n{val}"
        ax.text(t + .45, y + .4, label, ha="center", va="center", fontsize=8)
        ax.text(t + .45, -.5, f"acc={acc}", ha="center", fontsize=8)
    ax.text(-.2, 1.4, "thread A", ha="right")
    ax.text(-.2, .4, "thread B", ha="right")
    ax.text(2, 2.1, f"two increments, expected {d['expected']}, got {d['got']}: "
                    "B's write overwrites A's", ha="center", color="darkred")
    ax.set_xlim(-1.3, 4.2)
    ax.set_ylim(-.8, 2.4)
    ax.axis("off")
    ax.set_title("A data race: a lost update (time runs left to right)")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def draw_cuda(d, path):
    fig, ax = plt.subplots(figsize=(7, 3.6))
    T = d["threads_per_block"]
    for b in range(d["blocks"]):
        ax.add_patch(plt.Rectangle((b * 2.6, 4), 2.4, .8, fc="#eeeeee", ec="black"))
        ax.text(b * 2.6 + 1.2, 4.4, f"block {b}\n{T} threads", ha="center", va="center", fontsize=8)
    ax.text(5, 5.1, f"grid = {d['blocks']} blocks", ha="center")
    for lvl, vals in enumerate(d["levels"]):
        w = 10 / T
        for i, v in enumerate(vals):
            ax.add_patch(plt.Rectangle((i * w, 2.8 - lvl * .8), w * .9, .6, fc="#c7e9c0",
                                       ec="black"))
            ax.text(i * w + w * .45, 3.1 - lvl * .8, str(v), ha="center", va="center",
                    fontsize=8)
        ax.text(10.3, 3.1 - lvl * .8, "shared memory" if lvl == 0 else
                f"step {lvl}: s[i] += s[i + {len(d['levels'][lvl - 1]) // 2}]; syncthreads",
                va="center", fontsize=7)
    ax.text(5, -.6, "thread 0 writes the block's sum (one atomic add per block, not per thread)",
            ha="center", fontsize=8)
    ax.set_xlim(-.2, 15)
    ax.set_ylim(-1, 5.4)
    ax.axis("off")
    ax.set_title("CUDA: a grid of blocks; inside one block a tree reduction")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def draw_loader_timeline(d, path):
    ev = d["events"]
    lanes = sorted({e["thread"] for e in ev if e["what"] == "prepare"})
    lanes = ["training"] + lanes
    fig, ax = plt.subplots(figsize=(9, 2.2 + .4 * len(lanes)))
    waits = sorted((e for e in ev if e["what"] == "wait"), key=lambda e: e["batch"])
    for k, e in enumerate(waits):  # between getting batch k and asking for k+1: a step
        if k + 1 < len(waits):
            ax.barh(0, waits[k + 1]["start_ms"] - e["end_ms"], left=e["end_ms"], height=.6,
                    color="#9ecae1", ec="white")
        ax.barh(0, max(e["end_ms"] - e["start_ms"], .05), left=e["start_ms"], height=.6,
                color="#de2d26")
    for e in ev:
        if e["what"] == "prepare":
            y = lanes.index(e["thread"])
            ax.barh(y, e["end_ms"] - e["start_ms"], left=e["start_ms"], height=.6,
                    color="#fdae6b", ec="white")
            ax.text((e["start_ms"] + e["end_ms"]) / 2, y, str(e["batch"]), ha="center",
                    va="center", fontsize=6)
    ax.set_yticks(range(len(lanes)), ["training step"] + [t.replace("scratchcnn-", "")
                                                          for t in lanes[1:]])
    ax.invert_yaxis()
    ax.set_xlabel("ms (measured)")
    ax.set_title("Loader pool overlapping training: orange = a batch being prepared, "
                 "blue = training step, red = waiting for data", fontsize=9)
    fig.text(0, -.02, "from " + d["source"], fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")


DRAW = {"loop_nest": draw_loop_nest, "im2col": draw_im2col, "groups": draw_groups,
        "race": draw_race, "cuda": draw_cuda, "loader_timeline": draw_loader_timeline}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="only compare the recomputed data with figures.json")
    args = ap.parse_args(argv)
    data = compute()
    js = OUT / "figures.json"
    if args.check:
        old = json.loads(js.read_text())
        stale = [k for k in data if old.get(k) != json.loads(json.dumps(data[k]))]
        print("stale:" if stale else "figures are current", *stale)
        return 1 if stale else 0
    global plt
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    OUT.mkdir(exist_ok=True)
    for name, d in data.items():
        DRAW[name](d, OUT / f"{name}.png")
        plt.close("all")
    js.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(data)} figures and {js.relative_to(ROOT)}")
    return 0


plt = None  # imported in main(), so that --check and the tests need no matplotlib

if __name__ == "__main__":
    sys.exit(main())
