"""Kernel microbenchmark: every kernel of the reference network, serial vs parallel.

    python bench/kernels.py                 # batch 32, parallel on all cores
    python bench/kernels.py --threads 2 --repeats 30 --json kernels.json
    python bench/kernels.py --ladder        # the convolution ladder -> bench/results/ladder.*
    python bench/kernels.py --ladder --threads 2 --batch 32 --repeats 20 --out docs/results
                                            # ... the committed docs/results/ladder.*

For each kernel at the reference network's shapes it times the serial and the
parallel build alternately (so machine noise hits both alike), reports the
best and the median time in milliseconds, GFLOP/s (from the best time), the
fraction of the machine's float32 GEMM peak (measured first, same process),
and the parallel speedup (ratio of the medians).

Both builds get the same arguments, so the conv workspaces have one scratch
slot per sample group (``conv2d_workspace_shapes`` default); the layers give
the serial build a single slot, which stays in cache (its "fused" rows here are
a little pessimistic). The "+ ReLU + max-pool, fused" rows are what the model
runs for conv1 and conv2 (``kernels/convpool.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_seconds, gemm_peak, machine_summary  # noqa: E402

#: --ladder writes here unless --out says otherwise (gitignored, as compare.py's and
#: loader.py's results): a rerun must not overwrite the committed docs/results/ladder.*.
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="Numba threads for the parallel build")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per build and kernel")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--ladder", action="store_true",
                   help="time every rung of the convolution ladder (docs/ladder.md) serial, "
                        "parallel@1 and parallel@threads; write ladder.md/.json to --out")
    p.add_argument("--out", default=None,
                   help="with --ladder: the folder for ladder.md and ladder.json; None means "
                        "bench/results/, which git ignores (the committed copy is in "
                        "docs/results/)")
    return p.parse_args()


#: The reference network's convolutions: (name, C in, F out, H, W); 3x3, stride 1, no padding.
CONVS = [("conv1", 3, 32, 32, 32), ("conv2", 32, 64, 15, 15), ("conv3", 64, 64, 6, 6)]


def _random_float32(seed: int = 0):
    """(rng, arr): ``arr(*shape)`` is a float32 array of standard normals from ``rng``."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    return rng, arr


