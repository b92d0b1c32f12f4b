"""Head to head: train the reference CNN serial vs parallel at 1..N threads (and PyTorch).

    python bench/compare.py                                  # serial, parallel@1,2,4,8
    python bench/compare.py --limit-train 2000 --epochs 1 --repeats 1   # quick mode
    python bench/compare.py --reference torch --torch-threads 1 2
    python bench/compare.py --dataset fashion-mnist                # 1x28x28 images, 60,000

Every configuration trains ``scratchcnn.model.reference_cnn`` (Adam, softmax
cross-entropy, batch 32) from the same seed on the same batches (a
``BatchLoader``'s batches do not depend on its thread count).

Loader threads (``--loader-threads``, default ``auto``): each configuration gets
what ``python -m scratchcnn.train --loader-threads auto`` would give it, a loader
thread for each core its compute threads leave free (on 2 cores: serial and
parallel@1 one, parallel@2 none), and PyTorch at n threads the same as the
parallel backend at n; so every row is what a user of the CLI's defaults gets, and
PyTorch runs under the same rule. A loader thread that shares a core with a
compute thread slows the whole parallel region (docs/guide.md, section 4). A
number gives every configuration that many.

Schedule (interleaved so that machine noise hits every configuration alike):
for each repeat, fresh models are built for all configurations; then for each
epoch, each configuration trains one epoch and is evaluated on the test set.
The configuration order rotates by one position every repeat. Only the
training loop is timed (as ``scratchcnn.train`` does); evaluation is timed
separately. JIT warm-up (compile or Numba cache load) runs before any timing
and is reported on its own.

Timings: every (repeat, epoch) pair gives one epoch time per configuration;
reports show min / median / max over those. Speedup = serial median / median,
with the min-max of the paired ratios (same repeat, same epoch) as its spread;
parallel efficiency = speedup / threads.

Breakdown: ``forward``/``backward`` of every layer, the loss and the optimizer
step are wrapped with ``perf_counter`` timers from outside (``bench/harness.py``)
in the timed epochs of every configuration (``--breakdown``); "data wait" is
``BatchLoader.wait_seconds``, "other" the rest of the loop. The timers cost
about 30 clock reads per batch (microseconds against milliseconds).

Writes compare.json, compare.md, speedup.png, accuracy.png, breakdown.png to ``--out``.

compare.json: ``command``, ``started``, ``total_seconds``; ``settings`` (image
counts, epochs, repeats, batch size, seed, loader threads (``auto`` or a
number) and ``loader_threads_per_configuration``, augment, thread lists,
schedule); ``machine`` (CPU, logical and physical cores, threading
layer, versions, Numba pool size, threading environment variables, load
averages); ``gemm_peak`` (``one_thread_gflops``, ``all_threads_gflops``);
``flops`` (``per_layer``, ``per_image``, ``per_epoch``, ``full_epoch``);
``warm_up`` (per backend: ``seconds``, ``cache_hits``, ``cache_misses``);
``configurations`` (one per configuration: ``name``, ``backend``, ``threads``,
``loader_threads``, ``epoch_seconds`` {min, median, max, n} and ``epoch_seconds_all``
[repeat][epoch], ``images_per_second``, ``speedup``, ``speedup_range``,
``efficiency``, ``gflops``, ``peak_gflops``, ``peak_fraction``,
``wait_seconds``, ``eval_seconds``, ``test_acc_per_epoch``, ``test_acc_all``,
``final_test_acc``, ``final_train_loss``, ``bit_equal_to_serial``,
``bit_equal_per_repeat``, ``same_weights_every_repeat``,
``breakdown_seconds`` {part: mean seconds per epoch}; torch rows add
``speedup_vs_torch1``); ``versus_torch`` (``threads``, ``ours``, ``torch``,
``ours_seconds``, ``torch_seconds``, ``ratio`` = ours / torch, ``ratio_range``,
final accuracies).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

# scratchcnn.train imports no numba: --threads is read first
from scratchcnn.train import int_at_least, loader_threads_flag

PROG = "python bench/compare.py"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compare"
FULL_TRAIN_IMAGES = 50_000
#: Training images of each dataset the bench runs on (--dataset), for "TFLOP per full epoch".
FULL_TRAIN = {"cifar10": 50_000, "fashion-mnist": 60_000, "mnist": 60_000}


_positive_int = int_at_least(1)  # the training CLI's flag parsers: same messages
_non_negative_int = int_at_least(0)


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared with bench/loader.py: data, sizes, seed, loader, output."""
    p.add_argument("--data-dir", default=os.environ.get("SCRATCHCNN_DATA", "./data"),
                   help="folder containing cifar-10-batches-py/ ($SCRATCHCNN_DATA "
                        "if set)")
    p.add_argument("--limit-train", type=_positive_int, default=None,
                   help="use only the first N training images (None: all 50,000)")
    p.add_argument("--limit-test", type=_positive_int, default=None,
                   help="use only the first N test images (None: all 10,000)")
    p.add_argument("--epochs", type=_positive_int, default=3, help="epochs per repeat")
    p.add_argument("--repeats", type=_positive_int, default=3,
                   help="independent repeats (fresh models); medians over all timed epochs")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of the weights, data order and augmentation")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per step")
    p.add_argument("--prefetch", type=_positive_int, default=4,
                   help="batches prepared ahead by loader threads")
    p.add_argument("--gemm-size", type=_positive_int, default=2048,
                   help="matrix size of the float32 GEMM peak measurement")
    p.add_argument("--omp-wait-policy", choices=["active", "passive"], default=None,
                   help="set OMP_WAIT_POLICY before the OpenMP runtimes load (default: leave "
                        "the environment alone). Idle OpenMP threads spin by default, which "
                        "collapses parallel runs when another process holds a core")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the reference CNN under the serial backend and the parallel "
                    "backend at several thread counts (optionally PyTorch too), interleaved "
                    "and repeated; report epoch times, speedup, efficiency, accuracy, "
                    "bit-for-bit equality, GFLOP/s vs the GEMM peak, and plots.")
    p.add_argument("--threads", type=_positive_int, nargs="+", default=[1, 2, 4, 8],
                   help="thread counts of the parallel backend (serial always runs)")
    add_common_flags(p)
    p.add_argument("--dataset", choices=list(FULL_TRAIN), default="cifar10",
                   help="train on CIFAR-10 (3x32x32) or on Fashion-MNIST/MNIST (1x28x28; the "
                        "network's first convolution and flatten size follow the shape)")
    p.add_argument("--loader-threads", type=loader_threads_flag, default="auto",
                   help="loader threads of every configuration (0 = batches prepared in the "
                        "training thread), or auto: for each configuration what `python -m "
                        "scratchcnn.train --loader-threads auto` picks for its backend and "
                        "thread count (PyTorch at n threads as the parallel backend at n)")
    p.add_argument("--augment", action="store_true",
                   help="random crop and horizontal flip in the loader")
    p.add_argument("--reference", choices=["torch"], default=None,
                   help="also train the same network with PyTorch (CPU) in the same run")
    p.add_argument("--torch-threads", type=_positive_int, nargs="+", default=[1, 2],
                   help="torch.set_num_threads values for --reference torch")
    p.add_argument("--breakdown", default="all",
                   help="instrument 'all' configurations, 'none', or one by name "
                        "(e.g. parallel@2) with per-layer timers")
    p.add_argument("--render", type=Path, metavar="JSON", default=None,
                   help="only redraw compare.md and the plots from a saved compare.json")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    return p


