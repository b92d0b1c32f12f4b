"""Print a training run's per-epoch metrics as a Markdown table.

    python bench/run_table.py runs/<run folder>
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="run folder (holding metrics.jsonl and config.json)")
    args = p.parse_args()
    rows = [json.loads(s) for s in (args.run / "metrics.jsonl").read_text().splitlines() if s]
    cfg = json.loads((args.run / "config.json").read_text())
    m = cfg["machine"]
    print(f"`{cfg['command']}` — {cfg['train_images']:,} train / {cfg['test_images']:,} test "
          f"images, backend {cfg['backend']}, {cfg['threads']} thread(s), "
          f"{cfg['loader_threads']} loader thread(s); {m['cpu_model']}, {m['cpu_count']} cores; "
          f"peak memory {max(r['peak_rss_mb'] for r in rows):.0f} MiB\n")
    print("| epoch | train loss | train acc | test loss | test acc | epoch s | images/s "
          "| data wait s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['epoch']} | {r['train_loss']:.4f} | {100 * r['train_acc']:.2f}% | "
              f"{r['test_loss']:.4f} | {100 * r['test_acc']:.2f}% | {r['epoch_seconds']:.1f} | "
              f"{r['images_per_second']:.0f} | {r['loader_wait_seconds']:.2f} |")


if __name__ == "__main__":
    main()
