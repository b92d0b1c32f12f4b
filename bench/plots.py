"""Plots of the benchmark reports (matplotlib, Agg, written atomically).

Each function takes the JSON-ready report dict that ``bench/compare.py`` or
``bench/loader.py`` writes, so a plot can be redrawn from a saved JSON file.
"""

from __future__ import annotations

import math
import os

from matplotlib.ticker import ScalarFormatter

from scratchcnn.plots import plt, save_figure

#: Breakdown parts drawn as separate segments; the rest are summed by group.
_GROUPS = (
    ("conv1 forward", ("conv1 forward",)),
    ("conv1 backward", ("conv1 backward",)),
    ("conv2 forward", ("conv2 forward",)),
    ("conv2 backward", ("conv2 backward",)),
    ("conv3 forward", ("conv3 forward",)),
    ("conv3 backward", ("conv3 backward",)),
    ("dense forward", ("dense1 forward", "dense2 forward")),
    ("dense backward", ("dense1 backward", "dense2 backward")),
    ("relu/pool/flatten forward", ("relu", "pool", "flatten"), "forward"),
    ("relu/pool/flatten backward", ("relu", "pool", "flatten"), "backward"),
    ("loss", ("loss",)),
    ("optimizer", ("optimizer",)),
    ("data wait", ("data wait",)),
    ("other", ("other",)),
)


def group_breakdown(parts: dict[str, float]) -> dict[str, float]:
    """Sum the per-layer parts into the plot's groups (e.g. all ReLU/pool forwards)."""
    out = {}
    for spec in _GROUPS:
        label, keys = spec[0], spec[1]
        if len(spec) == 3:  # prefix match on the layer kind, fixed direction
            out[label] = sum(v for k, v in parts.items()
                             if k.startswith(keys) and k.endswith(spec[2]))
        else:
            out[label] = sum(parts.get(k, 0.0) for k in keys)
    return out


def plot_speedup(report: dict, path: str | os.PathLike) -> None:
    """Speedup vs threads: ours (parallel vs serial), torch (vs torch@1), ideal, cores."""
    configs = report["configurations"]
    cores = report["machine"]["physical_cores"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    par = [c for c in configs if c["backend"] == "parallel"]
    xs = [c["threads"] for c in par]
    top = max(xs + [cores, 1])
    grid = [2 ** (i / 16) for i in range(int(16 * math.log2(top)) + 1)]  # straight on log x
    ax.plot(grid, grid, "k:", label="ideal (speedup = threads)")
    ax.plot(grid, [min(g, cores) for g in grid], color="grey", lw=1, alpha=0.6,
            label="ceiling: min(threads, physical cores)")
    ax.axvline(cores, color="grey", ls="--", lw=1)
    ax.text(cores, 0.02, f" {cores} physical cores", transform=ax.get_xaxis_transform(),
            color="grey", fontsize=8)
    if par:
        ys = [c["speedup"] for c in par]
        lo = [c["speedup"] - c["speedup_range"][0] for c in par]
        hi = [c["speedup_range"][1] - c["speedup"] for c in par]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="-o", capsize=3,
                    label="scratchcnn parallel vs serial")
    tor = [c for c in configs if c["backend"] == "torch" and c.get("speedup_vs_torch1")]
    if len(tor) > 1:
        ax.plot([c["threads"] for c in tor], [c["speedup_vs_torch1"] for c in tor], "-s",
                label="PyTorch vs PyTorch@1")
    ax.set(xlabel="threads", ylabel="speedup (median epoch time ratio)",
           title="Training speedup (bars: min-max of paired epochs)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(xs + [1, cores])))
    ax.get_xaxis().set_major_formatter(ScalarFormatter())
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_accuracy(report: dict, path: str | os.PathLike) -> None:
    """Test accuracy per epoch, one curve per configuration (median over repeats)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, c in enumerate(report["configurations"]):
        acc = c["test_acc_per_epoch"]
        epochs = list(range(1, len(acc) + 1))
        # identical curves (bit-equal runs) would hide each other: offset the markers a bit
        ax.plot(epochs, [100 * a for a in acc], marker="os^vD<>ph*"[i % 10],
                ms=7 - 0.4 * i, label=c["name"])
    ax.set(xlabel="epoch", ylabel="test accuracy (%)",
           title="Test accuracy per epoch (median over repeats)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_breakdown(report: dict, path: str | os.PathLike) -> None:
    """Where an epoch's time goes: one stacked bar per instrumented configuration."""
    rows = [c for c in report["configurations"] if c.get("breakdown_seconds")]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.55 * max(len(rows), 1)))
    if not rows:
        ax.text(0.5, 0.5, "no instrumented configuration", ha="center", va="center")
        ax.set_axis_off()
        save_figure(fig, path)
        return
    labels = [g[0] for g in _GROUPS]
    colors = plt.get_cmap("tab20").colors
    grouped = [group_breakdown(c["breakdown_seconds"]) for c in rows]
    names = [c["name"] for c in rows]
    left = [0.0] * len(rows)
    for j, label in enumerate(labels):
        widths = [g[label] for g in grouped]
        ax.barh(names, widths, left=left, color=colors[j % 20], label=label,
                hatch="//" if label in ("data wait", "other") else None)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set(xlabel="seconds per epoch (mean over timed epochs)",
           title="Where an epoch's time goes")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="x", alpha=0.3)
    save_figure(fig, path)


def plot_loader(report: dict, path: str | os.PathLike) -> None:
    """Loader alone (batches/s vs loader threads) and training waits (loader 0 vs N)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for aug in (False, True):
        rows = [r for r in report["loader_alone"] if r["augment"] == aug]
        if rows:
            ax1.errorbar([r["threads"] for r in rows],
                         [r["batches_per_second"]["median"] for r in rows],
                         yerr=[[r["batches_per_second"]["median"] - r["batches_per_second"]["min"]
                                for r in rows],
                               [r["batches_per_second"]["max"] - r["batches_per_second"]["median"]
                                for r in rows]],
                         fmt="-o", capsize=3, label="augment" if aug else "no augment")
    ax1.set(xlabel="loader threads (0 = in the consuming thread)", ylabel="batches / s",
            title="Loader alone (min-median-max)")
    ax1.set_xticks(sorted({r["threads"] for r in report["loader_alone"]}))
    ax1.set_ylim(bottom=0)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    rows = report["training"]
    names = [f"loader {r['loader_threads']}{', augment' if r['augment'] else ''}" for r in rows]
    wait = [r["wait_seconds"]["median"] for r in rows]
    rest = [r["epoch_seconds"]["median"] - w for r, w in zip(rows, wait)]
    ax2.barh(names, rest, label="computing")
    ax2.barh(names, wait, left=rest, label="waiting for data", hatch="//")
    ax2.invert_yaxis()
    ax2.set(xlabel="seconds per epoch (median)",
            title=f"Training, {report['train_backend']} (median epoch)")
    ax2.grid(axis="x", alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
