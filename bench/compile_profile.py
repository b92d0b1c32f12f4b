"""Where one kernel's cold compile goes: Numba's passes, LLVM, and LLVM's optimization level.

    python bench/compile_profile.py                       # conv2 forward, parallel backend
    python bench/compile_profile.py --backend serial --opt 3

For each ``--opt`` level (``NUMBA_OPT``, LLVM's optimization level; Numba's
default is 3) a fresh process with an empty ``NUMBA_CACHE_DIR`` compiles the
convolution forward kernel at conv2's shapes (the fast kernel of the plan,
``conv2d_forward``, with every helper it calls), and reports:

* the wall time of the first call (compile + one run);
* Numba's own per-pass times of the kernel's pipeline (``get_metadata(sig)
  ["pipeline_times"]``): type inference includes compiling the helpers the
  kernel calls; "native_parfor_lowering" includes compiling each ``prange``
  body as a function of its own;
* the seconds spent inside LLVM (every call through llvmlite's FFI, from a
  cProfile of the compile), i.e. optimization and machine-code generation.

What it answers: whether a lower LLVM optimization level would buy a faster
cold start (the machine code, and so the epoch, would change with it), and
how a cold compile splits between Numba's Python-side passes and LLVM.
Writes nothing; prints a Markdown table. Run it on a quiet machine.

``--step`` measures a whole training step instead, and what a compiler setting
costs at run time:

    python bench/compile_profile.py --step --repeats 3 --variant "" --variant NUMBA_OPT=2
    python bench/compile_profile.py --step --variant "" \\
        --variant "NUMBA_LOOP_VECTORIZE=0 NUMBA_SLP_VECTORIZE=0"

Each variant (environment variables for the child; "" = as installed) runs in
a fresh process with an empty ``NUMBA_CACHE_DIR``: it compiles every kernel of
one training step of the reference network on one backend, in that process
(``loop.warm_up``, loader kernels excluded), then times ``--steps`` (30) training
steps on a fixed random batch and fingerprints the weights after them; a second
fresh process then loads the kernels from the cache the first one wrote (as a
training run after the compile workers does) and times the same steps ("warm
step": the speed of the machine code a variant writes to the cache). Variants are
interleaved repeat by repeat, because a cold compile on a shared machine
varies by 20% from one run to the next. The table: compile wall and CPU
seconds (median, min-max), the step's median time, and whether the weights
are bit-for-bit those of the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

PROG = "python bench/compile_profile.py"


def child(backend: str) -> dict:
    """In a fresh process: compile and call conv2's forward kernel once; the numbers."""
    import cProfile
    import pstats
    import time

    import numpy as np

    from scratchcnn.kernels import get_backend

    k = get_backend(backend)
    x = np.zeros((32, 32, 15, 15), np.float32)
    w = np.zeros((64, 32, 3, 3), np.float32)
    b = np.zeros(64, np.float32)
    plan = k.conv2d_plan(x.shape, w.shape, (1, 1), (0, 0), np.float32)
    out = np.empty(plan.out_shape, np.float32)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    plan.forward(x, w, b, out)
    prof.disable()
    wall = time.perf_counter() - t0
    llvm = sum(st[2] for fn, st in pstats.Stats(prof).stats.items()  # own time of FFI calls
               if fn[0].endswith(os.path.join("llvmlite", "binding", "ffi.py"))
               and fn[2] == "__call__")
    disp = k.conv2d_forward
    passes: dict[str, float] = {}
    for sig in disp.signatures:
        for pipeline in disp.get_metadata(sig).get("pipeline_times", {}).values():
            for name, t in pipeline.items():
                key = name.split("_", 1)[1]  # "17_nopython_type_inference" -> the name
                passes[key] = passes.get(key, 0.0) + t.run
    return {"wall_seconds": wall, "llvm_ffi_seconds": llvm, "passes": passes}


def step_child(backend: str, steps: int = 30) -> dict:
    """In a fresh process: compile one training step cold, then time ``steps`` steps."""
    import hashlib
    import time

    import numpy as np

    from scratchcnn.lazy_llvm import enable_from_env

    enable_from_env(default=False)  # the variant SCRATCHCNN_LAZY_LLVM=1 measures it
    from scratchcnn.loop import train_step, warm_up
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import Adam

    model = reference_cnn(seed=0, backend=backend)
    loss = SoftmaxCrossEntropy(backend=backend)
    opt = Adam(model.parameters(), backend=backend)
    w0, c0 = time.perf_counter(), time.process_time()
    warm_up(model, loss, opt, loader=False)
    compile_wall, compile_cpu = time.perf_counter() - w0, time.process_time() - c0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, loss, opt, x, y)
        times.append(time.perf_counter() - t0)
    digest = hashlib.sha256(b"".join(p.value.tobytes() for p in model.parameters()))
    return {"compile_wall": compile_wall, "compile_cpu": compile_cpu,
            "step_ms": 1e3 * float(np.median(times)), "weights_sha256": digest.hexdigest()}


