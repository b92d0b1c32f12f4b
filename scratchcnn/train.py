"""Train the reference CNN on CIFAR-10: ``python -m scratchcnn.train --threads 8``.

Numba must not be imported before ``--threads`` is known (its thread-pool size
is fixed at import), so this module imports the numerical parts of the package
only inside ``main``, after ``configure_threads``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import signal
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

PROG = "python -m scratchcnn.train"
_LAUNCH = time.perf_counter()  # when this module was imported: the start of a CLI run

#: Flags that define a run; a resumed run keeps the checkpoint's values.
RUN_DEFAULTS: dict[str, Any] = {
    "batch_size": 32, "optimizer": "adam", "lr": None, "momentum": 0.9, "seed": 0,
    "augment": False, "limit_train": None, "limit_test": None, "dataset": "cifar10",
}
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.01}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump, no traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(lo: int):
    """An argparse ``type``: an integer >= ``lo``, else a one-line argparse error."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    p = OneLineParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the TensorFlow-tutorial CNN on CIFAR-10 (or Fashion-MNIST, MNIST, "
                    "a folder of your images) with hand-written Numba kernels, serial or "
                    "parallel. Leaves a run folder with config.json, metrics.jsonl, "
                    "checkpoint.npz, best.npz and curves.png.")
    p.add_argument("--threads", type=int_at_least(1), default=cores,
                   help="Numba threads for the parallel backend (more than the cores "
                        "works, with a warning)")
    p.add_argument("--backend", choices=["serial", "parallel", "cuda"], default="parallel",
                   help="kernel build: serial (one thread), parallel (prange) or cuda "
                        "(numba.cuda on a GPU; pip install '.[cuda]')")
    p.add_argument("--epochs", type=int_at_least(1), default=10,
                   help="train until this many epochs are done (counting resumed ones)")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help=f"images per step (default {RUN_DEFAULTS['batch_size']}, as in Keras)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=None,
                   help="adam (Keras defaults) or sgd with momentum (default adam)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default 0.001 for adam, 0.01 for sgd)")
    p.add_argument("--momentum", type=float, default=None,
                   help="momentum for sgd (default 0.9)")
    p.add_argument("--seed", type=int_at_least(0), default=None,
                   help="seed of the weights, data order and augmentation (default 0)")
    p.add_argument("--dataset", choices=["cifar10", "fashion-mnist", "mnist", "folder"],
                   default=None,
                   help="what to train on (default cifar10, or the --resume/--eval-only "
                        "checkpoint's); folder: your images in DATA_DIR/train/<class>/ and "
                        "DATA_DIR/test/<class>/")
    p.add_argument("--image-size", type=int_at_least(18), default=None,
                   help="--dataset folder: images are resized and centre-cropped to this "
                        "square size (default 32)")
    p.add_argument("--data-dir", default=os.environ.get("SCRATCHCNN_DATA", "./data"),
                   help="folder containing cifar-10-batches-py/, mnist/ or fashion-mnist/ "
                        "(downloaded there if missing), or your train/ and test/ folders; "
                        "default $SCRATCHCNN_DATA if set")
    p.add_argument("--loader-threads", type=int_at_least(0), default=2,
                   help="threads preparing batches; 0 = in the training thread")
    p.add_argument("--prefetch", type=int_at_least(1), default=4,
                   help="batches prepared ahead by the loader threads")
    p.add_argument("--augment", action="store_true", default=None,
                   help="random crop (4-pixel padding) and horizontal flip (default off)")
    p.add_argument("--limit-train", type=int_at_least(1), default=None,
                   help="use only the first N training images (default: all 50,000)")
    p.add_argument("--limit-test", type=int_at_least(1), default=None,
                   help="use only the first N test images (default: all 10,000)")
    p.add_argument("--eval-batch-size", type=int_at_least(1), default=250,
                   help="images per forward pass when evaluating")
    p.add_argument("--out", default=None,
                   help="run folder (default: a new runs/<time>-<backend>-t<threads>/, or the "
                        "resumed checkpoint's folder)")
    p.add_argument("--resume", metavar="PATH", default=None,
                   help="continue from a checkpoint.npz (or its run folder)")
    p.add_argument("--eval-only", metavar="PATH", default=None,
                   help="only evaluate the weights in PATH (checkpoint, best.npz or run folder) "
                        "on the test set, and write a report (confusion matrix, per-class "
                        "accuracy, predictions grid) into its folder")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is also off when stderr is not a terminal)")
    return p


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit: the CLI never shows a traceback for bad input."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command = " ".join([PROG, *map(shlex.quote, argv)])
    from scratchcnn.threads import configure_threads

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_threads(args.threads)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.backend == "cuda":  # fail before loading data when no GPU (or simulator) is usable
        from scratchcnn.kernels import get_backend

        try:
            get_backend("cuda")
        except ValueError as e:
            fail(str(e))
    try:
        return Trainer(args).run()
    except ValueError as e:  # bad checkpoint, bad flag combination, ...
        fail(str(e))


