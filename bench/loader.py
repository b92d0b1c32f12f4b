"""Data loading head to head: the loader alone, and training with it in or out of the loop.

    python bench/loader.py                                   # full data, 3 repeats
    python bench/loader.py --limit-train 2000 --repeats 1    # quick mode

Part 1, the loader alone: one epoch of ``BatchLoader`` batches (nothing done
with them) with 0, 1, 2, 4 loader threads (``--loader-threads``), without and
with ``--augment``-style augmentation; batches/s. With 0 threads the batches
are prepared in the consuming thread.

Part 2, training: the parallel backend at ``--threads`` trains the reference
network with the loader in the training thread (loader threads 0) and in a
pool (2), without and with augmentation (``--train-loader-threads``,
``--train-augment``); epoch time and the time the loop waited for data
(``BatchLoader.wait_seconds``; with 0 loader threads it is the preparation
time itself).

Both parts interleave their configurations: for each repeat, for each epoch
(part 2), each configuration in turn, the order rotated by one per repeat.
Timings show min / median / max over all (repeat, epoch) samples.

Writes loader.json, loader.md and loader.png to ``--out``.

The GIL knob: ``--prep-cost MS`` adds MS milliseconds of (single-core,
calibrated once at start) extra preparation work to every batch, either
holding the GIL (``--prep-gil hold``: a pure-Python loop) or releasing it
(``--prep-gil release``: the same loop in a ``@njit(nogil=True)`` function).
Run it with ``--threads`` equal to the core count (no spare core for the
loader) and below it (a spare core) to see when the pool helps and when it
costs. ``--timeline`` records, for the first epoch of each training
configuration, when every batch was prepared (start, end, thread) and when the
training loop asked for it and got it; ``docs/figures.py`` draws the overlap
from the committed JSON. The extra work replaces
``scratchcnn.data.loader.make_batch`` by a wrapper (the loader looks it up at
call time), so the package itself is unchanged.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from compare import (
    _non_negative_int,
    _positive_int,
    add_common_flags,
    busy_warning,
    configure,
    load_data,
    machine_context,
    machine_line,
    write_json,
)

PROG = "python bench/loader.py"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "loader"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Measure the batch loader alone (batches/s vs loader threads, with and "
                    "without augmentation) and training with the loader in the training "
                    "thread vs in a thread pool (time spent waiting for data).")
    add_common_flags(p)
    p.set_defaults(epochs=1)
    p.add_argument("--loader-threads", type=_non_negative_int, nargs="+", default=[0, 1, 2, 4],
                   help="loader thread counts for the loader-alone part")
    p.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1,
                   help="Numba threads of the parallel backend in the training part")
    p.add_argument("--train-loader-threads", type=_non_negative_int, nargs="+",
                   default=[0, 2], help="loader thread counts for the training part")
    p.add_argument("--train-augment", choices=["off", "on"], nargs="+", default=["off", "on"],
                   help="augmentation settings for the training part")
    p.add_argument("--no-training", action="store_true", help="only the loader-alone part")
    p.add_argument("--prep-cost", type=float, default=0.0, metavar="MS",
                   help="extra preparation work per batch, in milliseconds of one core")
    p.add_argument("--prep-gil", choices=["hold", "release"], default="hold",
                   help="the extra work holds the GIL (Python loop) or releases it (nogil Numba)")
    p.add_argument("--timeline", type=int, default=0, metavar="BATCHES",
                   help="record timestamps of the first BATCHES batches of each training "
                        "configuration's first epoch (0: off)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    return p


def _spin_python(n: int) -> float:
    s = 0.0
    for i in range(n):
        s += i * 0.5
    return s


_spin_nogil = None


def _nogil_spinner():
    global _spin_nogil
    if _spin_nogil is None:
        import numba

        @numba.njit(nogil=True, cache=False)
        def spin(n):
            s = 0.0
            for i in range(n):
                s += (i % 7) * 0.5  # not folded into a closed form by the compiler
                s *= 0.9999999
            return s

        spin(10)
        _spin_nogil = spin
    return _spin_nogil


def _calibrate(fn, ms: float) -> int:
    """Iterations of fn that take ms milliseconds on this core (best of 3 timings)."""
    n = 20000
    while True:
        best = min(_timed(fn, n) for _ in range(3))
        if best > 0.02:
            return max(1, int(n * ms / 1000 / best))
        n *= 4


def _timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


class Recorder:
    """Extra work per batch and the timestamps of --timeline (installed by install())."""

    def __init__(self, args):
        import scratchcnn.data.loader as loader_mod
        self.mod, self.original = loader_mod, loader_mod.make_batch
        self.events: list = []
        self.recording = False
        self.limit = args.timeline
        self.t0 = time.perf_counter()
        self.work, self.iters = None, 0
        if args.prep_cost > 0:
            self.work = _spin_python if args.prep_gil == "hold" else _nogil_spinner()
            self.iters = _calibrate(self.work, args.prep_cost)

    def install(self):
        import threading

        def make_batch(*a):
            t = time.perf_counter()
            if self.work is not None:
                self.work(self.iters)
            batch = self.original(*a)
            if self.recording and a[-1] < self.limit:
                self.events.append({"what": "prepare", "batch": int(a[-1]),
                                    "thread": threading.current_thread().name,
                                    "start": t - self.t0,
                                    "end": time.perf_counter() - self.t0})
            return batch
        self.mod.make_batch = make_batch

    def uninstall(self):
        self.mod.make_batch = self.original

    def consume(self, it):
        """Wrap a loader epoch: record when each batch was asked for and received."""
        k = 0
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            if self.recording and k < self.limit:
                self.events.append({"what": "wait", "batch": k, "start": t - self.t0,
                                    "end": time.perf_counter() - self.t0})
            yield batch
            k += 1


def _rotated(items: list, r: int) -> list:
    k = r % len(items)
    return items[k:] + items[:k]


def loader_alone(args, x, y) -> list[dict]:
    """Batches/s of bare loader epochs, per (augment, threads)."""
    from harness import spread

    from scratchcnn.data.loader import BatchLoader

    keys = [(aug, t) for aug in (False, True) for t in sorted(set(args.loader_threads))]
    loaders = {k: BatchLoader(x, y, args.batch_size, shuffle=True, seed=args.seed,
                              augment=k[0], threads=k[1], prefetch=args.prefetch) for k in keys}
    rates: dict = {k: [] for k in keys}
    try:
        for r in range(args.repeats):
            for k in _rotated(keys, r):
                ld = loaders[k]
                t0 = time.perf_counter()
                n = sum(1 for _ in ld.epoch(r + 1))
                seconds = time.perf_counter() - t0
                rates[k].append(n / seconds)
                print(f"repeat {r + 1}/{args.repeats}  loader alone, threads {k[1]}, augment "
                      f"{'on ' if k[0] else 'off'}: {n / seconds:8.0f} batches/s", flush=True)
    finally:
        for ld in loaders.values():
            ld.close()
    return [{"augment": aug, "threads": t, "batches_per_second": spread(rates[(aug, t)]),
             "images_per_second_median": spread(rates[(aug, t)])["median"] * args.batch_size,
             "all": rates[(aug, t)]} for aug, t in keys]


def training(args, x, y, rec=None) -> list[dict]:
    """Epoch time and data wait per (loader threads, augment), parallel backend."""
    from harness import ScratchRun, spread

    from scratchcnn.data.loader import BatchLoader

    keys = [(t, a == "on") for a in dict.fromkeys(args.train_augment)
            for t in sorted(set(args.train_loader_threads))]
    loaders = {k: BatchLoader(x, y, args.batch_size, shuffle=True, seed=args.seed,
                              augment=k[1], threads=k[0], prefetch=args.prefetch) for k in keys}
    secs: dict = {k: [] for k in keys}
    waits: dict = {k: [] for k in keys}
    timelines: dict = {}
    try:
        for r in range(args.repeats):
            runs = {k: ScratchRun("parallel", args.threads, args.seed) for k in keys}
            for epoch in range(1, args.epochs + 1):
                for k in _rotated(keys, r):
                    record = rec is not None and rec.limit > 0 and r == 0 and epoch == 1
                    if record:
                        rec.events, rec.recording = [], True
                        ld = loaders[k]
                        original_epoch = ld.epoch
                        ld.epoch = lambda e, _o=original_epoch: rec.consume(_o(e))
                    try:
                        res = runs[k].train_epoch(loaders[k], epoch)
                    finally:
                        if record:
                            rec.recording = False
                            del loaders[k].epoch
                            timelines[k] = rec.events
                    secs[k].append(res.seconds)
                    waits[k].append(res.wait_seconds)
                    print(f"repeat {r + 1}/{args.repeats}  epoch {epoch}/{args.epochs}  "
                          f"training, loader threads {k[0]}, augment {'on ' if k[1] else 'off'}:"
                          f" {res.seconds:7.2f} s, waited {res.wait_seconds:6.2f} s", flush=True)
    finally:
        for ld in loaders.values():
            ld.close()
    out = []
    for t, aug in keys:
        s, w = spread(secs[(t, aug)]), spread(waits[(t, aug)])
        out.append({"loader_threads": t, "augment": aug, "epoch_seconds": s, "wait_seconds": w,
                    "wait_fraction": w["median"] / s["median"],
                    "images_per_second": len(y) / s["median"],
                    "epoch_seconds_all": secs[(t, aug)], "wait_seconds_all": waits[(t, aug)],
                    **({"timeline": timelines[(t, aug)]} if (t, aug) in timelines else {})})
    return out


def _t(sp: dict, fmt: str) -> str:
    return f"{sp['median']:{fmt}} ({sp['min']:{fmt}}–{sp['max']:{fmt}})"


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "### scratchcnn data loading", "", f"`{report['command']}`", "",
        f"Machine: {machine_line(report['machine'], report['gemm_peak'])}.", "",
        *([f"**{w}**", ""] if (w := busy_warning(report["machine"])) else []),
        f"{s['train_images']:,} training images, batch {s['batch_size']}, prefetch "
        f"{s['prefetch']}, {s['repeats']} repeat(s); median (min–max)."
        + (f" Extra preparation work per batch: {s['prep_cost_ms']:g} ms, GIL "
           f"{'held' if s['prep_gil'] == 'hold' else 'released'}."
           if s.get("prep_cost_ms") else ""), "",
        "#### The loader alone", "",
        "| loader threads | augment | batches / s | images / s |", "|---:|---|---:|---:|",
    ]
    for r in report["loader_alone"]:
        lines.append(f"| {r['threads']} | {'on' if r['augment'] else 'off'} "
                     f"| {_t(r['batches_per_second'], '.0f')} "
                     f"| {r['images_per_second_median']:.0f} |")
    if report["training"]:
        lines += ["", f"#### Training ({report['train_backend']}, {s['epochs']} epoch(s) per "
                      f"repeat): loader in the training thread vs in a pool", "",
                  "| loader threads | augment | s / epoch | waiting for data, s / epoch "
                  "| wait share | images / s |", "|---:|---|---:|---:|---:|---:|"]
        for r in report["training"]:
            lines.append(f"| {r['loader_threads']} | {'on' if r['augment'] else 'off'} "
                         f"| {_t(r['epoch_seconds'], '.2f')} | {_t(r['wait_seconds'], '.2f')} "
                         f"| {100 * r['wait_fraction']:.1f}% | {r['images_per_second']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    load_start = list(os.getloadavg())
    t_start = time.perf_counter()
    started = datetime.now().isoformat(timespec="seconds")
    configure(args.threads, args.omp_wait_policy)
    from harness import warm_up_backend, warm_up_loader

    warm = {"loader": warm_up_loader()}
    if not args.no_training:
        warm["parallel"] = warm_up_backend("parallel")
    machine, peak = machine_context(args.gemm_size, None)
    machine["load_average_at_start"] = load_start
    x, y, _, _ = load_data(args.data_dir, args.limit_train, 1)
    rec = Recorder(args)
    rec.install()
    report = {
        "command": " ".join([PROG, *map(shlex.quote, argv)]), "started": started,
        "settings": {"train_images": len(y), "batch_size": args.batch_size,
                     "prefetch": args.prefetch, "repeats": args.repeats, "epochs": args.epochs,
                     "seed": args.seed, "threads": args.threads,
                     "prep_cost_ms": args.prep_cost, "prep_gil": args.prep_gil,
                     "prep_iterations": rec.iters},
        "machine": machine, "gemm_peak": peak, "warm_up": warm,
        "train_backend": f"parallel@{args.threads}",
        "loader_alone": loader_alone(args, x, y),
        "training": [] if args.no_training else training(args, x, y, rec),
    }
    rec.uninstall()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from plots import plot_loader

    plot_loader(report, out / "loader.png")
    report["total_seconds"] = time.perf_counter() - t_start
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    write_json(out / "loader.json", report)
    md = markdown(report)
    (out / "loader.md").write_text(md)
    print("\n" + md)
    print(f"wrote {out}/loader.json, loader.md, loader.png ({report['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
