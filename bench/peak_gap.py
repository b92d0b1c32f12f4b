"""How far an epoch is from the GEMM peak, part by part, from a bench/compare.py report.

    python bench/peak_gap.py docs/results/compare/compare.json          # writes next to it
    python bench/peak_gap.py /tmp/compare/compare.json --out /tmp/gap

The "peak" is the float32 matrix-product speed that NumPy's BLAS reaches on a
large square product on this machine (``gemm_peak`` of compare.json: one
thread, and as many threads as cores). An epoch *at* the peak would take
FLOPs / peak seconds; the gap is everything above that. For each part of the
epoch breakdown (``breakdown_seconds``, mean seconds per epoch) of the serial
configuration (against the one-thread peak) and of parallel@N (N = the core
count, against the all-core peak):

* FLOPs per epoch: the part's multiply-adds x 2 (conv and dense layers, from
  ``flops.per_layer``; backward = 2x forward, 1x for conv1, which computes no
  input gradient); the parts without matrix products (loss, optimizer,
  flatten, data wait, the loop's own Python "other") have none: all of their
  time is gap;
* GFLOP/s and % of the peak;
* seconds at the peak (FLOPs / peak) and the gap (measured - that);
* the part's share of the epoch's whole gap.

The gaps add up to the epoch's: measured breakdown - FLOPs / peak. conv1 and
conv2 include their ReLU and 2x2 max-pool (they run fused).

Writes ``peak_gap.md`` and ``peak_gap.json`` to ``--out`` (default: the
folder of the JSON file) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

PROG = "python bench/peak_gap.py"


def part_flops(flops: dict, images: int) -> dict[str, float]:
    """FLOPs per epoch of each breakdown part that has matrix products."""
    out = {}
    for layer, f in flops["per_layer"].items():
        for direction in ("forward", "backward"):
            out[f"{layer} {direction}"] = float(f[direction]) * images
    return out


def gap_table(config: dict, flops_by_part: dict[str, float], peak_gflops: float) -> dict:
    """Rows (part, seconds, flops, gflops, peak fraction, seconds at peak, gap, gap share),
    biggest gap first, and the totals."""
    parts = config["breakdown_seconds"]
    total = sum(parts.values())
    rows = []
    for part, secs in parts.items():
        fl = flops_by_part.get(part, 0.0)
        at_peak = fl / (peak_gflops * 1e9)
        gflops = fl / secs / 1e9 if secs > 0 else 0.0
        rows.append({"part": part, "seconds": secs, "flops": fl, "gflops": gflops,
                     "peak_fraction": gflops / peak_gflops, "seconds_at_peak": at_peak,
                     "gap_seconds": secs - at_peak})
    gap = sum(r["gap_seconds"] for r in rows)
    for r in rows:
        r["gap_share"] = r["gap_seconds"] / gap if gap > 0 else 0.0
    rows.sort(key=lambda r: -r["gap_seconds"])
    fl = sum(r["flops"] for r in rows)
    return {"config": config["name"], "threads": config["threads"], "peak_gflops": peak_gflops,
            "epoch_seconds": total, "flops": fl, "gflops": fl / total / 1e9,
            "peak_fraction": fl / total / 1e9 / peak_gflops,
            "seconds_at_peak": fl / (peak_gflops * 1e9), "gap_seconds": gap, "rows": rows}


def analyse(report: dict) -> list[dict]:
    """The gap tables of the serial and the all-core parallel configuration."""
    peak = report["gemm_peak"]
    images = report["settings"]["train_images"]
    by_part = part_flops(report["flops"], images)
    configs = {c["name"]: c for c in report["configurations"] if c.get("breakdown_seconds")}
    out = []
    if "serial" in configs:
        out.append(gap_table(configs["serial"], by_part, peak["one_thread_gflops"]))
    name = f"parallel@{peak['all_threads']}"
    if name in configs:
        out.append(gap_table(configs[name], by_part, peak["all_threads_gflops"]))
    if not out:
        raise ValueError("the report has no serial or parallel@<cores> configuration with a "
                         "breakdown: rerun bench/compare.py with its default --breakdown")
    return out


def render(tables: list[dict], source: str, command: str) -> str:
    lines = ["#### Distance to the GEMM peak, part by part", "",
             f"`{command}` — from the breakdown of `{source}`", ""]
    for t in tables:
        lines += [
            f"**{t['config']}** against the {t['threads']}-thread peak of "
            f"{t['peak_gflops']:.0f} GFLOP/s: the breakdown sums to {t['epoch_seconds']:.2f} s "
            f"per epoch, {t['gflops']:.1f} GFLOP/s = **{100 * t['peak_fraction']:.0f}% of the "
            f"peak**; at the peak the same FLOPs would take {t['seconds_at_peak']:.2f} s, so "
            f"the gap is {t['gap_seconds']:.2f} s.", "",
            "| part | s / epoch | GFLOP/s | % of peak | s at peak | gap s | share of the gap |",
            "|---|---:|---:|---:|---:|---:|---:|"]
        for r in t["rows"]:
            has = r["flops"] > 0
            lines.append(
                f"| {r['part']} | {r['seconds']:.3f} | {r['gflops']:.1f} | "
                f"{100 * r['peak_fraction']:.0f}% | {r['seconds_at_peak']:.3f} | "
                f"{r['gap_seconds']:.3f} | {100 * r['gap_share']:.1f}% |" if has else
                f"| {r['part']} | {r['seconds']:.3f} | - | - | 0 | {r['gap_seconds']:.3f} | "
                f"{100 * r['gap_share']:.1f}% |")
        lines.append("")
    lines.append("FLOPs: 2 per multiply-add of the conv and dense layers (backward = 2x forward, "
                 "1x for conv1); parts without a matrix product have no FLOPs and are all gap. "
                 "conv1 and conv2 include their fused ReLU and 2x2 max-pool.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("report", type=Path, help="compare.json written by bench/compare.py")
    p.add_argument("--out", type=Path, default=None, help="default: the report's folder")
    args = p.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
        tables = analyse(report)
    except (OSError, ValueError, KeyError) as e:
        print(f"{PROG}: error: {args.report}: {e}", file=sys.stderr)
        return 2
    from common import write_report

    write_report(args.out or args.report.parent, "peak_gap", tables,
                 render(tables, report.get("command", str(args.report)),
                        " ".join([PROG, *map(shlex.quote, argv)])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