# -- the run ---------------------------------------------------------------------------


def load_data(data_dir: str, limit_train: int | None, limit_test: int | None,
              dataset: str = "cifar10"):
    """(train_x, train_y, test_x, test_y) uint8 NCHW / int64; exits with one line if absent."""
    from scratchcnn.data.datasets import DataError, load_dataset

    try:
        data = load_dataset(dataset, data_dir, download=False)
    except DataError as e:
        sys.exit(f"{PROG}: error: {e} (python -m scratchcnn.train --dataset {dataset} "
                 f"--data-dir DIR downloads it)")
    n_train = min(limit_train or len(data.train_labels), len(data.train_labels))
    n_test = min(limit_test or len(data.test_labels), len(data.test_labels))
    return (data.train_images[:n_train], data.train_labels[:n_train],
            data.test_images[:n_test], data.test_labels[:n_test])


#: Environment variables that change threading behaviour; recorded in every report.
THREAD_ENV = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS",
              "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def configure(max_threads: int, omp_wait_policy: str | None = None) -> None:
    """Size Numba's pool for ``max_threads`` before numba is imported; print the warning.

    ``omp_wait_policy`` sets ``OMP_WAIT_POLICY`` first (read once, when libgomp loads).
    """
    if omp_wait_policy:
        if "numba" in sys.modules:
            raise RuntimeError("configure() must run before numba is imported")
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    from scratchcnn.threads import configure_threads

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_threads(max_threads)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def machine_context(gemm_size: int, torch_version: str | None) -> tuple[dict, dict]:
    """(machine summary, GEMM peak), measured now in this process."""
    import numba
    from common import gemm_peak, machine_summary
    from harness import physical_cores

    machine = machine_summary()
    machine["physical_cores"] = physical_cores()
    machine["numba_num_threads_pool"] = numba.config.NUMBA_NUM_THREADS
    machine["environment"] = {k: os.environ.get(k) for k in THREAD_ENV}
    if torch_version:
        import torch

        machine["torch"] = torch_version
        machine["torch_parallel_info"] = torch.__config__.parallel_info()
    return machine, gemm_peak(size=gemm_size)


