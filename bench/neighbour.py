"""Training speed next to a busy neighbour: each configuration quiet, then with one core taken.

    python bench/neighbour.py                          # full epochs, the default grid
    python bench/neighbour.py --limit-train 2000 --epochs 1     # quick look
    python bench/neighbour.py --configs serial parallel@2 'parallel@2:GOMP_SPINCOUNT=10000'

A *configuration* is ``serial``, ``parallel@N``, ``torch@N`` or ``cli`` (the
parallel backend with exactly what ``python -m scratchcnn.train`` does by
default: ``scratchcnn.threads.configure_threads`` with the CLI's default
thread count and its threading defaults, the thread governor, and the loader
threads of ``--loader-threads auto``; the other configurations use
``--loader-threads``), optionally followed by
``:VAR=VALUE,VAR=VALUE`` environment settings applied before Numba (and
libgomp) load, e.g. ``parallel@2:OMP_WAIT_POLICY=passive``.

Every configuration lives in a child process of its own, set up once
(thread-pool sizes, wait policies and threading layers are fixed when the
libraries load; PyTorch and Numba each bring an OpenMP runtime, and a torch
configuration's process never starts Numba's thread pool, which made torch@2
2x slower next to it): the same
model from the same seed, the same ``BatchLoader`` batches (the network of
``bench/harness.py``), warmed up (JIT, not timed). Then, ``--rounds`` times,
each configuration in turn (the order rotates every round, so that a change in
the machine's load hits every configuration alike) trains ``--epochs`` epochs
quiet, then ``--epochs`` epochs busy: a neighbour process (``python -c 'while
True: pass'``, unpinned, normal priority: what another user's job looks like)
runs for exactly those epochs. Before every quiet phase the machine is left
idle for ``--settle`` seconds: "quiet" means a machine that has been quiet a
moment, not one where the previous configuration's neighbour or epoch ended a
millisecond ago (the ``cli`` governor would still be counting that as a
neighbour; its reaction time to a *new* neighbour is measured by the busy
phases, which start timing as soon as the neighbour runs). The neighbour is
measured: its CPU seconds (``os.wait4`` rusage) over the phase's wall time = the share of a core it
really got. Only the training loop is timed (as ``scratchcnn.train`` does);
the idle children wait on a pipe. The load average is recorded at the start
of every phase; ``cli`` phases list the governor's thread-count changes.

Writes neighbour.json and neighbour.md to ``--out`` (default
bench/results/neighbour/, gitignored; the committed copy was written with
``--out docs/results/neighbour``). One epoch runs at a time, never two at once.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PROG = "python bench/neighbour.py"
DEFAULT_OUT = HERE / "results" / "neighbour"  # gitignored
DEFAULT_CONFIGS = ["serial", "cli", "parallel@2", "parallel@2:OMP_WAIT_POLICY=passive",
                   "torch@1", "torch@2"]
NEIGHBOUR = [sys.executable, "-c", "while True: pass"]


def parse_config(text: str) -> tuple[str, int | None, dict[str, str]]:
    """``'parallel@2:A=1,B=x'`` -> ("parallel", 2, {"A": "1", "B": "x"})."""
    head, _, env_text = text.partition(":")
    kind, _, n = head.partition("@")
    if kind not in ("serial", "parallel", "torch", "cli"):
        raise argparse.ArgumentTypeError(f"unknown configuration {text!r}")
    if kind in ("parallel", "torch") and not n.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a thread count, e.g. {kind}@2")
    env = {}
    for item in filter(None, env_text.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"{text!r}: expected VAR=VALUE, got {item!r}")
        env[k] = v
    return kind, int(n) if n else None, env


def build_parser() -> argparse.ArgumentParser:
    from scratchcnn.train import int_at_least

    pos = int_at_least(1)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    p.add_argument("--data-dir", default=os.environ.get("SCRATCHCNN_DATA", "./data"))
    p.add_argument("--limit-train", type=pos, default=None, help="default: all 50,000")
    p.add_argument("--epochs", type=pos, default=1, help="epochs per phase")
    p.add_argument("--rounds", type=pos, default=2, help="quiet+busy phase pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=pos, default=32)
    p.add_argument("--loader-threads", type=int_at_least(0), default=2)
    p.add_argument("--prefetch", type=pos, default=4)
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds of nothing before each quiet phase (see the docstring)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


# -- the child: one configuration ---------------------------------------------------------


def _start_neighbour() -> subprocess.Popen:
    return subprocess.Popen(NEIGHBOUR)


def _stop_neighbour(proc: subprocess.Popen, wall: float) -> dict:
    proc.kill()
    _, _, ru = os.wait4(proc.pid, 0)
    proc.returncode = -9
    cpu = ru.ru_utime + ru.ru_stime
    return {"cpu_seconds": cpu, "core_share": cpu / wall if wall > 0 else 0.0}


def worker(args, config: str) -> None:
    """Child: set up one configuration, then train one epoch per line read from stdin
    ("epoch N"), answering one JSON line each; "info" answers the set-up facts."""
    kind, n, env = parse_config(config)
    os.environ.update(env)
    from scratchcnn.threads import adapt_threads, configure_threads, default_threads

    threads = default_threads() if kind == "cli" else (n or 1)
    if kind != "torch":
        # Not for torch: numba.set_num_threads starts Numba's OpenMP runtime, and next to
        # it PyTorch's own made torch@2 2x slower (5.2 vs 2.6 s on 8,192 images, torch@1
        # unchanged) -- as bench/torch_ref.py's TorchProcessRun says for compare.py.
        configure_threads(threads if kind != "serial" else 1)
    governor = adapt_threads(threads, "parallel") if kind == "cli" else None  # as main()
    import numba
    from compare import load_data
    from harness import ScratchRun, warm_up_backend, warm_up_loader

    from scratchcnn.data.loader import BatchLoader

    train_x, train_y, _, _ = load_data(args.data_dir, args.limit_train, 1)
    loader_threads = args.loader_threads
    if kind == "cli":  # the CLI's default --loader-threads auto
        from scratchcnn.threads import auto_loader_threads

        loader_threads = auto_loader_threads("parallel", threads)
    loader = BatchLoader(train_x, train_y, args.batch_size, shuffle=True, seed=args.seed,
                         threads=loader_threads, prefetch=args.prefetch)
    warm_up_loader()
    if kind == "torch":
        from torch_ref import TorchRun, warm_up_torch

        warm_up_torch(n)
        run = TorchRun(n, args.seed)
    else:
        backend = "serial" if kind == "serial" else "parallel"
        warm_up_backend(backend)
        run = ScratchRun(backend, threads, args.seed)
        if kind == "cli":  # the CLI sets nothing per epoch: the governor owns the count
            run._use_threads = lambda: None
    layer = None
    if kind != "torch":
        try:
            layer = numba.threading_layer()
        except ValueError:
            layer = None
    info = {"config": config, "kind": kind, "threads": threads if kind != "serial" else 1,
            "loader_threads": loader_threads, "env": env, "threading_layer": layer,
            "thread_env": {k: os.environ.get(k) for k in (
                "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER",
                "NUMBA_NUM_THREADS")}}
    out = sys.stdout
    sys.stdout = sys.stderr  # only answers on the pipe
    n_changes = 0
    with loader:
        print(json.dumps(info), file=out, flush=True)
        for line in sys.stdin:
            cmd, *rest = line.split()
            if cmd == "stop":
                break
            epoch = int(rest[0])
            seconds = run.train_epoch(loader, epoch).seconds
            answer = {"seconds": seconds}
            if governor is not None:
                answer["thread_changes"] = governor.changes[n_changes:]
                n_changes = len(governor.changes)
            print(json.dumps(answer), file=out, flush=True)


# -- the parent -------------------------------------------------------------------------


def _median(v: list[float]) -> float:
    s = sorted(v)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        quiet = [t for p in row["phases"] if not p["busy"] for t in p["epoch_seconds"]]
        busy = [t for p in row["phases"] if p["busy"] for t in p["epoch_seconds"]]
        share = [p["core_share"] for p in row["phases"] if p["busy"]]
        out.append({"config": row["config"], "quiet_median": _median(quiet),
                    "quiet": quiet, "busy_median": _median(busy), "busy": busy,
                    "slowdown": _median(busy) / _median(quiet),
                    "neighbour_core_share": _median(share)})
    by = {s["config"]: s for s in out}
    serial = by.get("serial")
    for s in out:
        if serial:
            s["busy_vs_serial_busy"] = s["busy_median"] / serial["busy_median"]
        par2 = by.get("parallel@2")
        if par2:
            s["quiet_vs_parallel2_quiet"] = s["quiet_median"] / par2["quiet_median"]
        torch2 = by.get("torch@2")
        if torch2:
            s["busy_vs_torch2_busy"] = s["busy_median"] / torch2["busy_median"]
    return out


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Epoch time next to a busy neighbour", "",
        f"Command: `{report['command']}`  ",
        f"Started {report['started']} on {m['cpu_model']} ({m['cpu_count']} logical cores); "
        f"load average at start {m['loadavg_start'][0]:.2f} / {m['loadavg_start'][1]:.2f} / "
        f"{m['loadavg_start'][2]:.2f}, at end {m['loadavg_end'][0]:.2f}.  ",
        f"{report['settings']['train_images']} training images per epoch, "
        f"{report['settings']['epochs']} epoch(s) per phase, {report['settings']['rounds']} "
        "quiet/busy rounds. Neighbour: `python -c 'while True: pass'`, unpinned; "
        f"{report['settings'].get('settle', 0):g} s idle before each quiet phase.", "",
        "| configuration | quiet s (median) | busy s (median) | busy / quiet | "
        "busy / serial busy | busy / torch@2 busy | quiet / parallel@2 quiet | "
        "neighbour got (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["summary"]:
        def r(key, s=s):
            return f"{s[key]:.2f}" if key in s else "-"
        lines.append(f"| `{s['config']}` | {s['quiet_median']:.2f} | {s['busy_median']:.2f} | "
                     f"{s['slowdown']:.2f} | {r('busy_vs_serial_busy')} | "
                     f"{r('busy_vs_torch2_busy')} | {r('quiet_vs_parallel2_quiet')} | "
                     f"{s['neighbour_core_share']:.2f} |")
    lines += ["", "All epoch times (s), in phase order:", ""]
    for row in report["configurations"]:
        ph = "; ".join(f"{'busy' if p['busy'] else 'quiet'} "
                       f"{'/'.join(f'{t:.2f}' for t in p['epoch_seconds'])} "
                       f"(load {p['loadavg'][0]:.2f})" for p in row["phases"])
        lines.append(f"- `{row['config']}` ({row['threading_layer'] or 'torch'}): {ph}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(args, args.worker)
        return 0
    for c in args.configs:
        parse_config(c)
    from scratchcnn.runinfo import cpu_model

    started = datetime.now().isoformat(timespec="seconds")
    load_start = os.getloadavg()
    rows = []
    passthrough, skip = [], False  # the flags, less --configs and its values
    for a in argv:
        if a == "--configs":
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        passthrough.append(a)
    workers = {}
    try:
        for c in args.configs:  # set up one at a time (warm-ups are not timed)
            print(f"setting up {c} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough, "--worker", c]
            w = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            workers[c] = w
            line = w.stdout.readline()
            if not line:
                sys.exit(f"{PROG}: error: configuration {c} failed to start")
            rows.append({**json.loads(line), "phases": []})
        epoch = 0
        for r in range(args.rounds):
            # rotate the order every round; quiet then busy for each configuration
            order = rows[r % len(rows):] + rows[:r % len(rows)]
            for row in order:
                w = workers[row["config"]]
                for busy in (False, True):
                    if not busy:
                        time.sleep(args.settle)
                    load = os.getloadavg()
                    nb = _start_neighbour() if busy else None
                    if nb:
                        time.sleep(0.2)  # let it get scheduled
                    t0 = time.perf_counter()
                    times, changes = [], []
                    for _ in range(args.epochs):
                        epoch += 1
                        w.stdin.write(f"epoch {epoch}\n")
                        w.stdin.flush()
                        line = w.stdout.readline()
                        if not line:
                            sys.exit(f"{PROG}: error: configuration {row['config']} died")
                        ans = json.loads(line)
                        times.append(ans["seconds"])
                        changes += ans.get("thread_changes", [])
                    extra = _stop_neighbour(nb, time.perf_counter() - t0 + 0.2) if nb else {}
                    if row["kind"] == "cli":
                        extra["thread_changes"] = changes
                    row["phases"].append({"round": r, "busy": busy, "epoch_seconds": times,
                                          "loadavg": load, **extra})
                    print(f"  {row['config']}: round {r} {'busy ' if busy else 'quiet'} "
                          f"{', '.join(f'{t:.2f}' for t in times)} s  load {load[0]:.2f}"
                          + (f"  neighbour {extra['core_share']:.2f} core" if busy else "")
                          + (f"  threads {changes}" if changes else ""),
                          file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            if w.poll() is None:
                try:
                    w.stdin.write("stop\n")
                    w.stdin.flush()
                except OSError:
                    pass
                try:
                    w.wait(60)
                except subprocess.TimeoutExpired:
                    w.kill()
    n_train = args.limit_train or 50_000
    report = {
        "command": " ".join([PROG, *map(shlex.quote, argv)]), "started": started,
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "settings": {"train_images": min(n_train, 50_000), "epochs": args.epochs,
                     "rounds": args.rounds, "batch_size": args.batch_size,
                     "loader_threads": args.loader_threads, "seed": args.seed,
                     "settle": args.settle},
        "configurations": rows, "summary": summarize(rows),
    }
    from common import write_report

    write_report(args.out, "neighbour", report, render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
