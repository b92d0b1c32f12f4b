"""Fit Amdahl's law to the speedups that bench/compare.py measured.

    python bench/amdahl.py docs/results/compare/compare.json            # writes next to it
    python bench/amdahl.py bench/results/compare/compare.json --out /tmp/amdahl

Amdahl's law: if a fraction ``f`` of the serial run time cannot be split
across threads, ``n`` threads give at most S(n) = 1 / (f + (1 - f) / n).

Reads the ``configurations`` of a compare.json (``backend``, ``threads``,
``speedup`` = serial median epoch time / this configuration's, ``speedup_range``,
``efficiency``, ``peak_fraction``) and ``machine.physical_cores``. Fits ``f`` by
least squares on S over the parallel configurations with n <= physical cores
(f constrained to [0, 1]); configurations with more threads than cores are
shown but not fitted: Amdahl's law assumes every thread has a core of its own,
so oversubscribed points are outside the model.

Writes ``amdahl.md`` (a summary sentence and a table: threads, measured
speedup, Amdahl's prediction, the prediction capped at the core count, fraction
of the machine's GEMM peak) and ``amdahl.png`` to ``--out`` (default: the
folder of the JSON file), and prints the Markdown.

Also writes ``amdahl_parts.md`` (and its numbers as ``amdahl_parts.json``):
Amdahl from the bottom up. For the largest
fitted thread count n, each part p of the epoch breakdown (``breakdown_seconds``
of the serial and of the parallel@n configuration) has a serial time t_p and a
speedup s_p. The part's own serial fraction is f_p = (n / s_p - 1) / (n - 1)
(Amdahl solved for f at one point), and the epoch's is the time-weighted sum
f = sum_p (t_p / T) f_p, T = sum_p t_p. The table shows how much of f each
part contributes: a part that splits perfectly contributes 0, one that does
not split at all contributes its whole share of the time.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

PROG = "python bench/amdahl.py"


def amdahl(f: float, n: float) -> float:
    """Amdahl's speedup on ``n`` threads for serial fraction ``f``."""
    return 1.0 / (f + (1.0 - f) / n)


def fit_serial_fraction(points: list[tuple[int, float]]) -> float:
    """The f in [0, 1] minimising sum (S_i - amdahl(f, n_i))^2 over (n_i, S_i)."""
    from scipy.optimize import minimize_scalar

    def sse(f: float) -> float:
        return sum((s - amdahl(f, n)) ** 2 for n, s in points)

    res = minimize_scalar(sse, bounds=(0.0, 1.0), method="bounded",
                          options={"xatol": 1e-10})
    # the bounded method never evaluates the bounds themselves: check them too
    return min((res.x, 0.0, 1.0), key=sse)


def analyse(report: dict, cores: int | None = None) -> dict:
    """Fitted f and one row per parallel configuration (see the module docstring)."""
    cores = cores or int(report["machine"]["physical_cores"])
    par = sorted((c for c in report["configurations"] if c["backend"] == "parallel"),
                 key=lambda c: c["threads"])
    fit_points = [(c["threads"], c["speedup"]) for c in par if c["threads"] <= cores]
    if not any(n > 1 for n, _ in fit_points):
        raise ValueError(f"no parallel configuration with 2..{cores} threads to fit: run "
                         f"bench/compare.py with --threads 1 2 (up to the core count)")
    f = fit_serial_fraction(fit_points)
    rows = []
    for c in par:
        n = c["threads"]
        rows.append({"threads": n, "speedup": c["speedup"], "speedup_range": c["speedup_range"],
                     "efficiency": c["efficiency"], "peak_fraction": c["peak_fraction"],
                     "amdahl": amdahl(f, n), "amdahl_capped": amdahl(f, min(n, cores)),
                     "fitted": n <= cores})
    return {"f": f, "cores": cores, "fit_threads": [n for n, _ in fit_points], "rows": rows,
            "limit": math.inf if f == 0 else 1.0 / f}