def scratch_run(backend: str, threads: int, seed: int, instrument: bool,
                input_shape: tuple[int, int, int]):
    """A ``harness.ScratchRun`` whose network takes ``input_shape`` images (harness builds
    CIFAR-10's; for another shape the model and its optimizer are rebuilt before timing)."""
    from harness import LR, ScratchRun, Timers

    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam

    run = ScratchRun(backend, threads, seed, instrument=False)
    if tuple(input_shape) != (3, 32, 32):
        run.model = reference_cnn(seed=seed, backend=backend, input_shape=input_shape)
        run.opt = Adam(run.model.parameters(), lr=LR, backend=backend)
    if instrument:
        run.timers = Timers()
        run.timers.instrument(run.model, run.loss, run.opt)
    return run


def loader_threads_for(flag: int | str, name: str) -> int:
    """The loader threads configuration ``name`` ("serial", "parallel@n", "torch@n") trains
    with under ``--loader-threads`` ``flag``: the number, or with ``auto`` the training
    CLI's rule (``scratchcnn.threads.auto_loader_threads``: a loader thread for each core
    the compute threads leave free); a PyTorch configuration at n threads computes on n
    cores, as the parallel backend at n. (bench/tta.py uses it too.)"""
    if flag != "auto":
        return int(flag)
    from scratchcnn.threads import auto_loader_threads

    backend, _, n = name.partition("@")
    return auto_loader_threads("serial" if backend == "serial" else "parallel", int(n or 1))


def make_runs(args, names: list[str]) -> list:
    """Fresh models for every configuration (same seed), in ``names`` order."""
    runs = []
    for name in names:
        backend, _, n = name.partition("@")
        if backend == "torch":
            from torch_ref import TorchProcessRun

            loader_args = {k: getattr(args, k) for k in (
                "data_dir", "limit_train", "limit_test", "batch_size", "augment",
                "prefetch", "dataset")}
            loader_args["loader_threads"] = loader_threads_for(args.loader_threads, name)
            runs.append(TorchProcessRun(int(n), args.seed, loader_args))
        else:
            instrument = args.breakdown == "all" or args.breakdown == name
            runs.append(scratch_run(backend, int(n or 1), args.seed, instrument,
                                    args.input_shape))
    return runs


