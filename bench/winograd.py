"""Would fewer multiplications pay? Winograd F(2x2, 3x3) against our convolution.

    python bench/winograd.py --out docs/results/winograd

Why ask: the BLAS products already run at ~70% of the GEMM peak and the glue
around them resists tuning (``bench/products.py``, ``bench/numba_gemm.py``),
so the one route left inside "NumPy + Numba + BLAS" is to do *less
arithmetic*. Winograd's minimal filtering algorithm F(2x2, 3x3) computes each
2x2 tile of a 3x3, stride-1 convolution's output with 16 multiplications per
(input channel, output channel) instead of 36: the input is cut into 4x4
tiles that overlap by 2, each tile and each filter is transformed (only
additions, and halves for the filter), and the convolution becomes 16
independent matrix products, one per position of the 4x4 transformed tile::

    V[k] (T, C)  = the k-th element of B^T d B for every tile (T tiles) and channel
    U[k] (C, F)  = the k-th element of G g G^T for every filter
    M[k] (T, F)  = V[k] @ U[k]                      (BLAS, 16 calls)
    out          = A^T m A for every tile and filter, + bias

This benchmark times that forward pass, one thread, at conv2 and conv3 of the
reference network (conv1, whose 16 products would sum over only 3 input
channels, is left out), next to the forward the CPU plans run now (``im2row``
+ one BLAS product per sample group, bias included, the output scattered to
NCHW planes; ``pool=False``, no ReLU, so both write the same thing). The
Winograd time includes the filter transform, which a training step must redo
after every weight update; each of its four parts is also timed alone. Both
forwards are checked against each other (float32: largest difference; float64:
relative).

What it does not do: a Winograd backward (the input gradient is the same
algorithm on the padded output gradient with the flipped filters; the weight
gradient needs F(3x3, 2x2)), the fused pool, or a parallel build. The forward
ratio is an estimate, not a bound, of what a whole Winograd step could gain on
these layers. The bits are not those of the current kernels (the sums are
reordered), so a Winograd kernel would be a new serial/parallel pair, not a
drop-in.

Writes ``winograd.json`` and ``winograd.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import best_seconds, gemm_peak, machine_summary, write_report  # noqa: E402
from numba import njit  # noqa: E402

PROG = "python bench/winograd.py"

#: (name, N, C, H, F): the 3x3, stride-1, unpadded convolutions of the reference network
#: at batch 32 that Winograd F(2x2, 3x3) applies to.
LAYERS = [("conv2", 32, 32, 15, 64), ("conv3", 32, 64, 6, 64)]

@njit(cache=True, nogil=True)
def transform_filters(w, U):
    """U (16, C [+ padding], F): G g G^T of every 3x3 filter g = w[f, c]; U[4 * i + j, c, f] is
    element (i, j) of the 4x4 result. G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5],
    [0, 0, 1]]: G g combines rows (h), (G g) G^T columns, in w's dtype. Needed again
    after every weight update, i.e. once per training step, so it is timed as part of
    the forward. The innermost loop runs over the filters, contiguous in U."""
    F, C = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    for c in range(C):
        for f in range(F):
            for i in range(4):
                # row i of G g, its 3 columns
                if i == 0:
                    h0, h1, h2 = w[f, c, 0, 0], w[f, c, 0, 1], w[f, c, 0, 2]
                elif i == 3:
                    h0, h1, h2 = w[f, c, 2, 0], w[f, c, 2, 1], w[f, c, 2, 2]
                else:
                    s = w.dtype.type(1) if i == 1 else w.dtype.type(-1)
                    h0 = (w[f, c, 0, 0] + s * w[f, c, 1, 0] + w[f, c, 2, 0]) * half
                    h1 = (w[f, c, 0, 1] + s * w[f, c, 1, 1] + w[f, c, 2, 1]) * half
                    h2 = (w[f, c, 0, 2] + s * w[f, c, 1, 2] + w[f, c, 2, 2]) * half
                U[4 * i + 0, c, f] = h0
                U[4 * i + 1, c, f] = (h0 + h1 + h2) * half
                U[4 * i + 2, c, f] = (h0 - h1 + h2) * half
                U[4 * i + 3, c, f] = h2


#: B^T of F(2x2, 3x3) as (first row, second row, sign of the second) per output row:
#: row i of B^T d is d[FIRST[i]] + SIGN[i] * d[SECOND[i]]; the same pairs combine columns.
B_FIRST = np.array([0, 1, 2, 1], np.int64)
B_SECOND = np.array([2, 2, 1, 3], np.int64)
B_SIGN = np.array([-1.0, 1.0, -1.0, -1.0])


@njit(cache=True, nogil=True)
def transform_input(x, TH, TW, first, second, sign, pixels, V):
    """V (16, N*TH*TW [+ padding], C): B^T d B of every 4x4 input tile d (rows 2*ty..,
    columns 2*tx..) of every channel. Per sample, the input is first copied into
    ``pixels`` (2*TH+2, 2*TW+2, C): its pixels as rows of C channels, zeros past the
    edge, so the tile loop has no edge tests. Each of a tile's 16 values is then one
    loop over the channels with 4 loads and 1 store, all contiguous, which the compiler
    vectorizes (one loop storing all 16 values ran ~5x slower, measured before V was
    padded). ``sign`` (+-1, in x's dtype) multiplies exactly: additions only."""
    N, C, H, W = x.shape
    TT = TH * TW
    pixels[:, :, :] = 0
    for n in range(N):
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    pixels[i, j, c] = x[n, c, i, j]
        for ty in range(TH):
            for tx in range(TW):
                t = n * TT + ty * TW + tx
                for i in range(4):
                    r0, r1, si = 2 * ty + first[i], 2 * ty + second[i], sign[i]
                    for j in range(4):
                        c0, c1, sj = 2 * tx + first[j], 2 * tx + second[j], sign[j]
                        p00, p01 = pixels[r0, c0], pixels[r0, c1]
                        p10, p11 = pixels[r1, c0], pixels[r1, c1]
                        dst = V[4 * i + j, t]
                        for c in range(C):
                            dst[c] = (p00[c] + sj * p01[c]) + si * (p10[c] + sj * p11[c])


@njit(cache=True, nogil=True)
def tile_products(V, U, M):
    """M[k] = V[k] @ U[k] for the 16 positions k: 16 BLAS products (T, C) x (C, F). The
    arrays carry one padding row per k (see ``winograd_workspaces``), left out here."""
    T, C = V.shape[1] - 1, U.shape[1] - 1
    for k in range(16):
        np.dot(V[k, :T], U[k, :C], M[k, :T])


@njit(cache=True, nogil=True)
def transform_output(M, b, TH, TW, pixels, out):
    """out (N, F, OH, OW) = A^T m A + b for every tile m = M[:, t, f]. Per sample, the
    output is built in ``pixels`` (2*TH, 2*TW, F) as rows of F channels, the innermost
    loop over the channels (contiguous in M and in pixels: vectorized), then its OH x OW
    corner is copied out to the NCHW planes (an odd size's last tile row or column is
    dropped). A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: additions only."""
    N, F, OH, OW = out.shape
    TT = TH * TW
    for n in range(N):
        for ty in range(TH):
            for tx in range(TW):
                t = n * TT + ty * TW + tx
                a, q = 2 * ty, 2 * tx
                for f in range(F):
                    # A^T m: its two rows at column j are s0<j>, s1<j>
                    s00 = M[0, t, f] + M[4, t, f] + M[8, t, f]
                    s01 = M[1, t, f] + M[5, t, f] + M[9, t, f]
                    s02 = M[2, t, f] + M[6, t, f] + M[10, t, f]
                    s03 = M[3, t, f] + M[7, t, f] + M[11, t, f]
                    s10 = M[4, t, f] - M[8, t, f] - M[12, t, f]
                    s11 = M[5, t, f] - M[9, t, f] - M[13, t, f]
                    s12 = M[6, t, f] - M[10, t, f] - M[14, t, f]
                    s13 = M[7, t, f] - M[11, t, f] - M[15, t, f]
                    bias = b[f]
                    pixels[a, q, f] = s00 + s01 + s02 + bias
                    pixels[a, q + 1, f] = s01 - s02 - s03 + bias
                    pixels[a + 1, q, f] = s10 + s11 + s12 + bias
                    pixels[a + 1, q + 1, f] = s11 - s12 - s13 + bias
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    out[n, f, i, j] = pixels[i, j, f]


def winograd_workspaces(x_shape: tuple, F: int, dtype) -> dict:
    """The arrays one Winograd forward needs: U, V, M, the two per-sample pixel buffers,
    and the tile counts TH, TW.

    U, V and M each get one padding row per position k, (16, C + 1, F), (16, T + 1, C),
    (16, T + 1, F): unpadded, the distance between two positions' rows was a multiple of
    4 KiB here (T * C * 4 bytes = 49 pages for conv2), so a tile's 16 values all fall in
    the same set of the L1 cache, which holds fewer lines than that; storing them evicted
    each other (the filter transform ran ~10x slower, and the input transform ~5x)."""
    N, C, H, W = x_shape
    OH, OW = H - 2, W - 2
    TH, TW = (OH + 1) // 2, (OW + 1) // 2
    T = N * TH * TW
    return {"TH": TH, "TW": TW, "U": np.zeros((16, C + 1, F), dtype),
            "V": np.zeros((16, T + 1, C), dtype), "M": np.zeros((16, T + 1, F), dtype),
            "in_pixels": np.empty((2 * TH + 2, 2 * TW + 2, C), dtype),
            "out_pixels": np.empty((2 * TH, 2 * TW, F), dtype)}


def conv2d_winograd(x, w, b, ws, out) -> None:
    """out = conv(x, w) + b (3x3, stride 1, no padding) by F(2x2, 3x3), filters
    transformed too (as a training step must, its weights having changed); ws from
    ``winograd_workspaces``."""
    transform_filters(w, ws["U"])
    transform_input(x, ws["TH"], ws["TW"], B_FIRST, B_SECOND, B_SIGN.astype(x.dtype),
                    ws["in_pixels"], ws["V"])
    tile_products(ws["V"], ws["U"], ws["M"])
    transform_output(ws["M"], b, ws["TH"], ws["TW"], ws["out_pixels"], out)


def _layer(name: str, N: int, C: int, H: int, F: int, dtype, rng):
    """Random input, weights and bias of one layer, the current plan, both outputs."""
    from scratchcnn.kernels import serial

    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    plan = serial.conv2d_plan(x.shape, w.shape, (1, 1), (0, 0), dtype)
    ws = winograd_workspaces(x.shape, F, dtype)
    return x, w, b, plan, ws, np.empty(plan.out_shape, dtype), np.empty(plan.out_shape, dtype)


def check(N: int, C: int, H: int, F: int, dtype, seed: int = 0) -> float:
    """The largest difference between the Winograd forward and the plan's forward,
    relative to the largest output magnitude."""
    x, w, b, plan, ws, ref, out = _layer("check", N, C, H, F, dtype, np.random.default_rng(seed))
    plan.forward(x, w, b, ref)
    conv2d_winograd(x, w, b, ws, out)
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def measure(repeats: int, layers=LAYERS) -> list[dict]:
    """One row per layer: milliseconds (best of ``repeats``) of the plan's forward and of
    the Winograd forward and its four parts, the products' and the forward's multiply-add
    counts, and the float32 and float64 relative differences."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for name, N, C, H, F in layers:
            x, w, b, plan, ws, ref, out = _layer(name, N, C, H, F, np.float32, rng)
            U = ws["U"]
            transform_filters(w, U)
            OH = H - 2
            T = ws["V"].shape[1] - 1
            ms = {
                "im2row + BLAS (now)": best_seconds(partial(plan.forward, x, w, b, ref), repeats),
                "winograd": best_seconds(partial(conv2d_winograd, x, w, b, ws, out), repeats),
                "input transform": best_seconds(partial(
                    transform_input, x, ws["TH"], ws["TW"], B_FIRST, B_SECOND,
                    B_SIGN.astype(x.dtype), ws["in_pixels"], ws["V"]), repeats),
                "16 products": best_seconds(partial(tile_products, ws["V"], U, ws["M"]),
                                            repeats),
                "output transform": best_seconds(partial(
                    transform_output, ws["M"], b, ws["TH"], ws["TW"], ws["out_pixels"], out),
                    repeats),
                "filter transform": best_seconds(partial(transform_filters, w, U), repeats),
            }
            plan.forward(x, w, b, ref)
            conv2d_winograd(x, w, b, ws, out)
            rows.append({
                "layer": name, "N": N, "C": C, "H": H, "F": F, "OH": OH, "tiles": T,
                "ms": {k: v * 1e3 for k, v in ms.items()},
                "flops_direct": 2 * N * F * C * 9 * OH * OH,
                "flops_winograd_products": 2 * 16 * T * C * F,
                "ratio": ms["winograd"] / ms["im2row + BLAS (now)"],
                "max_rel_diff_float32": float(np.abs(out - ref).max() / np.abs(ref).max()),
                "max_rel_diff_float64": check(N, C, H, F, np.float64),
            })
    return rows


def summarize(rows: list[dict]) -> dict:
    """The figures the README quotes, per layer: the Winograd/now time ratio, the products'
    share of the direct multiply-adds and their GFLOP/s, the three transforms' ms (each
    timed alone) and the whole Winograd forward's; and whether Winograd's forward was
    faster at every layer."""
    out = {}
    for r in rows:
        out[r["layer"]] = {
            "ratio": r["ratio"],
            "multiplication_ratio": r["flops_winograd_products"] / r["flops_direct"],
            "products_gflops": r["flops_winograd_products"] / (r["ms"]["16 products"] * 1e-3)
            / 1e9,
            "transforms_ms": sum(r["ms"][f"{part} transform"]
                                 for part in ("input", "output", "filter")),
            "winograd_ms": r["ms"]["winograd"],
        }
    out["winograd_faster_everywhere"] = all(r["ratio"] < 1 for r in rows)
    return out


def step_estimate(products: dict, summary: dict) -> list[dict]:
    """What a whole training step would reach if every conv2 and conv3 part of it (forward
    and backward, glue included) shrank by the Winograd forward's ratio measured here:
    per configuration of ``bench/products.py``'s JSON (``products``), the step's ms and
    % of the GEMM peak now and so estimated. An estimate: the backward is not measured."""
    out = []
    for conf in products["configurations"]:
        step, total = conf["step_ms"], conf["totals"]
        saved = sum(ms * (1 - summary[part.split()[0]]["ratio"])
                    for part, ms in step.items() if part.split()[0] in summary)
        now = total["step_ms"]
        out.append({"name": conf["name"], "threads": conf["threads"], "step_ms": now,
                    "step_ms_estimate": now - saved,
                    "step_peak_percent": 100 * total["step_peak_fraction"],
                    "step_peak_percent_estimate": 100 * total["step_peak_fraction"] * now
                    / (now - saved)})
    return out


def report(rows: list[dict], peak: dict, command: str, machine: dict,
           estimate: list[dict] | None = None, products_path: str = "") -> str:
    """The Markdown report: per layer, each timing and its ratio to the current forward;
    with ``estimate`` (``step_estimate``), the step-level estimate."""
    one = peak["one_thread_gflops"]
    sm = summarize(rows)
    kinds = list(rows[0]["ms"])
    lines = [
        "### Winograd F(2x2, 3x3) forward vs the current im2row + BLAS forward",
        "",
        f"`{command}`",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} cores, Numba "
        f"{machine.get('numba', '?')}, NumPy {machine.get('numpy', '?')}; float32 GEMM peak "
        f"(NumPy's BLAS, {peak['size']}², one thread): {one:.0f} GFLOP/s. Batch 32, one "
        "thread, float32; best of the repeats, in ms. \"winograd\" is the whole forward, "
        "filter transform included (a training step changes the weights, so it transforms "
        "them every step); its four parts are also timed alone.",
        "",
        "| layer | " + " | ".join(kinds) + " | winograd / now | products' multiplications "
        "| products GFLOP/s | largest relative difference (float32, float64) |",
        "|---|" + "---:|" * (len(kinds) + 3) + "---|",
    ]
    for r in rows:
        s = sm[r["layer"]]
        lines.append(
            f"| {r['layer']} ({r['C']}→{r['F']}, {r['H']}² → {r['OH']}²) | "
            + " | ".join(f"{r['ms'][k]:.3f}" for k in kinds)
            + f" | {r['ratio']:.2f} | {s['multiplication_ratio']:.2f}× | "
            f"{s['products_gflops']:.0f} | {r['max_rel_diff_float32']:.1e}, "
            f"{r['max_rel_diff_float64']:.1e} |")
    verdict = ("Winograd's forward is faster at every layer." if sm["winograd_faster_everywhere"]
               else "Winograd's forward is not faster at every layer.")
    lines += ["", verdict, ""]
    if estimate:
        lines += [
            f"If every conv2 and conv3 part of a training step (forward and backward, glue "
            f"included) shrank by these ratios -- an estimate: no Winograd backward is measured "
            f"-- the steps of `{products_path}` would become:",
            "",
            "| configuration | step ms now | estimated | % of the GEMM peak now | estimated |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [f"| {e['name']} | {e['step_ms']:.2f} | {e['step_ms_estimate']:.2f} | "
                  f"{e['step_peak_percent']:.0f}% | {e['step_peak_percent_estimate']:.0f}% |"
                  for e in estimate]
        lines.append("")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=50, help="calls per timing; the best counts")
    p.add_argument("--gemm-size", type=int, default=2048, help="size of the peak probe")
    p.add_argument("--out", type=Path, default=Path("docs/results/winograd"),
                   help="folder for winograd.json and winograd.md")
    p.add_argument("--products", type=Path, default=Path("docs/results/products/products.json"),
                   help="bench/products.py's JSON, for the step-level estimate (skipped if absent)")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.gemm_size < 1:
        p.error("--repeats and --gemm-size must be at least 1")
    return a


def main(argv: list[str] | None = None) -> None:
    a = _parse(argv)
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    peak = gemm_peak(a.gemm_size)
    rows = measure(a.repeats)
    summary = summarize(rows)
    estimate = None
    if a.products.is_file():
        import json
        estimate = step_estimate(json.loads(a.products.read_text()), summary)
    machine = machine_summary()
    md = report(rows, peak, command, machine, estimate, str(a.products))
    write_report(a.out, "winograd", {"command": command, "machine": machine,
                                     "gemm_peak": peak, "summary": summary, "rows": rows,
                                     "products": str(a.products), "step_estimate": estimate},
                 md)


if __name__ == "__main__":
    main()
