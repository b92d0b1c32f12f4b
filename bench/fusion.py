"""Training steps with conv + ReLU + max-pool fused vs layer by layer, serial and parallel.

    python bench/fusion.py --threads 2 > docs/results/fusion.md

Times full training steps (forward, loss, backward, Adam) of the reference
network at batch 32 on one fixed random batch, with ``Sequential.fuse_conv_pool``
on and off, the two models alternating in rounds so machine noise hits both
alike. Reports the median step time of each round's median, and the ratio.
Both models compute the same bits (``tests/test_convpool.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_summary  # noqa: E402


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="Numba threads for the parallel backend")
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds per model")
    p.add_argument("--steps", type=int, default=100, help="timed steps per round")
    return p.parse_args()


def main() -> None:
    args = _parse()
    from scratchcnn.threads import configure_threads

    configure_threads(args.threads)
    import numba
    import numpy as np

    from scratchcnn.loop import train_step
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam

    rng = np.random.default_rng(0)
    x = rng.random((32, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    rows = []
    for backend, threads in (("serial", 1), ("parallel", args.threads)):
        if backend == "parallel":
            numba.set_num_threads(threads)
        setups = {}
        for fuse in (True, False):
            model = reference_cnn(seed=0, backend=backend)
            model.fuse_conv_pool = fuse
            setups[fuse] = (model, SoftmaxCrossEntropy(backend=backend),
                            Adam(model.parameters(), backend=backend))
        medians: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for fuse, (model, loss, opt) in setups.items():
                times = []
                for i in range(args.steps + 10):  # 10 untimed: warm caches (and compile)
                    t0 = time.perf_counter()
                    train_step(model, loss, opt, x, y)
                    if i >= 10:
                        times.append(time.perf_counter() - t0)
                medians[fuse].append(statistics.median(times) * 1e3)
        fused, plain = (statistics.median(medians[f]) for f in (True, False))
        rows.append((f"{backend}@{threads}" if backend == "parallel" else backend,
                     plain, fused, fused / plain))
    info = machine_summary()
    print(f"Fusion benchmark: `python bench/fusion.py --threads {args.threads} --rounds "
          f"{args.rounds} --steps {args.steps}`. {info['cpu_model']}, {info['cpu_count']} "
          f"cores, Numba {info['numba']}, threading layer {info['threading_layer']}. "
          f"Reference network, batch 32, one fixed batch; median of {args.rounds} "
          f"alternating rounds of {args.steps} steps' medians.\n")
    print("| backend | layer by layer, ms / step | conv + ReLU + pool fused, ms / step "
          "| fused / layer by layer |")
    print("|---|---:|---:|---:|")
    for name, plain, fused, ratio in rows:
        print(f"| {name} | {plain:.2f} | {fused:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