def run_schedule(args, names, loaders: dict) -> dict:
    """Train every configuration, interleaved; return raw per-(repeat, epoch) records.
    ``loaders``: name -> (train loader, test loader) of that configuration (PyTorch's run
    loaders of their own in their processes)."""
    from harness import breakdown

    raw = {n: {"epochs": [[] for _ in range(args.repeats)], "bit_equal": [],
               "same_as_first_repeat": []} for n in names}
    first_weights = {}
    for r in range(args.repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        runs = dict(zip(names, make_runs(args, names)))
        for epoch in range(1, args.epochs + 1):
            for name in order:
                run = runs[name]
                train_loader, test_loader = loaders[name]
                res = run.train_epoch(train_loader, epoch)
                t0 = time.perf_counter()
                test_loss, test_acc = run.evaluate(test_loader)
                rec = {"seconds": res.seconds, "images": res.images,
                       "train_loss": res.train_loss, "train_acc": res.train_acc,
                       "test_loss": test_loss, "test_acc": test_acc,
                       "wait_seconds": res.wait_seconds,
                       "eval_seconds": time.perf_counter() - t0,
                       "parts": breakdown(res) if res.parts else None}
                raw[name]["epochs"][r].append(rec)
                print(f"repeat {r + 1}/{args.repeats}  epoch {epoch}/{args.epochs}  "
                      f"{name:<12} {res.seconds:7.2f} s  {res.images_per_second:6.0f} img/s  "
                      f"wait {res.wait_seconds:5.2f} s  test acc {100 * test_acc:5.2f}%",
                      flush=True)
        serial = runs["serial"].weights()
        for run in runs.values():  # stop child processes (torch) before the next repeat
            getattr(run, "close", lambda: None)()
        for name, run in runs.items():
            w = run.weights()
            raw[name]["bit_equal"].append(None if w is None else _same(w, serial))
            if w is not None:
                first_weights.setdefault(name, w)
                raw[name]["same_as_first_repeat"].append(_same(w, first_weights[name]))
    return raw


def _same(a: dict[str, bytes], b: dict[str, bytes]) -> bool:
    """Bit-for-bit equality of two parameter sets (every byte of every parameter)."""
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a)


# -- the report ------------------------------------------------------------------------


def summarize(args, names, raw, peak: dict, flops: dict, n_train: int) -> list[dict]:
    """Per-configuration statistics (see the module docstring and the JSON schema)."""
    import statistics

    from harness import peak_for, spread

    def secs(name):
        return [[e["seconds"] for e in rep] for rep in raw[name]["epochs"]]

    def flat(rows):
        return [v for row in rows for v in row]

    serial = secs("serial")
    torch1 = secs("torch@1") if "torch@1" in raw else None
    flops_epoch = flops["per_image"] * n_train
    out = []
    for name in names:
        backend, _, n = name.partition("@")
        threads = int(n or 1)
        epochs = raw[name]["epochs"]
        s = secs(name)
        t = spread(flat(s))
        paired = [a / b for a, b in zip(flat(serial), flat(s))]
        speedup = spread(flat(serial))["median"] / t["median"]
        acc = [[e["test_acc"] for e in rep] for rep in epochs]
        gflops = flops_epoch / t["median"] / 1e9
        row = {
            "name": name, "kind": "torch" if backend == "torch" else "scratchcnn",
            "backend": backend, "threads": threads,
            "loader_threads": loader_threads_for(args.loader_threads, name),
            "epoch_seconds": t, "epoch_seconds_all": s,
            "images_per_second": {"min": n_train / t["max"], "median": n_train / t["median"],
                                  "max": n_train / t["min"]},
            "speedup": speedup, "speedup_range": [min(paired), max(paired)],
            "efficiency": speedup / threads if backend != "torch" else None,
            "gflops": gflops, "peak_gflops": peak_for(threads, peak),
            "peak_fraction": gflops / peak_for(threads, peak),
            "wait_seconds": spread(flat([[e["wait_seconds"] for e in rep] for rep in epochs])),
            "eval_seconds": spread(flat([[e["eval_seconds"] for e in rep] for rep in epochs])),
            "test_acc_per_epoch": [statistics.median(col) for col in zip(*acc)],
            "test_acc_all": acc,
            "final_test_acc": statistics.median(rep[-1] for rep in acc),
            "final_train_loss": statistics.median(rep[-1]["train_loss"] for rep in epochs),
            "bit_equal_to_serial": (None if backend == "torch"
                                    else all(raw[name]["bit_equal"])),
            "bit_equal_per_repeat": raw[name]["bit_equal"],
            "same_weights_every_repeat": (all(raw[name]["same_as_first_repeat"])
                                          if raw[name]["same_as_first_repeat"] else None),
            "breakdown_seconds": _mean_parts(epochs),
        }
        if backend == "torch" and torch1:
            row["speedup_vs_torch1"] = spread(flat(torch1))["median"] / t["median"]
            row["efficiency_vs_torch1"] = row["speedup_vs_torch1"] / threads
        out.append(row)
    return out


