"""How much of a training step is matrix products, and how much is the code around them.

    python bench/products.py --threads 2 --out docs/results/products

The kernels spend their FLOPs in BLAS matrix products (``np.dot``, one thread
each) and the rest of their time on the data movement around them: unrolling
patches (``im2col``/``im2row``), folding patch gradients back
(``col2im``/``row2im``), the fused ReLU + max-pool and its unpool, gathers, the
per-group sums, the dense layer's weight-gradient loops, the loss, Adam and the
loop's own Python ("glue" below). This benchmark separates the two, in one run,
on the reference network at batch 32 (one fixed random batch, as
``bench/fusion.py``), for the serial backend and for the parallel one at
``--threads``, in alternating rounds (each round runs the steps, then the
products, then the glue pieces of one configuration, then of the other; the
order flips every round) so that the machine's slow phases hit all of them:

* **step, by part**: a full training step (forward, loss, backward, Adam,
  ``scratchcnn.loop.train_step``), with the per-part timers of
  ``bench/compare.py``'s breakdown; ms per step (median over rounds);
* **products, by part**: the same BLAS calls the kernels make in a step -- same
  shapes, same sample groups, operands as large as the plan's (a whole batch
  of patches), split over the threads as the kernels split them -- and
  nothing else, timed alone (median over rounds). The dense layer's weight
  gradient is plain loops in the kernel (``kernels/dense.py``); its row counts
  the one product ``x.T @ dy`` that would replace them;
* **glue** = step - products, per part and in all; and the ceiling of this
  design: the step's FLOPs at the products' speed, as a % of the GEMM peak
  (``bench/common.py``, probed at the start of every round: the median), next
  to the step's own %; and how much glue a step
  could keep and still reach ``--target`` (default 55%, the performance
  issue's goal at 2 threads) of the peak, its products as fast as now;
* **the convolutions' glue, piece by piece**: each piece of data movement of
  the conv kernels (unrolling patches, pool or scatter, unpool or gather,
  folding patch gradients back, the per-group sums) timed alone the same way
  (``bench/glue_calls.py``), and the rest of each part's glue that no piece
  accounts for.

Ratios and shares, not seconds, are what carry over between runs of this shared
machine. Writes ``products.json`` and ``products.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PROG = "python bench/products.py"
BATCH = 32


def _compile(parallel: bool) -> dict:
    """The kernels of ``blas_calls.py`` and ``glue_calls.py``, serial or parallel build
    (imported late: Numba must not load before ``configure_threads``)."""
    import blas_calls
    import glue_calls

    from scratchcnn.kernels._build import build

    return {name: build(getattr(mod, name), parallel)
            for mod in (blas_calls, glue_calls) for name in mod.__all__}


def _median_call_ms(fn, steps: int) -> float:
    """Median ms of ``steps`` calls of ``fn``."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class ProductCases:
    """The BLAS calls of one training step of ``model``, by breakdown part, as callables."""

    def __init__(self, model, kernels: dict, slots: int, blocks: int) -> None:
        import numpy as np

        from scratchcnn.fusion import ConvReLUPool
        from scratchcnn.layers import Conv2D, Dense

        rng = np.random.default_rng(0)
        self.calls: dict[str, object] = {}
        self.flops: dict[str, float] = {}
        #: the FLOPs the products do: fewer than ``flops`` where a fused pool skips pixels
        self.flops_done: dict[str, float] = {}
        #: (part, piece) -> callable: the glue pieces of the convolutions (glue_calls.py)
        self.glue: dict[tuple[str, str], object] = {}
        first = True
        shape: tuple[int, ...] = (3, 32, 32)  # per sample, into each step
        for step in model.steps:
            conv = step.conv if isinstance(step, ConvReLUPool) else step
            in_shape, shape = shape, step.output_shape(shape)
            if isinstance(conv, Conv2D):
                plan = conv.plan_for((BATCH, *in_shape))  # the plan the step used
                pooled = isinstance(step, ConvReLUPool)
                F, C, KH, KW = conv.weight.value.shape
                K, P, G, NG = C * KH * KW, plan.oh * plan.ow, plan.group, plan.num_groups
                # the pixels the kernels compute: with a fused pool, only those it reads
                Pc = 4 * (plan.oh // 2) * (plan.ow // 2) if pooled else P
                cols_shape = (NG, K + 1, Pc) if G == 1 else (NG, G * Pc, K + 1)
                cols = rng.standard_normal(cols_shape, dtype=np.float32)
                wb = rng.standard_normal((F, K + 1), dtype=np.float32)
                w2 = np.ascontiguousarray(wb[:, :K])
                s = min(slots, NG)
                fwd_out = np.empty((s, F, Pc) if G == 1 else (s, G * Pc, F), np.float32)
                dg = rng.standard_normal((s, F, G * Pc), dtype=np.float32)
                part_w = np.empty((NG, F, K + 1), np.float32)
                dcols = np.empty((s, K, Pc) if G == 1 else (s, G * Pc, K), np.float32)
                need_dx = not first
                f = kernels["conv_forward_products"]
                b = kernels["conv_backward_products"]
                self.calls[f"{conv.name} forward"] = partial(f, wb, cols, G == 1, fwd_out)
                self.calls[f"{conv.name} backward"] = partial(b, dg, w2, cols, G == 1, need_dx,
                                                              part_w, dcols)
                fl = 2.0 * BATCH * P * K * F  # the network's: every output pixel
                self.flops[f"{conv.name} forward"] = fl
                self.flops[f"{conv.name} backward"] = fl * (2 if need_dx else 1)
                self.flops_done[f"{conv.name} forward"] = fl * Pc / P
                self.flops_done[f"{conv.name} backward"] = fl * Pc / P * (2 if need_dx else 1)
                first = False
                self._conv_glue(conv, plan, in_shape, isinstance(step, ConvReLUPool), need_dx,
                                kernels, s, rng)
            elif isinstance(step, Dense):
                I, O = step.weight.value.shape
                x = rng.standard_normal((BATCH, I), dtype=np.float32)
                w = rng.standard_normal((I, O), dtype=np.float32)
                dy = rng.standard_normal((BATCH, O), dtype=np.float32)
                out, dx = np.empty((BATCH, O), np.float32), np.empty((BATCH, I), np.float32)
                dw = np.empty((I, O), np.float32)
                df, db = kernels["dense_forward_products"], kernels["dense_backward_products"]
                self.calls[f"{step.name} forward"] = partial(df, x, w, out, blocks)
                self.calls[f"{step.name} backward"] = partial(db, x, w, dy, dx, dw, blocks)
                fl = 2.0 * BATCH * I * O
                self.flops[f"{step.name} forward"] = fl
                self.flops[f"{step.name} backward"] = 2 * fl
                self.flops_done[f"{step.name} forward"] = fl
                self.flops_done[f"{step.name} backward"] = 2 * fl


    def _conv_glue(self, conv, plan, in_shape, pool: bool, need_dx: bool, kernels: dict,
                   s: int, rng) -> None:
        """The glue pieces of one convolution (``glue_calls.py``), on arrays of the plan's
        shapes; ``s`` threads' worth of scratch slots."""
        import numpy as np

        F, C, KH, KW = conv.weight.value.shape
        OH, OW = plan.oh, plan.ow
        K, P, G, NG = C * KH * KW, OH * OW, plan.group, plan.num_groups
        if not (KH == KW == 3 and (plan.sh, plan.sw, plan.ph, plan.pw) == (1, 1, 0, 0)):
            raise ValueError(f"{conv.name}: the glue pieces mirror unpadded 3x3 layers only")
        if G == 1 and not pool:
            raise ValueError(f"{conv.name}: the glue pieces mirror G = 1 with a pool only")
        f32 = np.float32
        x = rng.random((BATCH, *in_shape), dtype=f32)
        cols = np.empty((NG, K + 1, P) if G == 1 else (NG, G * P, K + 1), f32)
        tile = rng.standard_normal((s, F * G * P), dtype=f32)
        out_shape = (BATCH, F, OH // 2, OW // 2) if pool else (BATCH, F, OH, OW)
        pout = np.empty(out_shape, f32)
        argmax = np.zeros(out_shape if pool else (1, 1, 1, 1), np.int32)
        k = kernels
        name = conv.name
        self.glue[(f"{name} forward", "patches")] = partial(
            k["glue_patches"], x, OH // 2, OW // 2, pool, cols, G, s)
        self.glue[(f"{name} forward", "pool" if pool else "scatter")] = partial(
            k["glue_pool"], tile, OH, OW, G, pool, pout, argmax)
        k["glue_pool"](tile, OH, OW, G, pool, pout, argmax)  # a valid argmax for the unpool
        dpool = rng.standard_normal(out_shape, dtype=f32)
        self.glue[(f"{name} backward", "unpool" if pool else "gather")] = partial(
            k["glue_unpool"], dpool, argmax, pout, P, G, pool, np.empty_like(tile))
        if need_dx:
            if G == 1:
                raise ValueError(f"{name}: an input gradient with G = 1 is not mirrored")
            dcols = rng.standard_normal((s, G * P, K), dtype=f32)
            dx = np.empty((BATCH, *in_shape), f32)
            self.glue[(f"{name} backward", "fold")] = partial(k["glue_fold"], dcols, G,
                                                              OH // 2, OW // 2, pool, dx)
        partials = rng.standard_normal((NG, F, K + 1), dtype=f32)
        self.glue[(f"{name} backward", "sums")] = partial(
            k["glue_sums"], partials, np.empty((F, K), f32), np.empty(F, f32))


class Configuration:
    """One backend and thread count: the reference network on one fixed batch, its
    per-part timers, and its products and glue pieces as callables."""

    def __init__(self, backend: str, threads: int) -> None:
        import numpy as np
        from harness import Timers

        from scratchcnn.kernels.dense import SAMPLES
        from scratchcnn.losses import SoftmaxCrossEntropy
        from scratchcnn.model import reference_cnn
        from scratchcnn.optim import Adam

        self.backend, self.threads = backend, threads
        self.name = "serial" if backend == "serial" else f"parallel@{threads}"
        rng = np.random.default_rng(0)
        self.x = rng.random((BATCH, 3, 32, 32), dtype=np.float32)
        self.y = rng.integers(0, 10, BATCH)
        self.model = reference_cnn(seed=0, backend=backend)
        self.loss = SoftmaxCrossEntropy(backend=backend)
        self.opt = Adam(self.model.parameters(), backend=backend)
        self.timers = Timers()
        self.timers.instrument(self.model, self.loss, self.opt)
        self.use()
        for _ in range(10):  # compile, build the plans, warm the caches
            self._step()
        self.cases = ProductCases(self.model, _compile(backend == "parallel"), threads, SAMPLES)
        self.alone = self._alone_calls()
        for call in (*self.cases.calls.values(), *self.cases.glue.values(),
                     *self.alone.values()):
            call()  # compile
        self.rounds: list[dict] = []

    def _alone_calls(self) -> dict:
        """part -> callable: each layer's forward and backward by itself, on copies of
        the input and output gradient a real step gave it (untimed: the originals under
        the timers' wrappers). Called over and over, the part finds its data and code in
        the caches, where inside a step the other parts have just evicted them."""
        from functools import partial

        from scratchcnn.fusion import ConvReLUPool

        steps = self.model.steps
        names = [s.conv.name if isinstance(s, ConvReLUPool) else s.name for s in steps]
        h, inputs = self.x, []
        for s in steps:
            inputs.append(h.copy())
            h = s.forward.__wrapped__(h)
        self.loss.forward.__wrapped__(h, self.y)
        d, grads = self.loss.backward.__wrapped__(), {}
        for i in range(len(steps) - 1, -1, -1):
            grads[i] = d.copy()
            d = steps[i].backward.__wrapped__(d, need_input_grad=i > 0)
        calls = {}
        for i, (s, name) in enumerate(zip(steps, names)):
            calls[f"{name} forward"] = partial(s.forward.__wrapped__, inputs[i])
            calls[f"{name} backward"] = partial(s.backward.__wrapped__, grads[i],
                                                need_input_grad=i > 0)
        return calls

    def use(self) -> None:
        """Numba's thread count for this configuration (in this, the measuring, thread)."""
        if self.backend == "parallel":
            import numba

            numba.set_num_threads(self.threads)

    def _step(self) -> None:
        from scratchcnn.loop import train_step

        train_step(self.model, self.loss, self.opt, self.x, self.y)

    def measure_round(self, steps: int) -> None:
        """One round: ``steps`` training steps (ms per step of each part, 'other' the
        step's time outside the parts), then ``steps`` calls of each product and glue
        piece (median ms)."""
        self.use()
        self.timers.reset()
        t0 = time.perf_counter()
        for _ in range(steps):
            self._step()
        total = (time.perf_counter() - t0) / steps * 1e3
        parts = {k: v / steps * 1e3 for k, v in self.timers.seconds.items()}
        parts["other"] = max(total - sum(parts.values()), 0.0)
        products = {p: _median_call_ms(c, steps) for p, c in self.cases.calls.items()}
        pieces = {key: _median_call_ms(c, steps) for key, c in self.cases.glue.items()}
        alone = {p: _median_call_ms(c, steps) for p, c in self.alone.items()}  # fwd, then bwd
        self.rounds.append({"step": parts, "products": products, "pieces": pieces,
                            "alone": alone})

    def result(self) -> dict:
        """Medians over the rounds, as the report stores them."""
        med = statistics.median
        r = self.rounds
        pieces: dict[str, dict[str, float]] = {}
        for part, piece in r[0]["pieces"]:
            pieces.setdefault(part, {})[piece] = med(x["pieces"][(part, piece)] for x in r)
        return {"name": self.name, "threads": self.threads,
                "step_ms": {k: med(x["step"].get(k, 0.0) for x in r) for k in r[0]["step"]},
                "products_ms": {k: med(x["products"][k] for x in r) for k in r[0]["products"]},
                "glue_pieces_ms": pieces, "flops": self.cases.flops,
                "alone_ms": {k: med(x["alone"][k] for x in r) for k in r[0]["alone"]},
                "flops_done": self.cases.flops_done}


def measure(threads: int, steps: int, rounds: int, probe) -> tuple[list[dict], dict]:
    """The serial and the parallel@``threads`` configuration, measured in alternating
    rounds (the order flips every round), so that the machine's slow phases hit both,
    and steps, products and glue pieces alike; ``probe()`` (the GEMM peak) runs at the
    start of every round, and the peak reported is the median of the rounds' probes."""
    configs = [Configuration("serial", 1), Configuration("parallel", threads)]
    probes = []
    for r in range(rounds):
        probes.append(probe())
        for c in (configs if r % 2 == 0 else configs[::-1]):
            c.measure_round(steps)
    med = statistics.median
    peak = {**probes[0],
            "one_thread_gflops": med(p["one_thread_gflops"] for p in probes),
            "all_threads_gflops": med(p["all_threads_gflops"] for p in probes),
            "per_round": probes}
    return [c.result() for c in configs], peak


def table(config: dict, peak_gflops: float, target: float = 0.55) -> tuple[str, dict]:
    """Markdown rows and totals of one configuration; ``glue_ms_at_target``: the glue a
    step could keep and still run at ``target`` x the peak, its products unchanged."""
    step, prod, flops = config["step_ms"], config["products_ms"], config["flops"]
    done = config.get("flops_done", flops)  # reports before the pooled-pixels kernels
    total = sum(step.values())
    prod_total = sum(prod.values())
    fl = sum(flops.values())
    rows, parts = [], []
    for part, ms in sorted(step.items(), key=lambda kv: -(kv[1] - prod.get(kv[0], 0.0))):
        p = prod.get(part, 0.0)
        speed = f"{done[part] / p / 1e6 / peak_gflops * 100:.0f}%" if p > 0 else "-"
        rows.append(f"| {part} | {ms:.3f} | {p:.3f} | {speed} | {ms - p:.3f} | "
                    f"{(ms - p) / total * 100:.1f}% |")
        parts.append({"part": part, "step_ms": ms, "products_ms": p, "glue_ms": ms - p,
                      "glue_share": (ms - p) / total})
    totals = {"parts": parts,  # biggest glue first
              "step_ms": total, "products_ms": prod_total, "glue_ms": total - prod_total,
              "glue_share": (total - prod_total) / total,
              "step_peak_fraction": fl / total / 1e6 / peak_gflops,
              "products_peak_fraction": fl / prod_total / 1e6 / peak_gflops,
              "peak_gflops": peak_gflops, "target": target,
              "glue_ms_at_target": fl / (target * peak_gflops * 1e6) - prod_total}
    head = ("| part | step ms | products ms | products' % of peak | glue ms | glue, % of step |\n"
            "|---|---:|---:|---:|---:|---:|")
    tail = (f"| **step** | **{total:.3f}** | **{prod_total:.3f}** | "
            f"**{totals['products_peak_fraction'] * 100:.0f}%** | "
            f"**{total - prod_total:.3f}** | **{totals['glue_share'] * 100:.0f}%** |")
    return "\n".join([head, *rows, tail]), totals


PIECES = ("patches", "pool", "scatter", "unpool", "gather", "fold", "sums")


def pieces_table(config: dict) -> tuple[str, list[dict]]:
    """Markdown and rows: each convolution part's glue (step - products) and the pieces of
    it timed alone; "rest" is the glue no piece accounts for, split in two with the part
    itself timed alone (``alone_ms``, reports since it was measured): "in the step" =
    step - part alone, what running among the other parts costs it (caches, prefetchers
    and branch history the others left cold); "in the kernel" = the rest of the rest (the
    bias row, the weights copy, the data moving between pieces; negative when the pieces
    alone ran slower than inside the kernel)."""
    step, prod, pieces = config["step_ms"], config["products_ms"], config["glue_pieces_ms"]
    alone = config.get("alone_ms")
    total = sum(step.values())
    rows, out = [], []
    for part in sorted(pieces, key=lambda p: -(step[p] - prod[p])):
        glue = step[part] - prod[part]
        rest = glue - sum(pieces[part].values())
        row = {"part": part, "glue_ms": glue, "pieces_ms": pieces[part], "rest_ms": rest}
        cells = " | ".join(f"{pieces[part][k]:.3f}" if k in pieces[part] else "" for k in PIECES)
        if alone:
            row["rest_in_step_ms"] = step[part] - alone[part]
            row["rest_in_kernel_ms"] = rest - row["rest_in_step_ms"]
            cells += f" | {row['rest_in_kernel_ms']:.3f} | {row['rest_in_step_ms']:.3f}"
        out.append(row)
        rows.append(f"| {part} | {glue:.3f} | {cells} | {rest:.3f} | {glue / total * 100:.1f}% |")
    split = ["rest: in the kernel", "rest: in the step"] if alone else []
    head = ("| part | glue ms | " + " | ".join([*PIECES, *split]) + " | rest | glue, % of step |\n"
            "|---|" + "---:|" * (len(PIECES) + len(split) + 3))
    return "\n".join([head, *rows]), out


def in_step_cost(config: dict) -> dict | None:
    """Every timed part by itself vs inside the step: ``alone_ms`` and ``step_ms`` summed
    over the parts timed both ways, and the difference (None for reports from before the
    parts were timed alone)."""
    alone = config.get("alone_ms")
    if not alone:
        return None
    a = sum(alone.values())
    s = sum(config["step_ms"][p] for p in alone)
    return {"alone_ms": a, "step_ms": s, "cost_ms": s - a, "cost_share": (s - a) / s}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="Numba threads of the parallel configuration")
    p.add_argument("--steps", type=int, default=50, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating rounds (medians over them)")
    p.add_argument("--target", type=float, default=0.55,
                   help="report the glue a step could keep and run at this fraction of the "
                        "peak")
    p.add_argument("--gemm-size", type=int, default=2048, help="size of the GEMM peak probe")
    p.add_argument("--out", type=Path, default=Path("bench/results/products"),
                   help="output folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads < 1 or args.steps < 1 or args.rounds < 1:
        sys.exit(f"{PROG}: error: --threads, --steps and --rounds must be >= 1")
    if not 0 < args.target <= 1:
        sys.exit(f"{PROG}: error: --target {args.target}: a fraction of the peak in (0, 1]")
    from scratchcnn.threads import configure_threads

    configure_threads(args.threads)
    from common import gemm_peak, machine_summary, write_report
    from harness import peak_for

    load_at_start = os.getloadavg()[0]
    configs, peak = measure(args.threads, args.steps, args.rounds,
                            lambda: gemm_peak(args.gemm_size, repeats=3))
    info = machine_summary()
    cmd = (f"{PROG} --threads {args.threads} --steps {args.steps} --rounds {args.rounds}"
           + ("" if args.gemm_size == 2048 else f" --gemm-size {args.gemm_size}")
           + ("" if args.target == 0.55 else f" --target {args.target}")
           + f" --out {args.out}")
    md = [f"### Products and glue in a training step\n\n`{cmd}`\n",
          f"Machine: {info['cpu_model']}, {info['cpu_count']} cores, Numba {info['numba']} "
          f"(threading layer {info['threading_layer']}), NumPy {info['numpy']}; float32 GEMM "
          f"peak ({args.gemm_size}², probed at the start of every round, median): "
          f"{peak['one_thread_gflops']:.0f} GFLOP/s on 1 thread "
          f"({min(p['one_thread_gflops'] for p in peak['per_round']):.0f}–"
          f"{max(p['one_thread_gflops'] for p in peak['per_round']):.0f}), "
          f"{peak['all_threads_gflops']:.0f} on {peak['all_threads']} "
          f"({min(p['all_threads_gflops'] for p in peak['per_round']):.0f}–"
          f"{max(p['all_threads_gflops'] for p in peak['per_round']):.0f}); load average at start "
          f"{load_at_start:.2f}. Reference network, batch 32, one fixed random batch; medians "
          f"over {args.rounds} rounds of {args.steps} steps (each round: steps, products and "
          f"glue pieces of both configurations, their order alternating).\n"]
    for c in configs:
        pk = peak_for(c["threads"], peak)
        rows, totals = table(c, pk, args.target)
        c["totals"] = totals
        piece_rows, c["glue_by_piece"] = pieces_table(c)
        c["in_step"] = cost = in_step_cost(c)
        md += [f"#### {c['name']} (peak {pk:.0f} GFLOP/s)\n", rows, "",
               f"The step runs at **{totals['step_peak_fraction'] * 100:.0f}%** of the peak; "
               f"its products alone at **{totals['products_peak_fraction'] * 100:.0f}%**. "
               f"Glue: **{totals['glue_ms']:.2f} ms of {totals['step_ms']:.2f} "
               f"({totals['glue_share'] * 100:.0f}%)**: were it free, the step would run at "
               f"the products' {totals['products_peak_fraction'] * 100:.0f}%. "
               f"{args.target * 100:.0f}% of the peak would leave the glue "
               f"{max(totals['glue_ms_at_target'], 0):.2f} ms "
               f"({(1 - max(totals['glue_ms_at_target'], 0) / totals['glue_ms']) * 100:.0f}% "
               f"less than now).\n",
               (f"Each layer's forward and backward timed by itself (called over and over on "
                f"one input, its data and code in the caches) takes {cost['alone_ms']:.2f} ms "
                f"in all; inside the step the same parts take {cost['step_ms']:.2f} ms: "
                f"running among the other parts costs them **{cost['cost_ms']:.2f} ms "
                f"({cost['cost_share'] * 100:.0f}%)**, time no kernel change inside a part "
                f"recovers (the other parts evict what it would find in the caches).\n"
                if cost else ""),
               f"The convolutions' glue, piece by piece ({c['name']}; ms per step, each "
               "piece timed alone as `bench/glue_calls.py` describes):\n", piece_rows, ""]
    md.append("Step ms: the part's share of a full training step (per-part timers, as "
              "`bench/compare.py`'s breakdown; conv1 and conv2 include their fused ReLU and "
              "max-pool; 'other' is the step's time outside the timed parts). Products ms: "
              "the same BLAS calls alone, operands as large as the plan's (the dense "
              "layers' weight gradient counted as the one product that would replace its "
              "loops). Products' % of peak: the FLOPs the part's products do, at their "
              "speed (over 100% can happen for a product small enough to stay in L1, as "
              "dense1's: the peak is a large product's). Glue: step - products. The "
              "step's % of the peak (and the products' total, the step's at the products' "
              "speed) count the network's FLOPs, a convolution over every output pixel "
              "(what PyTorch computes); the fused conv + pool kernels compute only the "
              "pixels their pool reads, which for conv2 (13 x 13, pooled to 6 x 6) is 144 "
              "of 169.\n")
    write_report(args.out, "products", {"command": cmd, "machine": info, "gemm_peak": peak,
                                        "configurations": configs}, "\n".join(md))


if __name__ == "__main__":
    main()