def markdown(a: dict, report: dict, command: str) -> str:
    f, cores = a["f"], a["cores"]
    fit = ", ".join(str(n) for n in a["fit_threads"])
    limit = ("no ceiling" if math.isinf(a["limit"])
             else f"at most {a['limit']:.1f}×")
    best = max((r for r in a["rows"] if r["fitted"]), key=lambda r: r["threads"])
    bound = ""
    if f <= 0.0:
        bound = (" The fit sits at its bound f = 0: the measured speedup is at or above the "
                 "thread count, which Amdahl's law cannot explain (noise, or a cache effect).")
    elif f >= 1.0:
        bound = (" The fit sits at its bound f = 1: the parallel runs were no faster than the "
                 "serial one (a busy machine?), and Amdahl's law cannot describe a slowdown.")
    lines = [
        "### Amdahl's law fitted to the measured training speedup", "",
        f"`{command}` — from `{report['command']}`", "",
        f"Fitted serial fraction **f = {f:.3f}** (least squares over the parallel "
        f"configurations with at most {cores} threads, the physical core count: n = {fit}). "
        f"With f = {f:.3f}, Amdahl's law predicts {best['amdahl']:.2f}× on {best['threads']} "
        f"threads (measured: {best['speedup']:.2f}×) and {limit} on any number of "
        f"cores. On {best['threads']} threads the training reached "
        f"{100 * best['peak_fraction']:.0f}% of the machine's float32 GEMM peak.{bound}", "",
        "| threads | measured speedup (min–max) | efficiency | Amdahl S(n) "
        f"| Amdahl with at most {cores} cores | % of GEMM peak | in the fit |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in a["rows"]:
        lo, hi = r["speedup_range"]
        note = "yes" if r["fitted"] else f"no: {r['threads']} threads on {cores} cores"
        lines.append(f"| {r['threads']} | {r['speedup']:.2f}× ({lo:.2f}–{hi:.2f}) "
                     f"| {100 * r['efficiency']:.0f}% | {r['amdahl']:.2f}× "
                     f"| {r['amdahl_capped']:.2f}× | {100 * r['peak_fraction']:.0f}% | {note} |")
    lines += ["", "Speedup: serial backend's median epoch time / this configuration's "
                  "(bench/compare.py). Amdahl S(n) = 1 / (f + (1 − f) / n) pretends every "
                  "thread has its own core; the capped column uses n = min(threads, cores), "
                  "the best that more threads than cores could do."]
    return "\n".join(lines) + "\n"


def bottom_up(report: dict, cores: int | None = None) -> dict:
    """Per-part speedups and shares of f on the largest fitted thread count (docstring)."""
    cores = cores or int(report["machine"]["physical_cores"])
    confs = report["configurations"]
    serial = next(c for c in confs if c["backend"] == "serial")
    n = max(c["threads"] for c in confs
            if c["backend"] == "parallel" and 1 < c["threads"] <= cores)
    par = next(c for c in confs if c["backend"] == "parallel" and c["threads"] == n)
    ts, tp = serial["breakdown_seconds"], par["breakdown_seconds"]
    total = sum(ts.values())
    parts = []
    for name, t in ts.items():
        s = t / tp[name]
        fp = (n / s - 1) / (n - 1)
        parts.append({"part": name, "serial_s": t, "parallel_s": tp[name], "speedup": s,
                      "f_part": fp, "share_of_f": t / total * fp})
    f = sum(p["share_of_f"] for p in parts)
    conv = sum(p["share_of_f"] for p in parts if p["part"].startswith("conv"))
    flat = [p for p in parts if p["speedup"] < 1.1]
    return {"threads": n, "parts": parts, "f": f, "total_serial_s": total,
            "total_parallel_s": sum(tp.values()), "conv_share_of_f": conv,
            "unsplit_s": sum(p["serial_s"] for p in flat),
            "unsplit_parts": [p["part"] for p in flat]}


def markdown_parts(b: dict, report: dict, command: str) -> str:
    n = b["threads"]
    lines = [
        f"#### Amdahl from the bottom up: where f comes from ({n} threads)", "",
        f"`{command}` — from the breakdown of `{report['command']}`", "",
        f"Summed over the parts, the serial epoch's breakdown is {b['total_serial_s']:.2f} s "
        f"and the parallel@{n} one {b['total_parallel_s']:.2f} s "
        f"({b['total_serial_s'] / b['total_parallel_s']:.2f}×). Weighting each part's own "
        f"serial fraction by its share of the time gives **f = {b['f']:.3f}**, of which the "
        f"convolutions contribute **{b['conv_share_of_f']:.3f}** "
        f"({100 * b['conv_share_of_f'] / b['f']:.0f}%). The parts that did not speed up "
        f"at all (speedup below 1.1×: {', '.join(b['unsplit_parts']) or 'none'}) take "
        f"{b['unsplit_s']:.2f} s of the serial epoch.", "",
        f"| part | serial s | parallel@{n} s | speedup | part's own f | share of f |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(b["parts"], key=lambda p: -p["share_of_f"]):
        lines.append(f"| {p['part']} | {p['serial_s']:.3f} | {p['parallel_s']:.3f} "
                     f"| {p['speedup']:.2f}× | {p['f_part']:.2f} | {p['share_of_f']:.4f} |")
    lines += ["", f"Part's own f = ({n} / speedup − 1) / ({n} − 1); share of f = "
                  "(part's serial seconds / serial epoch) × part's own f. The shares add up "
                  "to the f of the whole breakdown (which can differ a little from the "
                  "fitted f above: that one uses median epoch times, this one the mean "
                  "seconds per part)."]
    return "\n".join(lines) + "\n"


def plot(a: dict, path: Path) -> None:
    from scratchcnn.plots import plt, save_figure

    rows, f, cores = a["rows"], a["f"], a["cores"]
    top = max([r["threads"] for r in rows] + [cores])
    grid = [1 + i * (top - 1) / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(grid, grid, "k:", label="ideal (speedup = threads)")
    ax.plot(grid, [amdahl(f, n) for n in grid], "-", color="C1",
            label=f"Amdahl, f = {f:.3f}")
    ax.plot(grid, [amdahl(f, min(n, cores)) for n in grid], "--", color="C1", alpha=0.6,
            label=f"Amdahl with at most {cores} cores")
    ax.axvline(cores, color="grey", ls="--", lw=1)
    ax.text(cores, 0.02, f" {cores} physical cores", transform=ax.get_xaxis_transform(),
            color="grey", fontsize=8)
    for fitted, style, label in ((True, "o", "measured (fitted)"),
                                 (False, "x", "measured, more threads than cores (not fitted)")):
        pts = [r for r in rows if r["fitted"] == fitted]
        if pts:
            ax.errorbar([r["threads"] for r in pts], [r["speedup"] for r in pts],
                        yerr=[[r["speedup"] - r["speedup_range"][0] for r in pts],
                              [r["speedup_range"][1] - r["speedup"] for r in pts]],
                        fmt=style, color="C0", ms=8, capsize=3, label=label)
    ax.set(xlabel="threads", ylabel="training speedup vs serial",
           title="Measured speedup and Amdahl's law")
    ax.set_xticks(sorted({r["threads"] for r in rows} | {1, cores}))
    ax.set_ylim(bottom=0, top=max(top, *(r["speedup_range"][1] for r in rows)) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("compare_json", type=Path, help="compare.json written by bench/compare.py")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the folder of compare_json)")
    p.add_argument("--cores", type=int, default=None,
                   help="physical cores (default: machine.physical_cores of the JSON)")
    args = p.parse_args(argv)
    try:
        report = json.loads(args.compare_json.read_text())
        a = analyse(report, args.cores)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{PROG}: error: {args.compare_json}: {e}")
    out = args.out or args.compare_json.parent
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(a, report, " ".join([PROG, *map(shlex.quote, argv)]))
    (out / "amdahl.md").write_text(md)
    if all("breakdown_seconds" in c for c in report["configurations"]
           if c["backend"] in ("serial", "parallel")):
        b = bottom_up(report, args.cores)
        parts = markdown_parts(b, report, " ".join([PROG, *map(shlex.quote, argv)]))
        (out / "amdahl_parts.md").write_text(parts)
        (out / "amdahl_parts.json").write_text(json.dumps(b, indent=1) + "\n")
        md += "\n" + parts
    plot(a, out / "amdahl.png")
    print(md)
    print(f"wrote {out}/amdahl.md, amdahl.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