def _mean_parts(epochs: list[list[dict]]) -> dict[str, float] | None:
    """Mean seconds per epoch of every part (means, unlike medians, add up to the epoch)."""
    recs = [e["parts"] for rep in epochs for e in rep if e["parts"]]
    if not recs:
        return None
    keys = list(dict.fromkeys(k for r in recs for k in r))
    return {k: sum(r.get(k, 0.0) for r in recs) / len(recs) for k in keys}


def versus_torch(configs: list[dict]) -> list[dict]:
    """Our epoch time / PyTorch's, per thread count (parallel@n / torch@n, serial / torch@1)."""
    by = {c["name"]: c for c in configs}
    rows = []
    for c in configs:
        if c["backend"] != "torch":
            continue
        n = c["threads"]
        ours = [f"parallel@{n}"] + (["serial"] if n == 1 else [])
        for o in ours:
            if o in by:
                a, b = by[o], c
                paired = [x / y for x, y in zip(
                    [v for r in a["epoch_seconds_all"] for v in r],
                    [v for r in b["epoch_seconds_all"] for v in r])]
                rows.append({"threads": n, "ours": o, "torch": c["name"],
                             "ours_seconds": a["epoch_seconds"]["median"],
                             "torch_seconds": b["epoch_seconds"]["median"],
                             "ratio": a["epoch_seconds"]["median"] / b["epoch_seconds"]["median"],
                             "ratio_range": [min(paired), max(paired)],
                             "ours_final_test_acc": a["final_test_acc"],
                             "torch_final_test_acc": b["final_test_acc"]})
    return rows


def machine_line(machine: dict, peak: dict) -> str:
    """One line: CPU, cores, threading layer, versions, GEMM peak."""
    libs = ", ".join(f"{k} {machine[k]}" for k in ("python", "numpy", "numba", "torch")
                     if k in machine)
    return (f"{machine['cpu_model']}, {machine['cpu_count']} logical / "
            f"{machine['physical_cores']} physical cores, Numba threading layer "
            f"{machine['threading_layer']}; {libs}; float32 GEMM peak "
            f"(NumPy BLAS, {peak['size']}²): {peak['one_thread_gflops']:.0f} GFLOP/s on 1 "
            f"thread, {peak['all_threads_gflops']:.0f} on {peak['all_threads']}; "
            f"OMP_WAIT_POLICY {machine['environment']['OMP_WAIT_POLICY'] or 'unset'}; "
            f"1-min load average at start {machine['load_average_at_start'][0]:.2f}")