def cases(n: int):
    """(name, kernel, args factory, FLOPs): the reference network's kernels at batch n."""
    import numpy as np

    f32 = np.float32
    rng, arr = _random_float32()
    out = []
    from scratchcnn.kernels import serial
    from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes

    for name, c, f, h, w in CONVS:
        oh, ow, k, p = h - 2, w - 2, c * 9, (h - 2) * (w - 2)
        x, wt, b, dout = arr(n, c, h, w), arr(f, c, 3, 3), arr(f), arr(n, f, oh, ow)
        ws = {key: np.empty(shape, f32)
              for key, shape in conv2d_workspace_shapes(n, c, h, w, f, 3, 3, 1, 1, 0, 0).items()}
        y, dx = np.empty((n, f, oh, ow), f32), np.empty_like(x)
        dw, db = np.empty_like(wt), np.empty_like(b)
        flops = 2 * n * f * k * p
        out += [
            (f"{name} forward (direct loops)", "conv2d_forward_direct",
             (x, wt, b, 1, 1, 0, 0, y), flops),
            (f"{name} forward (im2col+GEMM, +ReLU)", "conv2d_forward",
             (x, wt, b, 1, 1, 0, 0, True, ws["wb"], ws["cols"], ws["gemm_out"], y), flops),
            (f"{name} backward input", "conv2d_backward_input",
             (dout, wt, 1, 1, 0, 0, ws["gemm_out"], ws["dcols"], dx), flops),
            (f"{name} backward weight", "conv2d_backward_weight",
             (dout, ws["cols"], ws["gemm_out"], ws["partial"], dw, db), flops),
        ]
        if name != "conv1":  # both gradients in one kernel (conv1 needs no dx)
            out.append((f"{name} backward, both fused", "conv2d_backward",
                        (dout, wt, ws["cols"], 1, 1, 0, 0, True, ws["gemm_out"], ws["partial"],
                         ws["dcols"], dw, db, dx), 2 * flops))
        if name != "conv3":  # what the model runs for conv1/conv2: conv + ReLU + 2x2 pool
            pshape = (n, f, oh // 2, ow // 2)
            pout, am = np.empty(pshape, f32), np.empty(pshape, np.int32)
            fwd = (x, wt, b, 1, 1, 0, 0, oh, ow, True, True, ws["wb"], ws["cols"], ws["tile"],
                   pout, am)
            serial.conv2d_relu_pool_forward(*fwd)  # a real argmax for the backward rows
            out += [(f"{name} + ReLU + max-pool forward, fused", "conv2d_relu_pool_forward",
                     fwd, flops),
                    (f"{name} backward from the pool, fused", "conv2d_relu_pool_backward",
                     (arr(*pshape), am, pout, wt, ws["cols"], 1, 1, 0, 0, oh, ow, True,
                      name != "conv1", ws["tile"], ws["partial"], ws["dcols"], dw, db, dx),
                     flops if name == "conv1" else 2 * flops)]
    for name, c, h in [("pool1", 32, 30), ("pool2", 64, 13)]:
        x = arr(n, c, h, h)
        o = h // 2
        y, am = np.empty((n, c, o, o), f32), np.empty((n, c, o, o), np.int32)  # as the layer
        out += [(f"{name} forward", "maxpool2d_forward", (x, 2, 2, 2, 2, y, am), n * c * o * o * 4),
                (f"{name} backward (+ReLU mask)", "maxpool2d_backward",
                 (arr(n, c, o, o), am, y, True, np.empty_like(x)), n * c * o * o)]
    size = n * 32 * 30 * 30
    x = arr(size)
    out += [("ReLU forward (32x30x30 per image)", "relu_forward", (x, np.empty_like(x)), size),
            ("ReLU backward / mask (same size)", "relu_backward", (x, arr(size), np.empty_like(x)),
             size)]
    for name, i, o in [("dense1", 1024, 64), ("dense2", 64, 10)]:
        x, w, b, dy = arr(n, i), arr(i, o), arr(o), arr(n, o)
        flops = 2 * n * i * o
        out += [(f"{name} forward", "dense_forward", (x, w, b, False, np.empty((n, o), f32)),
                 flops),
                (f"{name} backward input", "dense_backward_input", (dy, w, np.empty_like(x)),
                 flops),
                (f"{name} backward weight", "dense_backward_weight",
                 (x, dy, np.empty_like(w), np.empty_like(b)), flops)]
    logits = arr(n, 10)
    out.append(("softmax cross-entropy", "softmax_cross_entropy",
                (logits, rng.integers(0, 10, n), f32(1.0 / n), np.empty(n, f32),
                 np.empty_like(logits)),
                n * 10 * 6))
    p = 122_570
    out.append(("adam update (all params)", "adam_update",
                (arr(p), arr(p), arr(p), np.abs(arr(p)), f32(1e-3), f32(0.9), f32(0.999),
                 f32(1e-7)), 12 * p))
    return out


def ladder_cases(n: int) -> list[tuple[str, str, str, tuple, int, int]]:
    """(layer, rung, kernel, args, FLOPs, bytes) for every rung of the ladder at batch n.

    ``bytes``: what a memory-bound rung must move at least (its inputs read once,
    its outputs written once), 0 for the compute-bound ones (GFLOP/s reported)."""
    import numpy as np

    from scratchcnn.kernels import serial
    from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes

    f32 = np.float32
    _, arr = _random_float32()
    out = []
    for layer, c, f, h, w in CONVS:
        oh, ow, k, p = h - 2, w - 2, c * 9, (h - 2) * (w - 2)
        x, wt, b, dout = arr(n, c, h, w), arr(f, c, 3, 3), arr(f), arr(n, f, oh, ow)
        y, dx, dw, db = np.empty((n, f, oh, ow), f32), np.empty_like(x), np.empty_like(wt), \
            np.empty_like(b)
        cols, dcols, partial = np.empty((n, k, p), f32), arr(n, k, p), np.empty((n, f, k), f32)
        ws = {key: np.empty(shape, f32)
              for key, shape in conv2d_workspace_shapes(n, c, h, w, f, 3, 3, 1, 1, 0, 0).items()}
        fl = 2 * n * f * k * p
        serial.conv2d_forward_gemm(x, wt, b, 1, 1, 0, 0, cols, y)  # cols for the dw rung
        serial.conv2d_forward(x, wt, b, 1, 1, 0, 0, False, ws["wb"], ws["cols"],
                              ws["gemm_out"], y)
        out += [
            (layer, "1 direct loops", "conv2d_forward_direct", (x, wt, b, 1, 1, 0, 0, y), fl, 0),
            (layer, "1 direct loops", "conv2d_backward_input_direct",
             (dout, wt, 1, 1, 0, 0, dx), fl, 0),
            (layer, "1 direct loops", "conv2d_backward_weight_direct",
             (x, dout, 1, 1, 0, 0, dw, db), fl, 0),
            (layer, "2 plain im2col", "im2col_plain", (x, 3, 3, 1, 1, 0, 0, cols), 0,
             4 * (x.size + cols.size)),
            (layer, "2 plain col2im", "col2im_plain", (dcols, 3, 3, 1, 1, 0, 0, dx), 0,
             4 * (dcols.size + dx.size)),
            (layer, "3 im2col + GEMM per sample", "conv2d_forward_gemm",
             (x, wt, b, 1, 1, 0, 0, cols, y), fl, 0),
            (layer, "3 im2col + GEMM per sample", "conv2d_backward_input_gemm",
             (dout, wt, 1, 1, 0, 0, dcols, dx), fl, 0),
            (layer, "3 im2col + GEMM per sample", "conv2d_backward_weight_gemm",
             (dout, cols, partial, dw, db), fl, 0),
            (layer, "4 sample groups / im2row", "conv2d_forward",
             (x, wt, b, 1, 1, 0, 0, False, ws["wb"], ws["cols"], ws["gemm_out"], y), fl, 0),
            (layer, "4 sample groups / im2row", "conv2d_backward_input",
             (dout, wt, 1, 1, 0, 0, ws["gemm_out"], ws["dcols"], dx), fl, 0),
            (layer, "4 sample groups / im2row", "conv2d_backward_weight",
             (dout, ws["cols"], ws["gemm_out"], ws["partial"], dw, db), fl, 0),
            (layer, "5 fused backward, per-thread slots", "conv2d_backward",
             (dout, wt, ws["cols"], 1, 1, 0, 0, True, ws["gemm_out"], ws["partial"],
              ws["dcols"], dw, db, dx), 2 * fl, 0),
        ]
        if layer != "conv3":
            pshape = (n, f, oh // 2, ow // 2)
            pout, am = np.empty(pshape, f32), np.empty(pshape, np.int32)
            fwd = (x, wt, b, 1, 1, 0, 0, oh, ow, True, True, ws["wb"], ws["cols"], ws["tile"],
                   pout, am)
            serial.conv2d_relu_pool_forward(*fwd)
            out += [
                (layer, "6 conv + ReLU + pool", "conv2d_relu_pool_forward", fwd, fl, 0),
                (layer, "6 conv + ReLU + pool", "conv2d_relu_pool_backward",
                 (arr(*pshape), am, pout, wt, ws["cols"], 1, 1, 0, 0, oh, ow, True,
                  True, ws["tile"], ws["partial"], ws["dcols"], dw, db, dx), 2 * fl, 0),
                # its own outputs: the rung-6 backward row reads pout and am (window-major)
                (layer, "pool alone", "maxpool2d_forward",
                 (y, 2, 2, 2, 2, np.empty_like(pout), np.empty_like(am)), 0,
                 4 * (y.size + pout.size + am.size)),
            ]
    return out


def copy_bandwidth(mbytes: int = 256, repeats: int = 5) -> float:
    """The machine's memory bandwidth as one thread sees it: a large array copy
    (read + write counted), best of ``repeats`` after an untimed copy that faults in
    the destination's pages, in GB/s."""
    import numpy as np

    src = np.ones(mbytes * 2**20 // 8)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_seconds(lambda: np.copyto(dst, src), repeats) / 1e9


def run_ladder(args: argparse.Namespace) -> None:
    """Time every rung serial, parallel@1 and parallel@threads; write ladder.* to --out."""
    import numba

    from scratchcnn.runinfo import machine, versions
    from scratchcnn.threads import configure_threads

    configure_threads(args.threads)
    from scratchcnn.kernels import parallel, serial

    bandwidth = copy_bandwidth()
    peak = gemm_peak()  # a few seconds: the machine's state, comparable with other results
    nt = args.threads
    rows = []
    for layer, rung, kname, kargs, flops, nbytes in ladder_cases(args.batch):
        builds = {"serial": (getattr(serial, kname), 1),
                  "parallel@1": (getattr(parallel, kname), 1),
                  f"parallel@{nt}": (getattr(parallel, kname), nt)}
        for fn, t in builds.values():  # compile / load from cache, warm caches
            numba.set_num_threads(t)
            fn(*kargs)
        times = {label: [] for label in builds}
        for _ in range(args.repeats):
            for label, (fn, t) in builds.items():  # alternate: noise hits all alike
                numba.set_num_threads(t)
                t0 = time.perf_counter()
                fn(*kargs)
                times[label].append(time.perf_counter() - t0)
        row = {"layer": layer, "rung": rung, "kernel": kname, "flops": flops, "bytes": nbytes}
        for label, ts in times.items():
            med = statistics.median(ts)
            row[label] = {"median_ms": med * 1e3, "best_ms": min(ts) * 1e3,
                          "rate": (nbytes or flops) / med / 1e9}
        rows.append(row)
        print(layer, kname, {k: round(row[k]["median_ms"], 3) for k in builds}, flush=True)
    info = machine()
    cols = ["serial", "parallel@1", f"parallel@{nt}"]
    load = os.getloadavg()[0]
    out_flag = f" --out {args.out}" if args.out is not None else ""
    lines = [
        f"Convolution ladder: `python bench/kernels.py --ladder --threads {nt} --batch "
        f"{args.batch} --repeats {args.repeats}{out_flag}`. {info['cpu_model']}, "
        f"{info['cpu_count']} cores, threading layer {info['numba_threading_layer']}, Numba "
        f"{versions()['numba']}. Memory bandwidth (one thread, 256 MiB array copy, read + "
        f"write): {bandwidth:.1f} GB/s. float32 GEMM peak (NumPy BLAS, {peak['size']}²): "
        f"{peak['one_thread_gflops']:.0f} GFLOP/s on 1 thread, "
        f"{peak['all_threads_gflops']:.0f} on {peak['all_threads']} threads. "
        f"Median ms of {args.repeats} calls, and GFLOP/s (or "
        "GB/s for the memory-bound rows, marked) from the median. 1-minute load average "
        f"at the end: {load:.1f} (the run itself adds about 1; more means other work).",
        "",
        "| layer | rung | kernel | " + " | ".join(f"{c} ms" for c in cols)
        + " | " + " | ".join(f"{c} rate" for c in cols) + " |",
        "|---|---|---|" + "---:|" * (2 * len(cols)),
    ]
    for r in rows:
        unit = " GB/s" if r["bytes"] else ""
        lines.append(f"| {r['layer']} | {r['rung']} | `{r['kernel']}` | "
                     + " | ".join(f"{r[c]['median_ms']:.3f}" for c in cols) + " | "
                     + " | ".join(f"{r[c]['rate']:.1f}{unit}" for c in cols) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    res = Path(args.out) if args.out is not None else DEFAULT_OUT
    res.mkdir(parents=True, exist_ok=True)
    (res / "ladder.md").write_text(text)
    (res / "ladder.json").write_text(json.dumps(
        {"args": vars(args), "machine": info, "versions": versions(),
         "copy_bandwidth_gbs": bandwidth, "gemm_peak": peak, "rows": rows}, indent=2) + "\n")
    print(f"wrote {res / 'ladder.md'} and ladder.json", flush=True)


def main() -> None:
    args = _parse()
    if args.ladder:
        run_ladder(args)
        return
    from scratchcnn.threads import configure_threads

    configure_threads(args.threads)
    from scratchcnn.kernels import parallel, serial

    peak = gemm_peak()
    results = []
    for label, kname, kargs, flops in cases(args.batch):
        builds = {"serial": getattr(serial, kname), "parallel": getattr(parallel, kname)}
        for fn in builds.values():  # compile / load from cache, warm caches
            fn(*kargs)
            fn(*kargs)
        times = {b: [] for b in builds}
        for _ in range(args.repeats):
            for b, fn in builds.items():  # alternate: noise hits both builds alike
                t0 = time.perf_counter()
                fn(*kargs)
                times[b].append(time.perf_counter() - t0)
        row = {"kernel": label, "flops": flops}
        for b, ts in times.items():
            best, med = min(ts), statistics.median(ts)
            row[b] = {"best_ms": best * 1e3, "median_ms": med * 1e3, "max_ms": max(ts) * 1e3,
                      "gflops": flops / best / 1e9}
        row["speedup"] = row["serial"]["median_ms"] / row["parallel"]["median_ms"]
        row["serial"]["peak_fraction"] = row["serial"]["gflops"] / peak["one_thread_gflops"]
        row["parallel"]["peak_fraction"] = row["parallel"]["gflops"] / peak["all_threads_gflops"]
        results.append(row)

    info = machine_summary()
    print(f"Kernel benchmark: `python bench/kernels.py --threads {args.threads} --batch "
          f"{args.batch} --repeats {args.repeats}`; parallel build on {args.threads} threads. "
          f"{info['cpu_model']}, {info['cpu_count']} cores, Numba {info['numba']}, threading "
          f"layer {info['threading_layer']}. float32 GEMM peak (NumPy BLAS, "
          f"{peak['size']}²): {peak['one_thread_gflops']:.0f} GFLOP/s on 1 thread, "
          f"{peak['all_threads_gflops']:.0f} on {peak['all_threads']} threads.\n")
    print("| kernel | serial ms (best / median) | serial GFLOP/s | % of 1-core peak "
          "| parallel ms (best / median) | parallel GFLOP/s | % of all-core peak | speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        s, p = r["serial"], r["parallel"]
        print(f"| {r['kernel']} | {s['best_ms']:.3f} / {s['median_ms']:.3f} | "
              f"{s['gflops']:.1f} | {100 * s['peak_fraction']:.0f}% | "
              f"{p['best_ms']:.3f} / {p['median_ms']:.3f} | {p['gflops']:.1f} | "
              f"{100 * p['peak_fraction']:.0f}% | {r['speedup']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "machine": info, "peak": peak, "kernels": results}, indent=2))


if __name__ == "__main__":
    main()