class StopRequested:
    """First Ctrl-C: finish the batch, checkpoint, exit. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: finishing this batch, then writing a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr)

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


class Trainer:
    """One training run: data, model, optimizer, loop, run folder."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    # -- set-up ---------------------------------------------------------------
    def _settings(self) -> tuple[dict, Any]:
        """Run-defining settings: the flags, else the resumed checkpoint's, else defaults."""
        from scratchcnn.checkpoint import Progress, read_progress, resolve_checkpoint

        a = self.args
        given = {k: getattr(a, k) for k in RUN_DEFAULTS}
        if a.resume is None:
            settings = {k: (v if v is not None else RUN_DEFAULTS[k]) for k, v in given.items()}
            self.resume_arrays, self.resume_path = None, None
            progress = Progress()
        else:
            self.resume_path = resolve_checkpoint(a.resume)
            self.resume_arrays, progress = read_progress(self.resume_path)
            settings = dict(progress.config["settings"])
            settings.setdefault("dataset", "cifar10")  # checkpoints from before --dataset
            for k, v in given.items():
                if v is not None and v != settings[k]:
                    raise ValueError(f"--{k.replace('_', '-')} {v} differs from the resumed "
                                     f"run's {settings[k]}; a resumed run keeps its settings")
        if settings["lr"] is None:
            settings["lr"] = DEFAULT_LR[settings["optimizer"]]
        return settings, progress

    def _run_dir(self) -> Path:
        a = self.args
        if a.out:
            out = Path(a.out)
        elif self.resume_path is not None:
            out = self.resume_path.parent
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{stamp}-{a.backend}-t{a.threads}"
            n = 1
            while out.exists():
                n += 1
                out = Path("runs") / f"{stamp}-{a.backend}-t{a.threads}-{n}"
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a run killed while writing a file
            stale.unlink()
        return out

    # -- the run ----------------------------------------------------------------
    def run(self) -> int:
        from scratchcnn.data.cifar10 import DataError
        from scratchcnn.data.datasets import dataset_for_run

        a = self.args
        try:
            self.data = data = dataset_for_run(
                a.dataset, a.data_dir, checkpoint=a.eval_only or a.resume,
                image_size=a.image_size, threads=a.loader_threads,
                checkpoint_is_run=not a.eval_only)
        except DataError as e:
            fail(str(e))
        a.dataset = data.name
        if a.eval_only:
            return self.evaluate_only(data)
        return self.train(data)

    def _model(self, seed: int):
        from scratchcnn.losses import SoftmaxCrossEntropy
        from scratchcnn.model import reference_cnn

        return (reference_cnn(seed=seed, backend=self.args.backend,
                              input_shape=self.data.input_shape,
                              num_classes=self.data.num_classes),
                SoftmaxCrossEntropy(backend=self.args.backend))

    def evaluate_only(self, data) -> int:
        from scratchcnn.checkpoint import model_weights
        from scratchcnn.data.datasets import weights_file
        from scratchcnn.report import write_report

        path = weights_file(self.args.eval_only)
        model, loss = self._model(0)
        model.load_state_dict(model_weights(path), source=str(path))
        n = min(self.args.limit_test or len(data.test_labels), len(data.test_labels))
        t0 = time.perf_counter()
        test_loss, test_acc = self.evaluate(model, loss, data.test_images[:n],
                                            data.test_labels[:n])
        print(f"{path}: test loss {test_loss:.4f}  test accuracy "
              f"{100 * test_acc:.2f}% on {n} {data.name} images "
              f"({time.perf_counter() - t0:.1f} s)")
        write_report(model, data, path.parent, limit=n, batch_size=self.args.eval_batch_size,
                     accuracy=test_acc, weights=str(path))
        return 0

    def evaluate(self, model, loss, images, labels) -> tuple[float, float]:
        """Mean loss and accuracy over a whole image set, in fixed-size batches."""
        from scratchcnn.data.loader import BatchLoader
        from scratchcnn.loop import evaluate

        with BatchLoader(images, labels, self.args.eval_batch_size, shuffle=False,
                         threads=self.args.loader_threads, prefetch=self.args.prefetch) as ld:
            return evaluate(model, loss, ld.epoch(0))

    def train(self, data) -> int:
        """Set up, then train epoch by epoch; 130 when interrupted (checkpoint written)."""
        from scratchcnn.data.loader import BatchLoader

        a = self.args
        if not self._set_up(data):
            return 0
        self.first_batch_seconds, self.startup_recorded = None, False
        stop = StopRequested()
        loader = BatchLoader(self.train_x, self.train_y, self.settings["batch_size"],
                             shuffle=True, seed=self.settings["seed"],
                             augment=self.settings["augment"], threads=a.loader_threads,
                             prefetch=a.prefetch)
        try:
            for epoch in range(self.progress.epoch + 1, a.epochs + 1):
                if not self._train_epoch(loader, epoch, stop):
                    return self._interrupted(f"at epoch {epoch}, batch "
                                             f"{self.progress.batch}/{len(loader)}")
                self._end_epoch(epoch, loader)
                if stop.requested and epoch < a.epochs:
                    return self._interrupted(f"after epoch {epoch}")
        finally:
            loader.close()
            stop.restore()
        print(f"done: best test accuracy {100 * self.progress.best_test_acc:.2f}%; run "
              f"folder {self.out}")
        return 0

    def _set_up(self, data) -> bool:
        """Model, optimizer, resumed state, data slices, warm-up, run folder and config.

        False when a resumed run has nothing left to do."""
        from scratchcnn.checkpoint import restore
        from scratchcnn.loop import warm_up
        from scratchcnn.runinfo import machine, versions

        a = self.args
        self.settings, self.progress = settings, progress = self._settings()
        self.out = self._run_dir()
        self.model, self.loss = self._model(settings["seed"])
        self.opt = self._optimizer()
        if self.resume_arrays is not None:
            restore(self.resume_arrays, str(self.resume_path), self.model, self.opt)
            if progress.epoch >= a.epochs and progress.batch == 0:
                print(f"{self.resume_path}: already trained for {progress.epoch} epochs "
                      f"(--epochs {a.epochs}); nothing to do")
                return False
        n_train = min(settings["limit_train"] or len(data.train_labels), len(data.train_labels))
        n_test = min(settings["limit_test"] or len(data.test_labels), len(data.test_labels))
        self.train_x, self.train_y = data.train_images[:n_train], data.train_labels[:n_train]
        self.test_x, self.test_y = data.test_images[:n_test], data.test_labels[:n_test]

        t0 = time.perf_counter()
        warm_up(self.model, self.loss, self.opt, input_shape=data.input_shape)
        compile_seconds = time.perf_counter() - t0
        config = {
            "command": a.command, "args": vars(a), "settings": settings, "train_images": n_train,
            "test_images": n_test, "backend": a.backend, "threads": a.threads,
            "loader_threads": a.loader_threads, "compile_seconds": round(compile_seconds, 3),
            "parameters": self.model.num_parameters(), "versions": versions(),
            "machine": machine(), "started": datetime.now().isoformat(timespec="seconds"),
            "resumed_from": str(self.resume_path) if self.resume_path else None,
            "dataset": data.meta(),
        }
        _write_json(self.out / "config.json", config)
        progress.config = {"settings": settings, "dataset": data.meta()}
        self.metrics = _read_metrics(self.out / "metrics.jsonl", up_to=progress.epoch)
        _write_metrics(self.out / "metrics.jsonl", self.metrics)
        print(f"run folder: {self.out}  |  {data.name}: {n_train} train / {n_test} test images"
              f"  |  backend "
              f"{a.backend}, {_compute_units(a)}, "
              f"{a.loader_threads} loader thread(s)  |  JIT warm-up {compile_seconds:.1f} s")
        return True

    def _optimizer(self):
        from scratchcnn.optim import SGD, Adam

        s, params = self.settings, self.model.parameters()
        if s["optimizer"] == "adam":
            return Adam(params, lr=s["lr"], backend=self.args.backend)
        return SGD(params, lr=s["lr"], momentum=s["momentum"], backend=self.args.backend)

    def _train_epoch(self, loader, epoch: int, stop: StopRequested) -> bool:
        """Train one epoch (or its rest, after a resume); False when interrupted mid-epoch
        (``progress`` then holds the position and the running sums)."""
        from tqdm import tqdm

        from scratchcnn.loop import NonFiniteLoss, train_step

        a, progress = self.args, self.progress
        skip = progress.batch
        sums = progress.partial if skip else {
            "loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "wait": 0.0}
        self.resumed_mid_epoch = bool(skip)
        wait_before = sums["wait"]
        bar = tqdm(total=len(loader), initial=skip, desc=f"epoch {epoch}/{a.epochs}",
                   unit="batch", leave=False, dynamic_ncols=True,
                   disable=True if a.no_progress else None)
        t_start = time.perf_counter()
        try:
            for b, (x, y) in enumerate(loader.epoch(epoch, start=skip), start=skip):
                if self.first_batch_seconds is None:
                    self.first_batch_seconds = time.perf_counter() - _LAUNCH
                    print(f"first batch {self.first_batch_seconds:.1f} s after launch (data "
                          f"loading, Numba import and JIT warm-up included)", flush=True)
                try:
                    step = train_step(self.model, self.loss, self.opt, x, y)
                except NonFiniteLoss as e:
                    bar.close()
                    kept = (f"the last good checkpoint ({progress.epoch} epochs) is "
                            f"{self.out / 'checkpoint.npz'}" if progress.epoch else
                            "no checkpoint was written")
                    fail(f"{e} at epoch {epoch}, batch {b + 1}; training stopped, {kept}; "
                         f"try a lower --lr")
                sums["loss"] += step.loss * step.count
                sums["correct"] += step.correct
                sums["seen"] += step.count
                bar.update(1)
                if b % 20 == 0 or b == len(loader) - 1:
                    el = sums["seconds"] + time.perf_counter() - t_start
                    bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}",
                                    img_s=f"{sums['seen'] / max(el, 1e-9):.0f}", refresh=False)
                if stop.requested and b + 1 < len(loader):
                    sums["seconds"] += time.perf_counter() - t_start
                    sums["wait"] = wait_before + loader.wait_seconds
                    progress.batch, progress.partial = b + 1, sums
                    return False
        finally:
            bar.close()
        sums["seconds"] += time.perf_counter() - t_start
        sums["wait"] = wait_before + loader.wait_seconds
        self.epoch_sums = sums
        return True

    def _end_epoch(self, epoch: int, loader) -> None:
        """Evaluate, then write best.npz, checkpoint.npz, metrics.jsonl and curves.png."""
        from scratchcnn.checkpoint import save_checkpoint
        from scratchcnn.plots import plot_curves

        a, sums, progress, out = self.args, self.epoch_sums, self.progress, self.out
        t_eval = time.perf_counter()
        test_loss, test_acc = self.evaluate(self.model, self.loss, self.test_x, self.test_y)
        row = {
            "epoch": epoch,
            "train_loss": sums["loss"] / sums["seen"],
            "train_acc": sums["correct"] / sums["seen"],
            "test_loss": test_loss, "test_acc": test_acc,
            "epoch_seconds": sums["seconds"],
            "images_per_second": sums["seen"] / sums["seconds"],
            "loader_wait_seconds": sums["wait"],
            "eval_seconds": time.perf_counter() - t_eval,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "resumed_mid_epoch": self.resumed_mid_epoch,
        }
        if not self.startup_recorded:  # the first epoch this process trained
            row["seconds_to_first_batch"] = self.first_batch_seconds
            self.startup_recorded = True
        self.metrics.append(row)
        progress.epoch, progress.batch, progress.partial = epoch, 0, {}
        if test_acc > progress.best_test_acc:
            progress.best_test_acc = test_acc
            save_checkpoint(out / "best.npz", self.model, self.opt, progress)
        save_checkpoint(out / "checkpoint.npz", self.model, self.opt, progress)
        _write_metrics(out / "metrics.jsonl", self.metrics)
        s = self.settings
        plot_curves(self.metrics, out / "curves.png",
                    title=f"scratchcnn, {a.backend} backend, batch {s['batch_size']}, "
                          f"{s['optimizer']}")
        print(f"epoch {epoch:>3}/{a.epochs}  train loss {row['train_loss']:.4f} "
              f"acc {100 * row['train_acc']:.2f}%  |  test loss {test_loss:.4f} "
              f"acc {100 * test_acc:.2f}%  |  {row['epoch_seconds']:.1f} s  "
              f"{row['images_per_second']:.0f} img/s  data wait "
              f"{row['loader_wait_seconds']:.2f} s", flush=True)

    def _interrupted(self, where: str) -> int:
        """After a stop request: checkpoint (mid-epoch position included), say how to resume."""
        from scratchcnn.checkpoint import save_checkpoint

        ckpt = self.out / "checkpoint.npz"
        if self.progress.batch:
            save_checkpoint(ckpt, self.model, self.opt, self.progress)
        print(f"interrupted {where}; checkpoint written. Resume with: {PROG} --resume "
              f"{ckpt} --epochs {self.args.epochs}", file=sys.stderr)
        return 130


def _compute_units(a: argparse.Namespace) -> str:
    """What computes: "N thread(s)" on the CPU, the GPU (or simulator) for cuda."""
    if a.backend == "cuda":
        from scratchcnn.kernels import get_backend

        return "CUDA simulator" if get_backend("cuda").simulator else "GPU"
    return f"{a.threads if a.backend == 'parallel' else 1} thread(s)"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_metrics(path: Path, up_to: int) -> list[dict]:
    """Metrics of the epochs a resumed checkpoint already covers (later lines dropped)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= up_to]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
