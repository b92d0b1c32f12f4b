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
"""

from __future__ import annotations

import argparse
import json
import os
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["serial", "parallel"], default="parallel")
    p.add_argument("--opt", type=int, nargs="+", choices=[0, 1, 2, 3], default=[3, 2, 1, 0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.backend)))
        return 0
    rows = []
    for opt in args.opt:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_OPT=str(opt), NUMBA_CACHE_DIR=cache)
            r = subprocess.run([sys.executable, __file__, "--backend", args.backend, "--child"],
                               env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            print(f"{PROG}: error: NUMBA_OPT={opt}: {r.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return 1
        rows.append((opt, json.loads(r.stdout.strip().splitlines()[-1])))
    print(f"`{' '.join([PROG, *argv])}`: cold compile + first call of conv2d_forward "
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