def busy_warning(machine: dict) -> str | None:
    """A warning when other processes were running (load average at start >= 0.5)."""
    load = machine["load_average_at_start"][0]
    if load < 0.5:
        return None
    return (f"warning: the 1-minute load average was {load:.2f} when this run started: other "
            f"processes were using the CPU, so parallel timings are not representative "
            f"(rerun on a quiet machine)")


def _t(sp: dict, fmt: str = ".2f") -> str:
    return f"{sp['median']:{fmt}} ({sp['min']:{fmt}}–{sp['max']:{fmt}})"


def _dataset_words(settings: dict) -> str:
    """"fashion-mnist (1x28x28), " for another dataset than CIFAR-10 (older reports: none)."""
    name = settings.get("dataset", "cifar10")
    if name == "cifar10":
        return ""
    return f"{name} ({'x'.join(str(v) for v in settings.get('input_shape', []))}), "


def _loader_words(settings: dict) -> str:
    """The loader threads of the Data line: one count, or auto's count per configuration."""
    n, per = settings["loader_threads"], settings.get("loader_threads_per_configuration")
    if n != "auto" or not per:
        return f"{n} loader thread(s)"
    return ("loader threads as the training CLI's `--loader-threads auto` picks them ("
            + ", ".join(f"{name} {t}" for name, t in per.items()) + ")")


