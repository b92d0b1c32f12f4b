"""Data-parallel scaling: 1 process x T threads vs P processes on this machine, and a
stated model of 1...64 nodes.

    python bench/scaling.py                       # writes docs/results/scaling/
    python bench/scaling.py --quick --out /tmp/scaling

Three measurements, all on this machine, then one model:

1. **Speed on one node** through the real CLI: ``python -m scratchcnn.train --threads T``
   against ``mpiexec -n P python -m mpi4py -m scratchcnn.train --distributed
   --threads T/P`` (one epoch on ``--limit-train`` images, ``--repeats`` times,
   alternating); medians of ``epoch_seconds`` and ``comm_seconds`` from each run's
   ``metrics.jsonl``. Reported, never asserted.
2. **Compute**, in one process with one node's threads (``--threads``): for every
   global batch N and every share size a rank can get on 1...``--max-nodes`` nodes,
   the time of what a rank does before the exchange (forward, loss, backward,
   gradient pieces, packing them into bytes) on its share, with the sample groups
   of the global batch; and per N the *finish* every rank repeats on the whole
   batch's pieces (``Sequential.finish_gradients`` + the optimizer step). The
   bytes each rank sends come from the actual piece shapes.
3. **Communication**: ``MPI_Allgatherv`` of byte blocks under ``mpiexec -n 2`` here
   (shared memory); ``alpha`` (latency) and ``beta`` (seconds per byte) fitted to
   t = alpha + b * beta by least squares on relative error.

The model, per training step of global batch N on P nodes (one rank per node,
T threads each), shares cut as ``scratchcnn.distributed.shares`` cuts them:

    step(N, P) = compute(N, largest share) + finish(N) + comm(N, P)
    comm(N, P) = (P - 1) * (alpha + b_max * beta)      (0 for P = 1)

where b_max is the largest block a rank sends: a ring Allgatherv takes P - 1
steps, each as slow as the largest block. At most N // U ranks hold data
(U = ``sample_unit``); more nodes only add communication. Inter-node alpha/beta
cannot be measured here: ``--network NAME=ALPHA_US,GBIT_PER_S`` (repeatable)
states them; the measured shared-memory values are drawn too.

Writes ``scaling.json``, ``scaling.md`` and ``scaling.png`` to ``--out``.
``--from-json scaling.json`` redraws the model from stored measurements (other
``--network`` or ``--max-nodes``) without measuring again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
PROG = "python bench/scaling.py"
INPUT_SHAPE = (3, 32, 32)
DEFAULT_NETWORKS = ["10GbE=50,10", "100G-InfiniBand-like=2,100"]


# -- the model (pure functions: tests run them on synthetic inputs) ---------------------------
def parse_network(text: str) -> dict:
    """``NAME=ALPHA_US,GBIT_PER_S`` -> {name, alpha_s, beta_s_per_byte, assumed: True}."""
    try:
        name, rest = text.split("=", 1)
        alpha_us, gbit = (float(v) for v in rest.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--network {text!r}: expected NAME=ALPHA_US,GBIT_PER_S, e.g. 10GbE=50,10") from None
    if alpha_us < 0 or gbit <= 0:
        raise argparse.ArgumentTypeError(f"--network {text!r}: need alpha >= 0, bandwidth > 0")
    return {"name": name, "alpha_s": alpha_us * 1e-6, "beta_s_per_byte": 8 / (gbit * 1e9),
            "assumed": True}


def fit_alpha_beta(points: list[tuple[float, float]]) -> tuple[float, float]:
    """alpha, beta >= 0 minimising sum ((alpha + b beta - t) / t)^2 over (b, t) points."""
    import numpy as np

    b = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points], float)
    a = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
    (alpha, beta), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    if alpha < 0:  # refit with the constraint active
        alpha, beta = 0.0, float((b / t) @ np.ones_like(t) / ((b / t) @ (b / t)))
    if beta < 0:
        alpha, beta = float(statistics.median(t)), 0.0
    return float(alpha), float(beta)


def share_sizes(n: int, unit: int, nodes: int) -> list[int]:
    from scratchcnn.distributed import shares

    return [b - a for a, b in shares(n, unit, nodes)]


def needed_sizes(n: int, unit: int, max_nodes: int) -> tuple[list[int], list[int]]:
    """(every non-empty share size on 1..max_nodes nodes, the largest share sizes)."""
    every, largest = set(), set()
    for p in range(1, max_nodes + 1):
        s = share_sizes(n, unit, p)
        every |= {v for v in s if v}
        largest.add(max(s))
    return sorted(every), sorted(largest)


def block_bytes(per_size: dict, size: int, header: int) -> int:
    return per_size[str(size)]["bytes"] if size else header


def model_rows(batch: dict, network: dict, max_nodes: int, header: int) -> list[dict]:
    """One row per node count 1..max_nodes for one global batch (see the module docstring)."""
    n, unit, per = batch["batch"], batch["unit"], batch["sizes"]
    rows = []
    for p in range(1, max_nodes + 1):
        s = share_sizes(n, unit, p)
        blocks = [block_bytes(per, v, header) for v in s]
        n_max = max(s)
        compute = per[str(n_max)]["seconds"]
        comm = (p - 1) * (network["alpha_s"] + max(blocks) * network["beta_s_per_byte"])
        step = compute + batch["finish_seconds"] + comm
        rows.append({"nodes": p, "ranks_with_data": sum(1 for v in s if v),
                     "largest_share": n_max, "compute_s": compute,
                     "finish_s": batch["finish_seconds"], "comm_s": comm, "step_s": step,
                     "largest_block_bytes": max(blocks), "gathered_bytes": sum(blocks),
                     "images_per_s": n / step})
    t1 = rows[0]["step_s"]
    for r in rows:
        r["speedup"] = t1 / r["step_s"]
    return rows


def where_it_stops(rows: list[dict], batch: dict) -> dict:
    """The node count with the shortest step (the first of equals) and why it stops there."""
    best = min(rows, key=lambda r: (round(r["step_s"], 12), r["nodes"]))
    p, max_data = best["nodes"], batch["batch"] // batch["unit"]
    nxt = next((r for r in rows if r["nodes"] > p and r["largest_share"] < best["largest_share"]),
               None)
    if best["ranks_with_data"] >= max(1, max_data) or nxt is None:
        why = (f"every rank that can hold data is busy ({max(1, max_data)} = "
               f"{batch['batch']} // U={batch['unit']}); more nodes only add communication")
    else:
        added = nxt["comm_s"] - best["comm_s"]
        why = (f"at {nxt['nodes']} nodes (largest share {nxt['largest_share']}) compute is "
               f"{nxt['compute_s'] * 1e3:.2f} ms vs {best['compute_s'] * 1e3:.2f} ms here, and "
               f"communication {added * 1e3:.2f} ms more: the smaller share does not pay")
    fixed = best["finish_s"] + best["comm_s"]
    why += (f"; at {p} node(s) the finish every rank repeats is {best['finish_s'] * 1e3:.2f} ms "
            f"and communication {best['comm_s'] * 1e3:.2f} ms, "
            f"{100 * fixed / best['step_s']:.0f}% of the step")
    ceiling = rows[0]["step_s"] / best["finish_s"] if best["finish_s"] > 0 else math.inf
    return {"nodes": p, "speedup": best["speedup"], "images_per_s": best["images_per_s"],
            "why": why, "finish_bound_speedup": ceiling}


def build_model(measured: dict, networks: list[dict], max_nodes: int) -> dict:
    """Model curves for every batch size and network (measured intra-node ones included)."""
    header = measured["compute"]["header_bytes"]
    nets = [dict(measured["allgather"]["fit"], name="measured intra-node (shared memory)",
                 assumed=False)] + networks
    out = {"max_nodes": max_nodes, "networks": nets, "batches": []}
    for batch in measured["compute"]["batches"]:
        curves = []
        for net in nets:
            rows = model_rows(batch, net, max_nodes, header)
            curves.append({"network": net["name"], "rows": rows,
                           "stops": where_it_stops(rows, batch)})
        out["batches"].append({"batch": batch["batch"], "unit": batch["unit"],
                               "max_ranks_with_data": max(1, batch["batch"] // batch["unit"]),
                               "one_process_step_s": batch.get("one_process_step_seconds"),
                               "curves": curves})
    return out


# -- measurements -------------------------------------------------------------------------------
def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def compute_probe(args: argparse.Namespace) -> None:
    """In a process of its own (Numba's pool size is fixed at import): see the docstring."""
    from scratchcnn.threads import configure_threads

    configure_threads(args.threads)
    import numpy as np

    from scratchcnn.distributed import _HEADER, sample_unit
    from scratchcnn.loop import train_step, warm_up
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam

    model = reference_cnn(seed=0, backend="parallel")
    loss = SoftmaxCrossEntropy(backend="parallel")
    opt = Adam(model.parameters(), backend="parallel")
    warm_up(model, loss, opt, loader=False)
    rng = np.random.default_rng(0)
    xw = rng.random((32, *INPUT_SHAPE), dtype=np.float32)
    for _ in range(3):  # untimed: caches and the thread pool warm
        train_step(model, loss, opt, xw, rng.integers(0, 10, 32))
    header = _HEADER.itemsize

    def share_pass(xs, ys, n):
        logits = model.forward(xs)
        loss.forward(logits, ys, mean_over=n)
        model.backward(loss.backward())
        pieces = model.gradient_pieces()
        floats = [loss.losses] + [a for d in pieces.values() for a in d.values()]
        blob = np.concatenate([np.zeros(header, np.uint8)] + [
            np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in floats])
        return blob, pieces

    batches = []
    for n in args.batches:
        unit = sample_unit(model, n, INPUT_SHAPE)
        x = rng.random((n, *INPUT_SHAPE), dtype=np.float32)
        y = rng.integers(0, 10, n)
        every, largest = needed_sizes(n, unit, args.max_nodes)
        model.set_group_batch(n)
        sizes = {}
        for size in every:
            times = []
            for i in range(1 + (args.compute_repeats if size in largest else 0)):
                t0 = time.perf_counter()
                blob, pieces = share_pass(x[:size], y[:size], n)
                if i:
                    times.append(time.perf_counter() - t0)
            shapes = {f"{s}/{k}": list(a.shape) for s, d in pieces.items() for k, a in d.items()}
            item = np.dtype(model.dtype).itemsize
            expect = header + item * (size + sum(math.prod(v) for v in shapes.values()))
            assert blob.nbytes == expect, (blob.nbytes, expect)
            sizes[str(size)] = {"bytes": int(blob.nbytes), "piece_shapes": shapes,
                                "seconds": _median(times) if times else None,
                                "all_seconds": times}
        share_pass(x, y, n)  # the whole batch's pieces, as every rank has them after the gather
        whole = {s: {k: a.copy() for k, a in d.items()} for s, d in model.gradient_pieces().items()}
        finish = []
        for i in range(args.compute_repeats + 1):  # the first untimed (compiles/loads kernels)
            t0 = time.perf_counter()
            gathered = {s: {k: np.ascontiguousarray(a.copy()) for k, a in d.items()}
                        for s, d in whole.items()}  # the copy _unpack makes
            model.finish_gradients(gathered)
            opt.step()
            if i:
                finish.append(time.perf_counter() - t0)
        model.set_group_batch(None)
        one = []
        for i in range(args.compute_repeats + 1):
            t0 = time.perf_counter()
            train_step(model, loss, opt, x, y)
            if i:
                one.append(time.perf_counter() - t0)
        batches.append({"batch": n, "unit": unit, "largest_share_sizes": largest,
                        "sizes": sizes, "finish_seconds": _median(finish),
                        "finish_all_seconds": finish,
                        "one_process_step_seconds": _median(one)})
    Path(args.probe_out).write_text(json.dumps(
        {"threads": args.threads, "repeats": args.compute_repeats, "header_bytes": header,
         "batches": batches}, indent=1))


def allgather_probe(args: argparse.Namespace) -> None:
    """Under mpiexec: [bytes, median seconds, best seconds] of Allgatherv with equal blocks
    of each size (each the slowest rank's)."""
    import numpy as np

    from scratchcnn.comm import MPIComm

    comm = MPIComm()
    points = []
    for b in args.block_bytes:
        buf = np.zeros(b, np.uint8)
        counts = [b] * comm.size
        times = []
        for i in range(args.iterations + 3):
            comm._comm.Barrier()
            t0 = time.perf_counter()
            comm.allgatherv(buf, counts)
            if i >= 3:
                times.append(time.perf_counter() - t0)
        worst = comm.allgather_obj((_median(times), min(times)))  # the slowest rank's
        points.append([b, max(w[0] for w in worst), max(w[1] for w in worst)])
    if comm.rank == 0:
        Path(args.probe_out).write_text(json.dumps(
            {"ranks": comm.size, "library": comm.library, "iterations": args.iterations,
             "points": points}))


def _run(cmd: list[str], timeout: float) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if r.returncode:
        sys.exit(f"{PROG}: {shlex.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                 f"{r.stderr[-2000:]}")


def mpiexec() -> str:
    found = (shutil.which("mpiexec", path=str(Path(sys.executable).parent))
             or shutil.which("mpiexec"))
    if not found:
        sys.exit(f"{PROG}: needs mpiexec and mpi4py: pip install -e '.[mpi]'")
    return found


def cli_runs(args: argparse.Namespace, work: Path) -> dict:
    """1 process x T threads vs P processes x T/P threads, one epoch each, alternating."""
    procs, threads = args.procs, args.threads
    common = ["--epochs", "1", "--limit-train", str(args.limit_train), "--limit-test",
              str(args.limit_test), "--batch-size", str(args.cli_batch), "--no-progress"]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    configs = {
        f"1x{threads}": [sys.executable, "-m", "scratchcnn.train", "--threads", str(threads)],
        f"{procs}x{threads // procs}": [mpiexec(), "-n", str(procs), sys.executable, "-m",
                                        "mpi4py", "-m", "scratchcnn.train", "--distributed",
                                        "--threads", str(max(1, threads // procs))],
    }
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.repeats):
        for name, cmd in configs.items():
            out = work / f"{name}-{r}"
            _run([*cmd, *common, "--out", str(out)], timeout=1800)
            row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if line.strip()][-1]
            runs[name].append({"epoch_seconds": row["epoch_seconds"],
                               "comm_seconds": row.get("comm_seconds", 0.0)})
    commands = {k: shlex.join(["python" if a == sys.executable else
                               Path(a).name if a == v[0] else a for a in [*v, *common]])
                for k, v in configs.items()}
    summary = {}
    for name, rows in runs.items():
        ep = [r["epoch_seconds"] for r in rows]
        cm = [r["comm_seconds"] for r in rows]
        summary[name] = {"epoch_seconds": rows, "median_epoch_seconds": _median(ep),
                         "median_comm_seconds": _median(cm),
                         "comm_share": _median([c / e for c, e in zip(cm, ep)]),
                         "command": commands[name]}
    one, many = summary[f"1x{threads}"], summary[f"{procs}x{threads // procs}"]
    steps = math.ceil(args.limit_train / args.cli_batch)
    return {"configurations": summary, "steps_per_epoch": steps,
            "batch": args.cli_batch, "limit_train": args.limit_train,
            "ratio": many["median_epoch_seconds"] / one["median_epoch_seconds"],
            "ratio_names": [f"{procs}x{threads // procs}", f"1x{threads}"]}


def measure(args: argparse.Namespace) -> dict:
    from common import machine_summary

    from scratchcnn.runinfo import blas_kernels

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        work = Path(tmp)
        cli = cli_runs(args, work)
        probe = work / "compute.json"
        _run([sys.executable, __file__, "--compute-probe", "--probe-out", str(probe),
              "--threads", str(args.threads), "--compute-repeats", str(args.compute_repeats),
              "--max-nodes", str(args.max_nodes),
              "--batches", *map(str, args.batches)], timeout=3600)
        compute = json.loads(probe.read_text())
        biggest = max(s["bytes"] for b in compute["batches"] for s in b["sizes"].values())
        blocks = sorted({int(v) for v in _geometric(16, 2 * biggest, args.comm_points)}
                        | {_cli_block(compute, cli["batch"], args.procs)} - {0})
        ag = work / "allgather.json"
        _run([mpiexec(), "-n", "2", sys.executable, __file__, "--allgather-probe",
              "--probe-out", str(ag), "--iterations", str(args.comm_iterations),
              "--block-bytes", *map(str, blocks)], timeout=1800)
        allgather = json.loads(ag.read_text())
    alpha, beta = fit_alpha_beta([(p[0], p[1]) for p in allgather["points"]])
    allgather["fit"] = {"alpha_s": alpha, "beta_s_per_byte": beta}
    allgather["model"] = "t = alpha + b * beta (2 ranks, equal blocks of b bytes)"
    pred = alpha + beta * _cli_block(compute, cli["batch"], args.procs)
    cli["predicted_comm_seconds_per_step"] = pred
    name = cli["ratio_names"][0]
    cli["measured_comm_seconds_per_step"] = (cli["configurations"][name]["median_comm_seconds"]
                                             / cli["steps_per_epoch"])
    return {"machine": {**machine_summary(), "blas_kernels": blas_kernels(),
                        "load_average_1min": [load_before, os.getloadavg()[0]]},
            "cli": cli, "compute": compute, "allgather": allgather}


def _cli_block(compute: dict, batch: int, procs: int) -> int:
    """Largest block a rank sends in the CLI's P-process run (0 if that batch wasn't probed)."""
    for b in compute["batches"]:
        if b["batch"] == batch:
            return max(block_bytes(b["sizes"], v, compute["header_bytes"])
                       for v in share_sizes(batch, b["unit"], procs))
    return 0


def _geometric(lo: float, hi: float, k: int) -> list[float]:
    return [lo * (hi / lo) ** (i / max(1, k - 1)) for i in range(k)]


# -- report -------------------------------------------------------------------------------------
def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def markdown(measured: dict, model: dict, command: str) -> str:
    m, cli, ag = measured["machine"], measured["cli"], measured["allgather"]
    one, many = cli["ratio_names"][1], cli["ratio_names"][0]
    c1, cp = cli["configurations"][one], cli["configurations"][many]
    fit = ag["fit"]
    lines = [
        f"Scaling benchmark: `{command}`. Machine: {m['cpu_model']}, {m['cpu_count']} cores, "
        f"BLAS {', '.join(m['blas_kernels'])}, Python {m['python']}, NumPy {m['numpy']}, "
        f"Numba {m['numba']} (threading layer {m['threading_layer']}), MPI: {ag['library']}. "
        "Numbers measured on a machine shared with other work (1-minute load average "
        f"{m['load_average_1min'][0]:.1f} at start, {m['load_average_1min'][1]:.1f} at the end): "
        "provisional.",
        "",
        f"**Speed on one node** (one epoch of {cli['limit_train']} CIFAR-10 training images, "
        f"batch {cli['batch']}, median of {len(c1['epoch_seconds'])} runs each, alternating):",
        "",
        "| configuration | command | epoch s (median) | comm s (median) | comm share |",
        "|---|---|---:|---:|---:|",
    ]
    for name, c in ((one, c1), (many, cp)):
        lines.append(f"| {name.replace('x', ' process(es) × ', 1)} thread(s) | `{c['command']}` "
                     f"| {c['median_epoch_seconds']:.2f} | {c['median_comm_seconds']:.2f} "
                     f"| {100 * c['comm_share']:.1f}% |")
    lines += [
        "",
        f"Ratio {many} / {one} (epoch time): **{cli['ratio']:.2f}×** (target: within 1.3×). "
        f"Communication per step in the {many} run: {_ms(cli['measured_comm_seconds_per_step'])} "
        f"ms measured (includes waiting for the slower rank) vs "
        f"{_ms(cli['predicted_comm_seconds_per_step'])} ms from the alpha-beta fit.",
        "",
        "**The model.** Per step of global batch N on P nodes (one rank per node, "
        f"{measured['compute']['threads']} threads each): step = compute(largest share) + "
        "finish(N) + (P − 1)·(α + b_max·β), 0 communication on one node. compute: forward, "
        "loss, backward and packing the gradient pieces of the largest share, with the global "
        "batch's sample groups (measured here, median of "
        f"{measured['compute']['repeats']}); finish: `Sequential.finish_gradients` on the whole "
        "batch's pieces + Adam, which every rank repeats (measured here); b_max: the largest "
        "block a rank sends, from the actual piece shapes; (P − 1)·(α + b_max·β): a ring "
        "Allgatherv, P − 1 steps each as slow as the largest block. At most N // U ranks hold "
        "data; more nodes only add communication. Compute is taken from this machine's cores: "
        "a node is assumed to be this machine.",
        "",
        "**α, β:** measured intra-node (shared memory, `mpiexec -n 2`, Allgatherv of equal "
        f"blocks, {len(ag['points'])} sizes, fit of t = α + b·β on relative error): "
        f"α = {fit['alpha_s'] * 1e6:.1f} µs, 1/β = {1 / fit['beta_s_per_byte'] / 1e9:.2f} GB/s"
        if fit["beta_s_per_byte"] > 0 else "**α, β:** β fitted as 0",
    ]
    for net in model["networks"]:
        if net["assumed"]:
            lines.append(f"- **assumed** {net['name']}: α = {net['alpha_s'] * 1e6:g} µs, "
                         f"1/β = {8 / net['beta_s_per_byte'] / 1e9:g} Gbit/s "
                         f"(a flag: `--network NAME=ALPHA_US,GBIT_PER_S`; not measured)")
    lines.append("")
    show = [p for p in (1, 2, 4, 8, 16, 32, 64) if p <= model["max_nodes"]]
    for b in model["batches"]:
        n = b["batch"]
        first = b["curves"][0]["rows"]
        lines += [f"#### Global batch {n} (U = {b['unit']}: at most {b['max_ranks_with_data']} "
                  f"ranks hold data)", ""]
        head = ["nodes", "ranks with data", "largest share", "compute ms", "finish ms",
                "largest block KB"] + [f"{c['network']}: step ms (speedup)" for c in b["curves"]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for p in show:
            r = first[p - 1]
            cells = [str(p), str(r["ranks_with_data"]), str(r["largest_share"]),
                     _ms(r["compute_s"]), _ms(r["finish_s"]),
                     f"{r['largest_block_bytes'] / 1024:.0f}"]
            cells += [f"{_ms(c['rows'][p - 1]['step_s'])} ({c['rows'][p - 1]['speedup']:.2f}×)"
                      for c in b["curves"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for c in b["curves"]:
            s = c["stops"]
            lines.append(f"- {c['network']}: fastest at **{s['nodes']} node(s)**, "
                         f"{s['speedup']:.2f}× one node ({s['images_per_s']:.0f} images/s): "
                         f"{s['why']}. The finish alone bounds the speedup at "
                         f"{s['finish_bound_speedup']:.1f}×.")
        lines.append("")
    lines += ["The plot of these curves is `scaling.png`, next to this file. `scaling.json` "
              "holds every run's time (CLI epochs, each compute and finish repeat, the median "
              "and best Allgatherv time per block size) for judging the noise.", ""]
    return "\n".join(lines)


def plot(model: dict, path: Path) -> None:
    from scratchcnn.plots import plt, save_figure

    batches = model["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for c in b["curves"]:
            rows = c["rows"]
            ax.plot([r["nodes"] for r in rows], [r["images_per_s"] for r in rows],
                    label=c["network"], linestyle="-" if c is b["curves"][0] else "--")
        ax.axvline(b["max_ranks_with_data"], color="grey", linewidth=0.8, linestyle=":",
                   label=f"N // U = {b['max_ranks_with_data']} ranks hold data")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("nodes")
        ax.set_ylabel("modelled images / s")
        ax.set_title(f"global batch {b['batch']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_reports(measured: dict, networks: list[dict], max_nodes: int, out: Path,
                  command: str) -> dict:
    model = build_model(measured, networks, max_nodes)
    report = {"command": command, **measured, "model": model}
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(measured, model, command)
    (out / "scaling.md").write_text(text)
    plot(model, out / "scaling.png")
    print(text)
    return report


# -- command line -------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "scaling"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads of one node (the 1-process run and the compute probe)")
    p.add_argument("--procs", type=int, default=2, help="processes of the P x T/P run")
    p.add_argument("--limit-train", type=int, default=4096)
    p.add_argument("--limit-test", type=int, default=500)
    p.add_argument("--cli-batch", type=int, default=32, help="batch of the CLI runs")
    p.add_argument("--repeats", type=int, default=3, help="CLI runs per configuration")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256, 1024],
                   help="global batch sizes of the model")
    p.add_argument("--max-nodes", type=int, default=64)
    p.add_argument("--compute-repeats", type=int, default=5)
    p.add_argument("--comm-points", type=int, default=12)
    p.add_argument("--comm-iterations", type=int, default=50)
    p.add_argument("--network", type=parse_network, action="append", default=None,
                   help=f"assumed inter-node link (repeatable); default {DEFAULT_NETWORKS}")
    p.add_argument("--data-dir", default=None, help="passed to the CLI runs")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test (numbers meaningless)")
    p.add_argument("--from-json", default=None,
                   help="redraw the model from a stored scaling.json (no measuring)")
    # internal: the probes, run as subprocesses
    p.add_argument("--compute-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allgather-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe-out", help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, default=50, help=argparse.SUPPRESS)
    p.add_argument("--block-bytes", type=int, nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.limit_train, a.limit_test, a.repeats = 128, 50, 1
        a.batches, a.max_nodes, a.compute_repeats = [32, 64], 8, 1
        a.comm_points, a.comm_iterations = 4, 5
    if a.network is None:
        a.network = [parse_network(t) for t in DEFAULT_NETWORKS]
    if a.threads < a.procs:
        p.error(f"--threads {a.threads} < --procs {a.procs}")
    return a


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.compute_probe:
        return compute_probe(args)
    if args.allgather_probe:
        return allgather_probe(args)
    command = " ".join([PROG, shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    if args.from_json:
        measured = json.loads(Path(args.from_json).read_text())
        command = measured["command"]
    else:
        measured = measure(args)
    write_reports(measured, args.network, args.max_nodes, Path(args.out), command)


if __name__ == "__main__":
    main()
