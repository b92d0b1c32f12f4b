"""Time to accuracy: wall time until the test accuracy reaches a target, ours vs PyTorch.

    python bench/tta.py                       # both recipes, full data (tens of minutes)
    python bench/tta.py --quick               # tiny limits, checks the machinery (~1 min)
    python bench/tta.py --recipes plain       # one recipe

Recipes (the same for both libraries, on the same batches in the same order):

* ``plain``: no augmentation, Adam lr 1e-3 constant, batch 32; target 70%.
* ``plain-cosine``: ``plain`` with the cosine schedule over ``--cosine-epochs`` epochs
  (not run by default: ``--recipes plain-cosine``); target 70%.
* ``augment``: random crop (4-pixel padding) + horizontal flip, Adam lr 1e-3 with a
  cosine schedule over ``--augment-epochs`` epochs (the CLI's ``--lr-schedule cosine``:
  epoch e of E uses lr * (1 + cos(pi (e-1) / E)) / 2), batch 32; target 75%.

Ours runs as ``python -m scratchcnn.train`` does by default (parallel backend, the
CLI's default thread count and its thread governor: ``configure_threads`` and
``adapt_threads``; its loader threads: ``--loader-threads``, by default ``auto``, the
CLI's rule, which on 2 cores starts none for 2 compute threads); PyTorch runs the
network of bench/torch_ref.py at ``--torch-threads`` intra-op threads in a child
process of its own (two OpenMP runtimes in one process slow each other down), its
loader under the same rule for its thread count. Both start from the same weights
and read the same ``BatchLoader`` batches (same seed). Epochs alternate: ours
epoch e, then torch epoch e, so that machine noise hits both alike. After every
epoch the full test set (``--limit-test``) is evaluated; a library stops when it
has reached the target or after ``--max-epochs`` (``--augment-epochs`` and
``--cosine-epochs`` for the cosine recipes, whose schedules end there).

Wall time to target = the training time of every epoch up to and including the
one that reached it (evaluation excluded, reported separately, as
``scratchcnn.train`` does), plus the JIT/warm-up time of the library (reported
too; not counted by default because it is paid once per machine for us: see
bench/startup.py).

Writes tta.json, tta.md and tta.png (test accuracy vs cumulative training
seconds, one line per library and recipe) to ``--out`` (default
bench/results/tta/, gitignored; the committed copy was written with
``--out docs/results/tta``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
PROG = "python bench/tta.py"
DEFAULT_OUT = HERE / "results" / "tta"  # gitignored
RECIPES = {
    "plain": {"augment": False, "schedule": "constant", "target": 0.70},
    "plain-cosine": {"augment": False, "schedule": "cosine", "target": 0.70},
    "augment": {"augment": True, "schedule": "cosine", "target": 0.75},
}
LR = 1e-3


def build_parser() -> argparse.ArgumentParser:
    from scratchcnn.train import int_at_least, loader_threads_flag

    pos = int_at_least(1)
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["plain", "augment"])
    p.add_argument("--data-dir", default=os.environ.get("SCRATCHCNN_DATA", "./data"))
    p.add_argument("--limit-train", type=pos, default=None)
    p.add_argument("--limit-test", type=pos, default=None)
    p.add_argument("--max-epochs", type=pos, default=20, help="plain recipe: give up after")
    p.add_argument("--augment-epochs", type=pos, default=40,
                   help="augment recipe: the cosine schedule's length (and the limit)")
    p.add_argument("--cosine-epochs", type=pos, default=15,
                   help="plain-cosine recipe: the cosine schedule's length (and the limit)")
    p.add_argument("--torch-threads", type=pos, default=os.cpu_count() or 1)
    p.add_argument("--no-torch", action="store_true", help="ours only")
    p.add_argument("--loader-threads", type=loader_threads_flag, default="auto",
                   help="loader threads of both libraries, or auto: the training CLI's "
                        "--loader-threads auto rule for each one's thread count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-plain", type=float, default=RECIPES["plain"]["target"])
    p.add_argument("--target-augment", type=float, default=RECIPES["augment"]["target"])
    p.add_argument("--quick", action="store_true",
                   help="check the machinery: 2,000/500 images, 2 epochs, targets 20%%")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p


# -- PyTorch in a child process ------------------------------------------------------------


def _torch_child(conn, threads: int, seed: int, a: dict) -> None:
    """Child: data, loaders and a TorchRun; answers ("train", epoch, lr) and ("evaluate",)."""
    import traceback

    try:
        from compare import load_data
        from harness import EVAL_BATCH_SIZE, warm_up_loader
        from torch_ref import TorchRun, warm_up_torch

        from scratchcnn.data.loader import BatchLoader

        train_x, train_y, test_x, test_y = load_data(a["data_dir"], a["limit_train"],
                                                     a["limit_test"])
        lt = a["loader_threads"]
        train = BatchLoader(train_x, train_y, 32, shuffle=True, seed=seed,
                            augment=a["augment"], threads=lt, prefetch=4)
        test = BatchLoader(test_x, test_y, EVAL_BATCH_SIZE, shuffle=False, threads=lt,
                           prefetch=4)
        t0 = time.perf_counter()
        warm_up_loader()
        warm_up_torch(threads)
        warm = time.perf_counter() - t0
        run = TorchRun(threads, seed, lr=LR)
    except Exception:
        conn.send(("error", traceback.format_exc(limit=3)))
        return
    conn.send(("ok", warm))
    with train, test:
        while True:
            msg = conn.recv()
            try:
                if msg[0] == "stop":
                    return
                if msg[0] == "train":
                    for g in run.opt.param_groups:
                        g["lr"] = msg[2]
                    conn.send(("ok", run.train_epoch(train, msg[1]).seconds))
                elif msg[0] == "evaluate":
                    t0 = time.perf_counter()
                    acc = run.evaluate(test)[1]
                    conn.send(("ok", (acc, time.perf_counter() - t0)))
            except Exception:
                conn.send(("error", traceback.format_exc(limit=3)))


class TorchSide:
    name = "torch"

    def __init__(self, threads: int, seed: int, loader_args: dict) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.name = f"torch@{threads}"
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_torch_child, args=(child, threads, seed, loader_args),
                                 daemon=True)
        self._proc.start()
        child.close()
        self.warm_up_seconds = self._recv()

    def _recv(self):
        kind, value = self._conn.recv()
        if kind == "error":
            raise RuntimeError(f"{self.name} child: {value}")
        return value

    def train_epoch(self, epoch: int, lr: float) -> float:
        self._conn.send(("train", epoch, lr))
        return self._recv()

    def evaluate(self) -> tuple[float, float]:
        self._conn.send(("evaluate",))
        return self._recv()

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(("stop",))
            self._proc.join(30)


class OursSide:
    def __init__(self, threads: int, seed: int, data, augment: bool,
                 loader_threads: int) -> None:
        from harness import EVAL_BATCH_SIZE, ScratchRun, warm_up_backend, warm_up_loader

        from scratchcnn.data.loader import BatchLoader

        train_x, train_y, test_x, test_y = data
        self.train = BatchLoader(train_x, train_y, 32, shuffle=True, seed=seed, augment=augment,
                                 threads=loader_threads, prefetch=4)
        self.test = BatchLoader(test_x, test_y, EVAL_BATCH_SIZE, shuffle=False,
                                threads=loader_threads, prefetch=4)
        t0 = time.perf_counter()
        warm_up_loader()
        warm_up_backend("parallel")
        self.warm_up_seconds = time.perf_counter() - t0
        self.run = ScratchRun("parallel", threads, seed, lr=LR)
        self.run._use_threads = lambda: None  # as the CLI: the governor owns the count
        self.name = "scratchcnn (CLI defaults)"

    def train_epoch(self, epoch: int, lr: float) -> float:
        self.run.opt.lr = lr
        return self.run.train_epoch(self.train, epoch).seconds

    def evaluate(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        acc = self.run.evaluate(self.test)[1]
        return acc, time.perf_counter() - t0

    def close(self) -> None:
        self.train.close()
        self.test.close()


def run_recipe(args, name: str, threads: int, data) -> dict:
    from compare import loader_threads_for

    from scratchcnn.train import lr_for_epoch

    r = RECIPES[name]
    target = args.target_augment if name == "augment" else args.target_plain
    epochs = {"plain": args.max_epochs, "plain-cosine": args.cosine_epochs,
              "augment": args.augment_epochs}[name]
    sides = [OursSide(threads, args.seed, data, r["augment"],
                      loader_threads_for(args.loader_threads, f"parallel@{threads}"))]
    if not args.no_torch:
        loader_args = {"data_dir": args.data_dir, "limit_train": args.limit_train,
                       "limit_test": args.limit_test, "augment": r["augment"],
                       "loader_threads": loader_threads_for(
                           args.loader_threads, f"torch@{args.torch_threads}")}
        sides.append(TorchSide(args.torch_threads, args.seed, loader_args))
    curves = {s.name: {"warm_up_seconds": s.warm_up_seconds, "epochs": [],
                       "reached_at_epoch": None, "seconds_to_target": None} for s in sides}
    active = list(sides)
    try:
        for epoch in range(1, epochs + 1):
            lr = lr_for_epoch(r["schedule"], LR, epoch, epochs)
            for s in list(active):
                load = os.getloadavg()[0]
                secs = s.train_epoch(epoch, lr)
                acc, eval_secs = s.evaluate()
                c = curves[s.name]
                total = (c["epochs"][-1]["train_seconds_total"] if c["epochs"] else 0.0) + secs
                c["epochs"].append({"epoch": epoch, "lr": lr, "train_seconds": secs,
                                    "train_seconds_total": total, "eval_seconds": eval_secs,
                                    "test_acc": acc, "loadavg": load})
                print(f"  {name} {s.name}: epoch {epoch} {secs:.1f} s (total {total:.1f} s) "
                      f"test acc {100 * acc:.2f}%  load {load:.2f}", file=sys.stderr,
                      flush=True)
                if acc >= target and c["reached_at_epoch"] is None:
                    c["reached_at_epoch"], c["seconds_to_target"] = epoch, total
                    active.remove(s)
            if not active:
                break
    finally:
        for s in sides:
            s.close()
    return {"recipe": name, "target": target, "augment": r["augment"],
            "lr_schedule": r["schedule"], "lr": LR, "schedule_epochs": epochs,
            "curves": curves}


def _loader_words(rep: dict, side: str) -> str:
    """", N loader thread(s) (auto)" for one library; "" in reports from before the flag."""
    n = rep.get(f"loader_threads_{side}")
    if n is None:
        return ""
    return f", {n} loader thread(s){' (auto)' if rep['loader_threads'] == 'auto' else ''}"


def render(rep: dict) -> str:
    lines = ["# Time to accuracy", "", f"Command: `{rep['command']}`  ",
             f"Started {rep['started']} on {rep['cpu_model']} ({rep['cpu_count']} logical "
             f"cores); load average at start {rep['loadavg_start'][0]:.2f}, at end "
             f"{rep['loadavg_end'][0]:.2f}. {rep['train_images']} training / "
             f"{rep['test_images']} test images; ours: parallel backend with the CLI's "
             f"defaults ({rep['threads']} threads, governor on"
             f"{_loader_words(rep, 'ours')}); torch at {rep['torch_threads']} threads"
             f"{_loader_words(rep, 'torch')}.", "",
             "| recipe | target | library | reached at epoch | training s to target | "
             "warm-up s | best test acc | epochs run |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for res in rep["results"]:
        for lib, c in res["curves"].items():
            best = max(e["test_acc"] for e in c["epochs"])
            ep = c["reached_at_epoch"] if c["reached_at_epoch"] else "not reached"
            secs = f"{c['seconds_to_target']:.1f}" if c["seconds_to_target"] else "-"
            lines.append(f"| {res['recipe']} ({'augment, ' if res['augment'] else ''}"
                         f"{res['lr_schedule']} lr {res['lr']}) | {100 * res['target']:.0f}% | "
                         f"{lib} | {ep} | {secs} | {c['warm_up_seconds']:.1f} | "
                         f"{100 * best:.2f}% | {len(c['epochs'])} |")
        libs = list(res["curves"].values())
        if len(libs) == 2 and all(c["seconds_to_target"] for c in libs):
            lines.append(f"| | | ours / torch | | {libs[0]['seconds_to_target'] / libs[1]['seconds_to_target']:.2f} | | | |")  # noqa: E501
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for res in rep["results"]:
        for lib, c in res["curves"].items():
            xs = [e["train_seconds_total"] for e in c["epochs"]]
            ys = [100 * e["test_acc"] for e in c["epochs"]]
            ax.plot(xs, ys, marker="o", ms=3, label=f"{lib}, {res['recipe']}")
        ax.axhline(100 * res["target"], ls=":", lw=0.8, color="grey")
    ax.set_xlabel("training wall time (s, cumulative, evaluation excluded)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Time to accuracy, {rep['cpu_model']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.quick:
        args.limit_train, args.limit_test = args.limit_train or 2000, args.limit_test or 500
        args.max_epochs = args.augment_epochs = args.cosine_epochs = 2
        args.target_plain = args.target_augment = 0.20
    from scratchcnn.threads import adapt_threads, configure_threads, default_threads

    threads = default_threads()
    configure_threads(threads)
    adapt_threads(threads, "parallel")  # as python -m scratchcnn.train's main()
    from compare import load_data, loader_threads_for

    from scratchcnn.runinfo import cpu_model

    data = load_data(args.data_dir, args.limit_train, args.limit_test)
    rep = {"command": " ".join([PROG, *map(shlex.quote, argv)]),
           "started": datetime.now().isoformat(timespec="seconds"), "cpu_model": cpu_model(),
           "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "threads": threads,
           "torch_threads": None if args.no_torch else args.torch_threads,
           "loader_threads": args.loader_threads,
           "loader_threads_ours": loader_threads_for(args.loader_threads,
                                                     f"parallel@{threads}"),
           "loader_threads_torch": (None if args.no_torch else loader_threads_for(
               args.loader_threads, f"torch@{args.torch_threads}")),
           "train_images": len(data[1]), "test_images": len(data[3]), "results": []}
    for name in args.recipes:
        print(f"{name} ...", file=sys.stderr, flush=True)
        rep["results"].append(run_recipe(args, name, threads, data))
    rep["loadavg_end"] = os.getloadavg()
    from common import write_report

    write_report(args.out, "tta", rep, render(rep))
    plot(rep, args.out / "tta.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