def markdown(report: dict) -> str:
    """compare.md: the tables, with the command line and machine line on top."""
    s, f = report["settings"], report["flops"]
    lines = [
        "### scratchcnn head to head", "",
        f"`{report['command']}`", "",
        f"Machine: {machine_line(report['machine'], report['gemm_peak'])}.", "",
        *([f"**{w}**", ""] if (w := busy_warning(report["machine"])) else []),
        f"Data: {_dataset_words(s)}{s['train_images']:,} training / "
        f"{s['test_images']:,} test images, "
        f"{s['epochs']} epoch(s) × {s['repeats']} repeat(s), batch {s['batch_size']}, Adam "
        f"(lr 1e-3), seed {s['seed']}, {_loader_words(s)}, augment "
        f"{'on' if s['augment'] else 'off'}. Training FLOPs: "
        f"{f['per_image'] / 1e6:.2f} MFLOP per image, {f['full_epoch'] / 1e12:.3f} TFLOP per "
        f"{s.get('full_train_images', FULL_TRAIN_IMAGES):,}-image epoch. Times: median "
        f"(min–max) over {s['repeats'] * s['epochs']} "
        f"timed epoch(s), configurations interleaved.", "",
        "| configuration | s / epoch | images / s | speedup vs serial | efficiency "
        "| GFLOP/s | % of peak | data wait s / epoch | final test acc | bit-equal to serial |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in report["configurations"]:
        lo, hi = c["speedup_range"]
        eq = c["bit_equal_to_serial"]
        eff = "—" if c["efficiency"] is None else f"{100 * c['efficiency']:.0f}%"
        lines.append(
            f"| {c['name']} | {_t(c['epoch_seconds'])} | {c['images_per_second']['median']:.0f} "
            f"| {c['speedup']:.2f}× ({lo:.2f}–{hi:.2f}) "
            f"| {eff} "
            f"| {c['gflops']:.1f} | {100 * c['peak_fraction']:.0f}% "
            f"| {c['wait_seconds']['median']:.2f} | {100 * c['final_test_acc']:.2f}% "
            f"| {'n/a' if eq is None else ('yes' if eq else '**no**')} |")
    lines += [
        "", "Speedup: serial median / this configuration's median (PyTorch rows too), in "
        "brackets the min–max of the ratios of paired epochs (same repeat, same epoch). "
        "Efficiency: speedup / threads. GFLOP/s: training FLOPs (convolution and dense "
        "multiply-adds; backward = 2× forward, 1× for the first layer, which computes no input "
        "gradient) / median epoch time; % of peak: of the float32 GEMM peak at that thread "
        "count (all-core peak from as many threads as cores). Bit-equal: every byte of every "
        "parameter after the last epoch equals the serial run's, in every repeat."]
    if report["versus_torch"]:
        lines += ["", "#### Against PyTorch (CPU), same network, same batches", "",
                  "| threads | ours | ours s / epoch | PyTorch s / epoch | ours / PyTorch "
                  "| ours final acc | PyTorch final acc |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for v in report["versus_torch"]:
            lo, hi = v["ratio_range"]
            lines.append(f"| {v['threads']} | {v['ours']} | {v['ours_seconds']:.2f} "
                         f"| {v['torch_seconds']:.2f} | {v['ratio']:.2f}× ({lo:.2f}–{hi:.2f}) "
                         f"| {100 * v['ours_final_test_acc']:.2f}% "
                         f"| {100 * v['torch_final_test_acc']:.2f}% |")
    lines += ["", "#### JIT warm-up (before timing; compile or Numba cache load)", "",
              "| what | seconds | kernels from cache | kernels compiled |", "|---|---:|---:|---:|"]
    for k, w in report["warm_up"].items():
        lines.append(f"| {k} | {w['seconds']:.2f} | {w.get('cache_hits', '—')} "
                     f"| {w.get('cache_misses', '—')} |")
    inst = [c for c in report["configurations"] if c["breakdown_seconds"]]
    if inst:
        from plots import group_breakdown

        groups = list(group_breakdown(inst[0]["breakdown_seconds"]))
        lines += ["", "#### Where an epoch goes (mean seconds per epoch)", "",
                  "| part | " + " | ".join(c["name"] for c in inst) + " |",
                  "|---|" + "---:|" * len(inst)]
        grouped = [group_breakdown(c["breakdown_seconds"]) for c in inst]
        for g in groups:
            lines.append(f"| {g} | " + " | ".join(f"{x[g]:.2f}" for x in grouped) + " |")
        lines.append("| **epoch (sum)** | " + " | ".join(
            f"{sum(x.values()):.2f}" for x in grouped) + " |")
        lines += ["", "conv1 and conv2 include their ReLU and the 2x2 max-pool after them: "
                  "the model runs each pair as one kernel (`kernels/convpool.py`)."]
    return "\n".join(lines) + "\n"


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def render(json_path: Path) -> None:
    """Redraw compare.md and the plots next to an existing compare.json (no training)."""
    from plots import plot_accuracy, plot_breakdown, plot_speedup

    report = json.loads(json_path.read_text())
    out = json_path.parent
    plot_speedup(report, out / "speedup.png")
    plot_accuracy(report, out / "accuracy.png")
    plot_breakdown(report, out / "breakdown.png")
    (out / "compare.md").write_text(markdown(report))
    print(f"rendered {out}/compare.md, speedup.png, accuracy.png, breakdown.png from {json_path}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.render:
        render(args.render)
        return 0
    started = datetime.now().isoformat(timespec="seconds")
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())  # 1, 5, 15 minutes; before this process adds to it
    threads = sorted(set(args.threads))
    torch_threads = sorted(set(args.torch_threads)) if args.reference == "torch" else []
    names = ["serial"] + [f"parallel@{n}" for n in threads] + [f"torch@{n}" for n in
                                                                torch_threads]
    if args.breakdown not in ("all", "none", *names):
        sys.exit(f"{PROG}: error: --breakdown {args.breakdown}: expected all, none or one of "
                 f"{', '.join(names)}")
    configure(max(threads), args.omp_wait_policy)
    # the data first: a missing dataset fails in one line before any warm-up
    train_x, train_y, test_x, test_y = load_data(args.data_dir, args.limit_train,
                                                 args.limit_test, args.dataset)
    args.input_shape = tuple(int(v) for v in train_x.shape[1:])

    from harness import BATCH_SIZE, EVAL_BATCH_SIZE, training_flops, warm_up_backend, warm_up_loader

    from scratchcnn.data.loader import BatchLoader
    from scratchcnn.model import reference_cnn

    torch_version = None
    warm = {"serial": warm_up_backend("serial"), "parallel": warm_up_backend("parallel"),
            "loader": warm_up_loader()}
    if torch_threads:
        from torch_ref import set_interop_once, warm_up_torch
        from torch_ref import torch_version as tv

        set_interop_once()
        torch_version = tv()
        warm["torch"] = warm_up_torch(max(torch_threads), args.input_shape)
    print("JIT warm-up: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in warm.items()),
          flush=True)
    machine, peak = machine_context(args.gemm_size, torch_version)
    machine["load_average_at_start"] = load_start
    print(f"machine: {machine_line(machine, peak)}", flush=True)
    if w := busy_warning(machine):
        print(w, file=sys.stderr, flush=True)

    flops = training_flops(reference_cnn(seed=0, backend="serial",
                                         input_shape=args.input_shape), args.input_shape)
    flops["full_epoch"] = flops["per_image"] * FULL_TRAIN[args.dataset]
    flops["per_epoch"] = flops["per_image"] * len(train_y)
    print(f"{len(train_y)} train / {len(test_y)} test images; {flops['per_image'] / 1e6:.2f} "
          f"MFLOP per training image ({flops['full_epoch'] / 1e12:.3f} TFLOP per full epoch); "
          f"configurations: {', '.join(names)}", flush=True)

    per_config = {name: loader_threads_for(args.loader_threads, name) for name in names}
    with contextlib.ExitStack() as stack:  # one loader pair per thread count (same batches)
        pairs = {t: (stack.enter_context(BatchLoader(
                         train_x, train_y, args.batch_size, shuffle=True, seed=args.seed,
                         augment=args.augment, threads=t, prefetch=args.prefetch)),
                     stack.enter_context(BatchLoader(
                         test_x, test_y, EVAL_BATCH_SIZE, shuffle=False, threads=t,
                         prefetch=args.prefetch)))
                 for t in sorted(set(per_config.values()))}
        raw = run_schedule(args, names, {n: pairs[t] for n, t in per_config.items()})

    configs = summarize(args, names, raw, peak, flops, len(train_y))
    report = {
        "command": " ".join([PROG, *map(shlex.quote, argv)]),
        "started": started,
        "total_seconds": None,
        "settings": {"dataset": args.dataset, "input_shape": list(args.input_shape),
                     "full_train_images": FULL_TRAIN[args.dataset],
                     "train_images": len(train_y), "test_images": len(test_y),
                     "epochs": args.epochs, "repeats": args.repeats,
                     "batch_size": args.batch_size, "default_batch_size": BATCH_SIZE,
                     "seed": args.seed, "loader_threads": args.loader_threads,
                     "loader_threads_per_configuration": per_config,
                     "prefetch": args.prefetch, "augment": args.augment,
                     "threads": threads, "torch_threads": torch_threads,
                     "breakdown": args.breakdown,
                     "schedule": "for each repeat (fresh models), for each epoch, for each "
                                 "configuration (order rotated by one per repeat): train one "
                                 "epoch (timed), then evaluate (timed separately); PyTorch "
                                 "configurations run in child processes of their own"},
        "machine": machine, "gemm_peak": peak, "flops": flops, "warm_up": warm,
        "configurations": configs, "versus_torch": versus_torch(configs),
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    from plots import plot_accuracy, plot_breakdown, plot_speedup

    plot_speedup(report, out / "speedup.png")
    plot_accuracy(report, out / "accuracy.png")
    plot_breakdown(report, out / "breakdown.png")
    report["total_seconds"] = time.perf_counter() - t_start
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    write_json(out / "compare.json", report)
    md = markdown(report)
    (out / "compare.md").write_text(md)
    print("\n" + md)
    print(f"wrote {out}/compare.json, compare.md, speedup.png, accuracy.png, breakdown.png "
          f"({report['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
