"""Start-up time: cold and warm Numba cache, per kernel, and the CLI's time to its first batch.

    python bench/startup.py                          # parallel backend, the default steps
    python bench/startup.py --backend serial --steps cold-inline

Each step runs in a fresh process, one at a time, with its own ``NUMBA_CACHE_DIR``
(a new temporary folder for a cold step; the folder of the cold step before it for a
warm one):

* ``cold-inline``: ``loop.warm_up`` compiling in-process, one kernel after another
  (the behaviour before ``scratchcnn.warmup``), with Numba's compile events
  (``numba.core.event`` "numba:compile") recorded: per function, seconds including
  the helpers it compiled and seconds of its own.
* ``cold-jobs``: ``scratchcnn.warmup.compile_missing`` (the kernels one step uses,
  compiled in ``--jobs`` processes), then ``loop.warm_up`` loading them.
* ``warm``: ``loop.warm_up`` with the cache the step before filled.
* ``cli-cold`` / ``cli-warm``: ``python -m scratchcnn.train`` on a few images with
  a cold / the just-filled cache; reports its "first batch N s after launch" line,
  i.e. launch to first batch, data loading and imports included.
* ``cli-cold-serial-first``: ``cli-cold`` with ``--cold-start serial-first`` (the serial
  kernels compiled first, the parallel ones in the background); its process time is
  when the parallel kernels were ready (the run waits for them at its end).

Writes startup.json and startup.md to ``--out`` (default bench/results/startup/,
gitignored; the committed copy was written with ``--out docs/results/startup``),
with the load average at the start of every step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROG = "python bench/startup.py"
DEFAULT_OUT = HERE / "results" / "startup"  # gitignored
STEPS = ("cold-inline", "warm", "cold-jobs", "warm", "cli-cold", "cli-warm",
         "cli-cold-serial-first")
COLD = ("cold-inline", "cold-jobs", "cli-cold", "cli-cold-serial-first")


def child(mode: str, backend: str, threads: int, jobs: int | None = None) -> dict:
    """In a fresh process: one measured step (not cli-*)."""
    t_launch = time.perf_counter()
    from scratchcnn.threads import configure_threads

    configure_threads(threads)
    from numba.core import event

    listener = event.RecordingListener()
    event.register("numba:compile", listener)
    from scratchcnn.loop import warm_up
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam

    t_import = time.perf_counter() - t_launch
    out: dict = {"mode": mode, "import_seconds": t_import}
    t0 = time.perf_counter()
    if mode == "cold-jobs":
        from scratchcnn.warmup import compile_missing

        r = compile_missing(backend, jobs, progress=False)
        out["compile"] = {k: r[k] for k in ("kernels", "missing", "jobs", "seconds")}
        out["per_kernel_in_worker"] = r["per_kernel"]
    t1 = time.perf_counter()
    model = reference_cnn(seed=0, backend=backend)
    loss = SoftmaxCrossEntropy(backend=backend)
    warm_up(model, loss, Adam(model.parameters(), backend=backend))
    out["warm_up_seconds"] = time.perf_counter() - t1
    out["seconds"] = time.perf_counter() - t0
    # compile events: nested START/END pairs; incl = end - start, own = incl - children
    stack, per = [], {}
    for ts, ev in listener.buffer:
        name = getattr(ev.data.get("dispatcher"), "py_func", None)
        name = name.__name__ if name is not None else "?"
        if ev.is_start:
            stack.append([name, ts, 0.0])
        else:
            fname, start, children = stack.pop()
            incl = ts - start
            rec = per.setdefault(fname, {"incl": 0.0, "own": 0.0, "count": 0})
            rec["incl"] += incl
            rec["own"] += incl - children
            rec["count"] += 1
            if stack:
                stack[-1][2] += incl
    out["per_function"] = dict(sorted(per.items(), key=lambda kv: -kv[1]["incl"]))
    return out


def run_cli(backend: str, threads: int, env: dict, data_dir: str, *flags: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "scratchcnn.train", "--backend", backend, "--threads",
               str(threads), "--epochs", "1", "--limit-train", "64", "--limit-test", "64",
               "--no-progress", "--data-dir", data_dir, "--out", str(Path(tmp) / "run"),
               *flags]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    m = re.search(r"first batch ([0-9.]+) s after launch", r.stdout)
    return {"first_batch_seconds": float(m.group(1)) if m else None, "process_seconds": wall,
            "stdout": r.stdout.splitlines()[:6]}


def render(rep: dict) -> str:
    lines = ["# Start-up: cold and warm Numba cache", "",
             f"Command: `{rep['command']}`  ",
             f"Started {rep['started']} on {rep['cpu_model']} ({rep['cpu_count']} logical "
             f"cores), backend {rep['backend']}, {rep['threads']} thread(s)."
             + (" Machine speed: float32 GEMM on 1 thread {:.0f} GFLOP/s before the steps, "
                "{:.0f} after (a shared machine: compare runs only at similar speeds)."
                .format(*rep["gemm_1thread_gflops"]) if "gemm_1thread_gflops" in rep else ""),
             "",
             "| step | seconds | load average at start | notes |", "|---|---:|---:|---|"]
    for s in rep["steps"]:
        if s["mode"].startswith("cli"):
            note = f"launch to first batch; process {s['process_seconds']:.1f} s"
            if s["mode"].endswith("serial-first"):
                note += (" (trains 2 batches on the serial kernels, then waits for the "
                         "parallel ones' background compile)")
            secs = s["first_batch_seconds"]
        else:
            note = f"imports {s['import_seconds']:.1f} s before"
            if "compile" in s:
                c = s["compile"]
                note += (f"; {c['missing']}/{c['kernels']} kernels compiled in {c['jobs']} "
                         f"processes {c['seconds']:.1f} s, then warm-up "
                         f"{s['warm_up_seconds']:.1f} s")
            secs = s["seconds"]
        lines.append(f"| {s['mode']} | {secs:.1f} | {s['loadavg'][0]:.2f} | {note} |")
    cold = next((s for s in rep["steps"] if s["mode"] == "cold-inline"), None)
    if cold:
        lines += ["", "Compile time per function, cold, in-process (Numba compile events; "
                      "incl. = with the helpers it compiled):", "",
                  "| function | incl. s | own s | compiles |", "|---|---:|---:|---:|"]
        for name, r in cold["per_function"].items():
            lines.append(f"| {name} | {r['incl']:.2f} | {r['own']:.2f} | {r['count']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["serial", "parallel"], default="parallel")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", nargs="+", choices=sorted(set(STEPS)), default=list(STEPS))
    p.add_argument("--jobs", type=int, default=None,
                   help="cold-jobs: compile processes (default: scratchcnn.warmup's choice, "
                        "the cores the load average leaves free)")
    p.add_argument("--data-dir", default=os.environ.get("SCRATCHCNN_DATA", "./data"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.backend, args.threads, args.jobs)))
        return 0
    from common import gemm_peak

    from scratchcnn.runinfo import cpu_model

    peak_before = gemm_peak()["one_thread_gflops"]  # how fast the (shared) machine is now
    rep = {"command": " ".join([PROG, *map(shlex.quote, argv)]),
           "started": datetime.now().isoformat(timespec="seconds"), "cpu_model": cpu_model(),
           "cpu_count": os.cpu_count(), "backend": args.backend, "threads": args.threads,
           "steps": []}
    with tempfile.TemporaryDirectory(prefix="startup-cache-") as tmp:
        cache = None
        for i, mode in enumerate(args.steps):
            if mode in COLD or cache is None:
                cache = str(Path(tmp) / f"cache{i}")
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            load = os.getloadavg()
            print(f"{mode} ...", file=sys.stderr, flush=True)
            if mode.startswith("cli"):
                flags = ["--cold-start", "serial-first"] if mode.endswith("serial-first") else []
                step = {"mode": mode, **run_cli(args.backend, args.threads, env, args.data_dir,
                                                *flags)}
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--backend", args.backend,
                       "--threads", str(args.threads), "--child", mode]
                if args.jobs:
                    cmd += ["--jobs", str(args.jobs)]
                r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
                if r.returncode != 0:
                    sys.exit(f"{PROG}: error: step {mode} failed")
                step = json.loads(r.stdout.strip().splitlines()[-1])
            step["loadavg"] = load
            rep["steps"].append(step)
            secs = step.get("first_batch_seconds") or step.get("seconds")
            print(f"  {mode}: {secs:.1f} s (load {load[0]:.2f})", file=sys.stderr, flush=True)
    from common import write_report

    rep["gemm_1thread_gflops"] = [peak_before, gemm_peak()["one_thread_gflops"]]
    write_report(args.out, "startup", rep, render(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