def _env_of(variant: str) -> dict[str, str]:
    """``"A=1 B=2"`` -> ``{"A": "1", "B": "2"}``; a one-line error for anything else."""
    env = {}
    for item in variant.split():
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise SystemExit(f"{PROG}: error: --variant {variant!r}: expected NAME=VALUE "
                             "items separated by spaces (\"\" for the defaults)")
        env[name] = value
    return env


def _command(argv: list[str]) -> str:
    """The command line as typed, for the report's first line."""
    return " ".join([PROG, *map(shlex.quote, argv)])


def _fresh_child(flags: list[str], env: dict[str, str], what: str,
                 then: list[str] | None = None) -> dict:
    """Run this script with ``flags`` in a fresh process with an empty ``NUMBA_CACHE_DIR``
    and ``env`` added; its last stdout line, parsed. With ``then``: one more fresh
    process with those flags on the cache the first one filled, its line under "then".
    A failed child ends the run with one line naming ``what`` ran."""
    def run(cache: str, fl: list[str]) -> dict:
        p = subprocess.run([sys.executable, __file__, *fl], capture_output=True, text=True,
                           env=dict(os.environ, **env, NUMBA_CACHE_DIR=cache), timeout=900)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise SystemExit(f"{PROG}: error: {what}: {tail}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as cache:
        out = run(cache, flags)
        if then:
            out["then"] = run(cache, then)
    return out


def step_table(args, argv: list[str]) -> int:
    """``--step``: the whole step's cold compile and run time per variant (see the docstring)."""
    import statistics

    variants = args.variant or [""]
    envs = {v: _env_of(v) for v in variants}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeats):
        for v in variants:
            flags = ["--backend", args.backend, "--steps", str(args.steps), "--step-child"]
            runs[v].append(_fresh_child(flags, envs[v], f"variant {v!r}", then=flags))
            last = runs[v][-1]["compile_wall"]
            print(f"  repeat {r + 1}, {v or 'defaults'}: compile {last:.1f} s", file=sys.stderr)

    def spread(xs: list[float], fmt: str) -> str:
        return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}–{max(xs):{fmt}})"

    first = runs[variants[0]][0]["weights_sha256"]
    print(f"`{_command(argv)}`: cold compile of one training step of the reference "
          f"network ({args.backend} backend, in one process, loader kernels excluded), then "
          f"{args.steps} steps at batch 32; then a second fresh process loads the kernels "
          f"from the cache the first one wrote (as a run after the compile workers does) "
          f"and times {args.steps} steps again (warm step); median (min–max) of "
          f"{args.repeats} pair(s) of processes per variant, variants interleaved; load "
          f"average at the end {os.getloadavg()[0]:.2f}\n")
    print("| variant | compile wall s | compile CPU s | step ms | warm step ms "
          "| weights = first variant's |")
    print("|---|---:|---:|---:|---:|---|")
    for v in variants:
        rs = runs[v]
        same = all(x["weights_sha256"] == first and x["then"]["weights_sha256"] == first
                   for x in rs)
        print(f"| {v or '(defaults)'} | {spread([x['compile_wall'] for x in rs], '.1f')} | "
              f"{spread([x['compile_cpu'] for x in rs], '.1f')} | "
              f"{spread([x['step_ms'] for x in rs], '.2f')} | "
              f"{spread([x['then']['step_ms'] for x in rs], '.2f')} | "
              f"{'yes' if same else 'NO'} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["serial", "parallel"], default="parallel")
    p.add_argument("--opt", type=int, nargs="+", choices=[0, 1, 2, 3], default=[3, 2, 1, 0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--step", action="store_true",
                   help="the whole training step's cold compile and run time per --variant")
    p.add_argument("--variant", action="append", metavar="'NAME=VALUE ...'",
                   help="--step: environment of one variant (repeatable; \"\" = defaults)")
    p.add_argument("--repeats", type=int, default=3, help="--step: fresh processes per variant")
    p.add_argument("--steps", type=int, default=30,
                   help="--step: training steps timed after the compile")
    p.add_argument("--step-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step_child:
        print(json.dumps(step_child(args.backend, args.steps)))
        return 0
    if args.step:
        return step_table(args, argv)
    if args.child:
        print(json.dumps(child(args.backend)))
        return 0
    rows = [(opt, _fresh_child(["--backend", args.backend, "--child"],
                               {"NUMBA_OPT": str(opt)}, f"NUMBA_OPT={opt}"))
            for opt in args.opt]
    print(f"`{_command(argv)}`: cold compile + first call of conv2d_forward "
          f"({args.backend}), conv2's shapes, load average {os.getloadavg()[0]:.2f}\n")
    top = sorted(rows[0][1]["passes"].items(), key=lambda kv: -kv[1])[:3]
    names = [n for n, _ in top]
    print("| NUMBA_OPT | first call s | inside LLVM s | "
          + " | ".join(f"{n} s" for n in names) + " |")
    print("|---:|---:|---:|" + "---:|" * len(names))
    for opt, r in rows:
        print(f"| {opt} | {r['wall_seconds']:.2f} | {r['llvm_ffi_seconds']:.2f} | "
              + " | ".join(f"{r['passes'].get(n, 0.0):.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
