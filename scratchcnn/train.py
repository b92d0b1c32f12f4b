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
#: Prefix of error lines: "rank R: " in a data-parallel run of several ranks.
WHO = ""
_LAUNCH = time.perf_counter()  # when this module was imported: the start of a CLI run

#: Flags that define a run; a resumed run keeps the checkpoint's values.
RUN_DEFAULTS: dict[str, Any] = {
    "batch_size": 32, "optimizer": "adam", "lr": None, "momentum": 0.9, "seed": 0,
    "augment": False, "limit_train": None, "limit_test": None, "lr_schedule": "constant",
    "dataset": "cifar10",
}
#: Settings added after the first checkpoints were written: a checkpoint without them
#: ran with these values.
LATER_SETTINGS: dict[str, Any] = {"lr_schedule": "constant", "dataset": "cifar10"}
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.01}
LR_SCHEDULES = ("constant", "cosine", "step")


def lr_for_epoch(schedule: str, lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (1-based) of ``epochs``: constant; cosine from lr
    down towards 0 over the run; step: x0.1 after half and again after 3/4 of the epochs."""
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    if schedule == "step":
        return lr * 0.1 ** ((epoch - 1 >= epochs // 2) + (epoch - 1 >= 3 * epochs // 4))
    return lr
#: The files a run writes into its folder (``--overwrite`` removes these, nothing else).
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.npz", "best.npz", "curves.png")


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


def _momentum(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 <= v < 1):
        raise argparse.ArgumentTypeError(f"must be a finite number in [0, 1), got {text}")
    return v


def _decode_threads(a: argparse.Namespace) -> int:
    """Threads decoding a ``--dataset folder`` once, before training: ``--loader-threads``,
    or with ``auto`` the most ``auto`` ever starts (no training runs yet to compete)."""
    from scratchcnn.threads import AUTO_LOADER_LIMIT

    return AUTO_LOADER_LIMIT if a.loader_threads_auto else a.loader_threads


def loader_threads_flag(text: str) -> int | str:
    """``--loader-threads``: ``auto`` or an integer >= 0."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int_at_least(0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected auto or an integer >= 0, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from scratchcnn.data.layout import default_data_dir

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
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="learning rate per epoch (default constant): constant, cosine (from "
                        "--lr towards 0 at --epochs) or step (x0.1 at 1/2 and 3/4 of --epochs)")
    p.add_argument("--momentum", type=_momentum, default=None,
                   help="momentum for sgd (default 0.9; refused with adam)")
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
    p.add_argument("--data-dir", default=str(default_data_dir()),
                   help="folder containing cifar-10-batches-py/, mnist/ or fashion-mnist/ "
                        "(downloaded there if missing), or your train/ and test/ folders; "
                        "default $SCRATCHCNN_DATA if set")
    p.add_argument("--loader-threads", type=loader_threads_flag, default="auto",
                   help="threads preparing batches; 0 = in the training thread; auto = one "
                        "per core the compute threads leave free, at most 2 (0 for the "
                        "parallel backend on every core, where a loader thread would take a "
                        "core from it and slow the epoch)")
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
                        "resumed checkpoint's folder); an existing non-empty folder is "
                        "refused unless it is the one resumed, or --overwrite is given")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run files (config.json, metrics.jsonl, checkpoint.npz, "
                        "best.npz, curves.png) of an existing --out folder; other files stay")
    p.add_argument("--resume", metavar="PATH", default=None,
                   help="continue from a checkpoint.npz (or its run folder)")
    p.add_argument("--eval-only", metavar="PATH", default=None,
                   help="only evaluate the weights in PATH (checkpoint, best.npz or run folder) "
                        "on the test set, and write a report (confusion matrix, per-class "
                        "accuracy, predictions grid) into its folder")
    p.add_argument("--cold-start", choices=["wait", "serial-first"], default="wait",
                   help="parallel backend with a cold Numba cache: wait compiles its kernels "
                        "before the first batch; serial-first trains on the serial kernels "
                        "(compiled first, about 1.4x faster) while the parallel ones compile "
                        "in the background, then switches (same bits): an earlier first "
                        "batch, a later finish on 2 cores (README, cold start)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars, the download's included (they are also off when "
                        "stderr is not a terminal)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks, bit for bit equal to one process: "
                        "mpiexec -n P python -m mpi4py -m scratchcnn.train --distributed ... "
                        "(pip install '.[mpi]'); --batch-size is the global batch")
    return p


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit: the CLI never shows a traceback for bad input."""
    print(f"{PROG}: error: {WHO}{message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # SIGTERM is Ctrl-C: during start-up it stops at once (nothing half-written stays),
    # during training StopRequested finishes the batch and checkpoints.
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    trainer = None
    try:
        args = build_parser().parse_args(argv)
        args.command = shlex.join([*PROG.split(), *argv])
        if args.eval_only and args.resume:
            fail("--eval-only: cannot be combined with --resume; pass one of them")
        from scratchcnn.threads import adapt_threads, configure_threads

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            configure_threads(args.threads)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        adapt_threads(args.threads, "distributed" if args.distributed else args.backend)
        args.loader_threads_auto = args.loader_threads == "auto"
        if args.loader_threads_auto:
            from scratchcnn.threads import auto_loader_threads

            args.loader_threads = auto_loader_threads(args.backend, args.threads,
                                                      distributed=args.distributed)
        if args.distributed and args.backend == "cuda":
            fail("--distributed runs on the CPU backends only (the CUDA backend keeps no "
                 "per-group gradient pieces); use --backend parallel or serial")
        if args.backend == "cuda":  # fail before loading data when no GPU (or simulator)
            from scratchcnn.kernels import get_backend

            try:
                get_backend("cuda")
            except ValueError as e:
                fail(str(e))
        if args.distributed:
            from scratchcnn.train_distributed import distributed_trainer

            trainer = distributed_trainer(args)
        else:
            trainer = Trainer(args)
        return trainer.run()
    except ValueError as e:  # bad checkpoint, bad flag combination, ...
        fail(_one_line(e))
    except OSError as e:  # a file we could not read or write, not caught closer to it
        fail(_os_error(e))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before training, or a second Ctrl-C
        fail(trainer.interrupt_message() if trainer is not None else
             "interrupted during start-up; nothing was written", code=130)
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if trainer is not None:
            trainer.release()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _one_line(e: object) -> str:
    return " ".join(str(e).split())


def _os_error(e: OSError, hint: str = "check the path and its permissions, or free some "
              "space") -> str:
    where = f"{e.filename}: " if e.filename else ""
    return _one_line(f"{where}{e.strerror or e}; {hint}")


class StopRequested:
    """First Ctrl-C (or SIGTERM): finish the batch, checkpoint, exit. Second: stop at once.

    ``signals``: the signals treated like Ctrl-C (a data-parallel run adds SIGUSR1,
    which Open MPI's mpirun forwards to the ranks). ``quiet``: print nothing (ranks
    other than 0)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, signals: tuple[int, ...] = SIGNALS, quiet: bool = False) -> None:
        self.requested = False
        self.quiet = quiet
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if not self.quiet:
            print("\ninterrupt: finishing this batch, then writing a checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Trainer:
    """One training run: data, model, optimizer, loop, run folder."""

    #: Whether this process writes the run folder and prints (a data-parallel run: rank 0).
    writer = True

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = None  # the run folder's RunLock, while this run writes it
        self.out: Path | None = None
        self.last_checkpoint: Path | None = None  # the newest complete checkpoint of this run
        self.compile_jobs = None  # cache-filling workers started before the data loads
        self.serial_first = False  # --cold-start serial-first with a cold parallel cache
        self.background = None  # the parallel kernels compiling while serial ones train
        self._resumed = None  # (path, arrays, progress) of --resume, read once
        self.show_progress = not args.no_progress and sys.stderr.isatty() and self.writer

    # -- what a data-parallel run changes (scratchcnn/train_distributed.py) ----------------
    def _say(self, *args, **kwargs) -> None:
        """print(), on the process that reports."""
        if self.writer:
            print(*args, **kwargs)

    def _step(self, x, y, stop_requested: bool):
        """One training step; returns its StepStats and whether to stop after it."""
        from scratchcnn.loop import train_step

        return train_step(self.model, self.loss, self.opt, x, y), stop_requested

    def _agree(self, flag: bool) -> bool:
        """A decision every process takes together (one process: its own)."""
        return flag

    def _evaluate_batches(self, model, loss, batches) -> tuple[float, float]:
        from scratchcnn.loop import evaluate

        return evaluate(model, loss, batches)

    def _stop_requested(self) -> StopRequested:
        return StopRequested()

    def _data_ready(self) -> None:
        """Called once the dataset is loaded (a data-parallel rank 0 lets the others read)."""

    def _model_ready(self) -> None:
        """Model and optimizer built (and resumed): data-parallel ranks compare them here."""

    def _config_extra(self) -> dict:
        return {}

    def _row_extra(self) -> dict:
        return {}

    def _epoch_done(self, epoch: int) -> None:
        """After an epoch's checkpoint (data-parallel ranks check they still agree)."""

    def release(self) -> None:
        """Drop the run folder's lock (the process ending drops it too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def interrupt_message(self) -> str:
        """What a hard stop (start-up, or a second Ctrl-C) leaves, in one line."""
        if self.out is None:
            return "interrupted during start-up; nothing was written"
        if self.last_checkpoint is not None:
            return (f"interrupted; the last checkpoint is {self.last_checkpoint}; resume with: "
                    f"{self.resume_command(self.last_checkpoint)}")
        return "interrupted before the first checkpoint; nothing to resume"

    def resume_command(self, ckpt: Path) -> str:
        """The command that continues this run, every needed flag included, quoted."""
        a = self.args
        cmd = [*PROG.split(), "--resume", str(ckpt), "--epochs", str(a.epochs),
               "--data-dir", str(a.data_dir), "--backend", a.backend]
        if a.backend == "parallel":
            cmd += ["--threads", str(a.threads)]
        if self.out is not None and Path(ckpt).parent.resolve() != self.out.resolve():
            # No checkpoint in this run's folder yet: its files are rebuilt from the
            # resumed folder's, so they may be replaced.
            cmd += ["--out", str(self.out), "--overwrite"]
        if a.no_progress:
            cmd.append("--no-progress")
        return shlex.join(cmd)

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
            if self._resumed is None:  # run() reads it before compiling, set-up after
                path = resolve_checkpoint(a.resume)
                self._resumed = (path, *read_progress(path))
            self.resume_path, self.resume_arrays, progress = self._resumed
            settings = _checked_settings(progress.config.get("settings"), self.resume_path)
            for k, v in given.items():
                if v is not None and v != settings[k]:
                    raise ValueError(f"--{k.replace('_', '-')} {v} differs from the resumed "
                                     f"run's {settings[k]}; a resumed run keeps its settings")
        if settings["optimizer"] == "adam" and a.momentum is not None:
            raise ValueError("--momentum: applies to --optimizer sgd only (Adam has beta1 "
                             "instead); drop --momentum or pass --optimizer sgd")
        if settings["lr"] is None:
            settings["lr"] = DEFAULT_LR[settings["optimizer"]]
        return settings, progress

    def _run_dir(self) -> Path:
        """The run folder: made if needed, locked, refused if it holds another run."""
        a = self.args
        if a.out:
            out, flag = Path(a.out), f"--out {a.out}"
        elif self.resume_path is not None:
            out, flag = self.resume_path.parent, f"--resume {a.resume}"
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{stamp}-{a.backend}-t{a.threads}"
            n = 1
            while out.exists():
                n += 1
                out = Path("runs") / f"{stamp}-{a.backend}-t{a.threads}-{n}"
            flag = f"run folder {out}"
        if not self.writer:  # only rank 0 of a data-parallel run touches the folder
            return out
        if out.exists() and not out.is_dir():
            raise ValueError(f"{flag}: exists and is not a folder; pass a folder path")
        from scratchcnn.files import RunLock, RunLocked

        had_lock_file = (out / RunLock.NAME).exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(out)  # also proves the folder is writable
        except RunLocked:
            raise ValueError(f"{flag}: another run is writing this folder right now; wait "
                             f"for it to finish or choose another --out") from None
        except OSError as e:
            raise ValueError(f"{flag}: cannot create or write the run folder "
                             f"({e.strerror or e}); choose a writable --out") from None
        resuming_here = (self.resume_path is not None
                         and self.resume_path.parent.resolve() == out.resolve())
        taken = sorted(p.name for p in out.iterdir() if p.name != RunLock.NAME)
        if taken and not resuming_here:
            if not a.overwrite:
                if not had_lock_file:  # leave the user's folder as it was (lock held: no race)
                    (out / RunLock.NAME).unlink(missing_ok=True)
                self.release()
                shown = ", ".join(taken[:4]) + (", ..." if len(taken) > 4 else "")
                raise ValueError(f"{flag}: the folder is not empty (holds {shown}); continue "
                                 f"that run with --resume {out}, pass --overwrite to replace "
                                 f"its run files, or choose another --out")
            for name in RUN_FILES:  # the run's own files only; anything else stays
                (out / name).unlink(missing_ok=True)
        for name in RUN_FILES:  # temporary files left by a run killed while writing
            for stale in out.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        return out

    def _write(self, what: str, write) -> None:
        """Run ``write()``; a failed write (disk full, ...) stops the run in one line."""
        try:
            write()
        except OSError as e:
            kept = (f"the last complete checkpoint {self.last_checkpoint} is intact; after "
                    f"freeing space resume with: {self.resume_command(self.last_checkpoint)}"
                    if self.last_checkpoint is not None else "no checkpoint was written")
            fail(_one_line(f"{e.filename or what}: cannot write {what} "
                           f"({e.strerror or e}); training stopped; {kept}"))

    # -- the run ----------------------------------------------------------------
    def run(self) -> int:
        from scratchcnn.data.cifar10 import DataError
        from scratchcnn.data.datasets import dataset_for_run

        a = self.args
        if not a.eval_only and not a.distributed:  # compile workers first: data loads meanwhile
            from scratchcnn.warmup import begin_start

            if a.resume:  # a bad checkpoint, or flags it contradicts, fail before compiling
                self._settings()

            self.compile_jobs, self.serial_first = begin_start(
                a.backend, a.cold_start == "serial-first", say=lambda m: print(m, flush=True))
        try:
            # progress: a "Downloading" line, and a bar only if stderr is a terminal
            self.data = data = dataset_for_run(
                a.dataset, a.data_dir, checkpoint=a.eval_only or a.resume,
                image_size=a.image_size, threads=_decode_threads(a),
                checkpoint_is_run=not a.eval_only, progress=not a.no_progress)
        except DataError as e:
            fail(str(e))
        a.dataset = data.name
        self._data_ready()
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
        self._say(f"{path}: test loss {test_loss:.4f}  test accuracy "
                  f"{100 * test_acc:.2f}% on {n} {data.name} images "
                  f"({time.perf_counter() - t0:.1f} s)")
        if self.writer:
            write_report(model, data, path.parent, limit=n,
                         batch_size=self.args.eval_batch_size, accuracy=test_acc,
                         weights=str(path))
        return 0

    def evaluate(self, model, loss, images, labels) -> tuple[float, float]:
        """Mean loss and accuracy over a whole image set, in fixed-size batches."""
        from scratchcnn.data.loader import BatchLoader

        with BatchLoader(images, labels, self.args.eval_batch_size, shuffle=False,
                         threads=self.args.loader_threads, prefetch=self.args.prefetch) as ld:
            return self._evaluate_batches(model, loss, ld.epoch(0))

    def train(self, data) -> int:
        """Set up, then train epoch by epoch; 130 when interrupted (checkpoint written)."""
        from scratchcnn.data.loader import BatchLoader

        a = self.args
        if not self._set_up(data):
            return 0
        self.first_batch_seconds, self.startup_recorded = None, False
        stop = self._stop_requested()
        loader = BatchLoader(self.train_x, self.train_y, self.settings["batch_size"],
                             shuffle=True, seed=self.settings["seed"],
                             augment=self.settings["augment"], threads=a.loader_threads,
                             prefetch=a.prefetch)
        finished = False
        try:
            if self.progress.batch >= len(loader):
                raise ValueError(f"{self.resume_path}: corrupt checkpoint: its position, batch "
                                 f"{self.progress.batch}, is past the end of an epoch of "
                                 f"{len(loader)} batches; use another checkpoint")
            for epoch in range(self.progress.epoch + 1, a.epochs + 1):
                if not self._train_epoch(loader, epoch, stop):
                    return self._interrupted(f"at epoch {epoch}, batch "
                                             f"{self.progress.batch}/{len(loader)}")
                self._end_epoch(epoch, loader)
                self._epoch_done(epoch)
                if self._agree(stop.requested) and epoch < a.epochs:
                    return self._interrupted(f"after epoch {epoch}")
            finished = True
        finally:
            loader.close()
            stop.restore()
            self._finish_background(interrupted=not finished)
        self._say(f"done: best test accuracy {100 * self.progress.best_test_acc:.2f}%; run "
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
        self.model, self.loss = self._model(settings["seed"])
        self.opt = self._optimizer()
        if self.resume_arrays is not None:
            restore(self.resume_arrays, str(self.resume_path), self.model, self.opt)
            if progress.epoch >= a.epochs and progress.batch == 0:
                self._say(f"{self.resume_path}: already trained for {progress.epoch} epochs "
                      f"(--epochs {a.epochs}); nothing to do")
                return False
            # Rows of the epochs the checkpoint covers (later ones: written before a kill
            # that came ahead of their checkpoint), from the resumed run's folder.
            resumed_metrics = _read_metrics(self.resume_path.parent / "metrics.jsonl",
                                            up_to=progress.epoch)
        self._model_ready()
        self.out = self._run_dir()
        self.last_checkpoint = self.resume_path  # None for a new run
        n_train = min(settings["limit_train"] or len(data.train_labels), len(data.train_labels))
        n_test = min(settings["limit_test"] or len(data.test_labels), len(data.test_labels))
        self.train_x, self.train_y = data.train_images[:n_train], data.train_labels[:n_train]
        self.test_x, self.test_y = data.test_images[:n_test], data.test_labels[:n_test]

        t0 = time.perf_counter()
        from scratchcnn.warmup import CompileJobs, ensure_compiled, free_cores

        jobs, self.compile_jobs = self.compile_jobs, None
        if jobs is not None:  # started by run(), before the data: the warm-up began then
            t0 = jobs.t0
            jobs.finish(progress=self.show_progress)
        elif not self.serial_first:  # cold cache: compile in processes
            ensure_compiled(a.backend, say=lambda m: self._say(m, flush=True),
                            progress=self.show_progress)
        if self.serial_first:
            # the free cores the serial compile measured (else now), less the one that trains
            n = max(1, (jobs.jobs if jobs is not None else free_cores()) - 1)
            self._say(f"compiling the parallel kernels in the background ({n} process(es)); "
                      f"training starts on the serial kernels and switches to the parallel "
                      f"ones when they are ready (same results, bit for bit)", flush=True)
            self.background = CompileJobs("parallel", n)
            self._use_backend("serial")
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
            **self._config_extra(),
        }
        progress.config = {"settings": settings, "dataset": data.meta()}
        self.metrics = resumed_metrics if self.resume_path is not None else []
        if self.writer:
            self._write_start(config)
        self._say(f"run folder: {self.out}  |  {data.name}: {n_train} train / {n_test} test "
                  f"images  |  backend {a.backend}, {_compute_units(a)}"
                  f"{' (serial kernels until then)' if self.background else ''}, "
                  f"{a.loader_threads} loader thread(s)"
                  f"{' (auto)' if a.loader_threads_auto else ''}"
                  f"  |  JIT warm-up {compile_seconds:.1f} s")
        return True

    def _use_backend(self, name: str) -> None:
        """Model, loss and optimizer call ``name``'s kernels from the next step on (CPU
        backends: the parameters and the optimizer state stay where they are)."""
        self.model.backend = self.loss.backend = self.opt.backend = name

    def _maybe_switch_to_parallel(self, epoch: int, batch: int) -> None:
        """Between two steps of a serial-first start (``batch`` steps of ``epoch`` done):
        once the background compile has finished, load the parallel kernels (from the
        cache) and train on them."""
        try:
            if self.background is None or not self.background.ready():
                return
        except RuntimeError as e:  # the worker died: keep training, on the serial kernels
            self.background = None
            self._say_above_bar(f"{e}; training goes on with the serial kernels")
            return
        from scratchcnn.loop import warm_up

        compiled = self.background.result["seconds"]
        self.background = None
        self._use_backend("parallel")
        warm_up(self.model, self.loss, self.opt, input_shape=self.data.input_shape,
                loader=False)
        self._say_above_bar(f"parallel kernels ready (compiled in the background in "
                            f"{compiled:.1f} s): {self.args.threads} thread(s) from epoch "
                            f"{epoch}, batch {batch + 1} on, "
                            f"{time.perf_counter() - _LAUNCH:.1f} s after launch")

    def _say_above_bar(self, line: str) -> None:
        """print(), on the process that reports, above a progress bar: tqdm.write clears
        the bar first, so the line never lands on it."""
        if self.writer:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

    def _finish_background(self, interrupted: bool) -> None:
        """At the end of a run whose parallel kernels still compile: wait for them (the
        next run then starts warm), unless the run was interrupted or Ctrl-C comes."""
        bg, self.background = self.background, None
        try:
            if bg is None or bg.ready():
                return
        except RuntimeError as e:  # a worker died: nothing to wait for
            self._say(f"{e}; the next run compiles the parallel kernels again")
            return
        if interrupted:
            bg.stop()
            return
        self._say("finishing the parallel kernels' background compile, so that the next run "
                  "starts warm (Ctrl-C skips it)", flush=True)
        try:
            bg.finish(progress=False)
        except KeyboardInterrupt:
            bg.stop()
            self._say("skipped: the next run compiles them again")

    def _write_start(self, config: dict) -> None:
        """config.json, the metrics rows kept so far, best.npz carried over from a resume."""
        from scratchcnn.files import write_bytes_atomic, write_text_atomic

        self._write("config.json", lambda: write_text_atomic(
            self.out / "config.json", json.dumps(config, indent=2, default=str) + "\n"))
        self._write("metrics.jsonl", lambda: _write_metrics(self.out / "metrics.jsonl",
                                                            self.metrics))
        if self.resume_path is not None:
            best = self.resume_path.parent / "best.npz"
            if self.resume_path.parent.resolve() != self.out.resolve() and best.is_file():
                data = best.read_bytes()  # carried over with the metrics rows
                self._write("best.npz", lambda: write_bytes_atomic(self.out / "best.npz", data))

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

        a, progress = self.args, self.progress
        skip = progress.batch
        self.opt.lr = lr_for_epoch(self.settings["lr_schedule"], self.settings["lr"], epoch,
                                   a.epochs)
        sums = progress.partial if skip else {
            "loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "wait": 0.0}
        self.resumed_mid_epoch = bool(skip)
        wait_before = sums["wait"]
        bar = tqdm(total=len(loader), initial=skip, desc=f"epoch {epoch}/{a.epochs}",
                   unit="batch", leave=False, dynamic_ncols=True,
                   disable=not self.show_progress)
        t_start = time.perf_counter()
        try:
            for b, (x, y) in enumerate(loader.epoch(epoch, start=skip), start=skip):
                if self.first_batch_seconds is None:
                    self.first_batch_seconds = time.perf_counter() - _LAUNCH
                    self._say_above_bar(f"first batch {self.first_batch_seconds:.1f} s after "
                                        f"launch (data loading, Numba import and JIT warm-up "
                                        f"included)")
                try:
                    step, stopping = self._step(x, y, stop.requested)
                except FloatingPointError as e:  # loss, gradient or weight not finite
                    bar.close()
                    kept = (f"the last good checkpoint ({progress.epoch} epochs) is "
                            f"{self.last_checkpoint}" if self.last_checkpoint is not None
                            else "no checkpoint was written")
                    fail(f"{e} at epoch {epoch}, batch {b + 1}; training stopped, {kept}; "
                         f"try a lower --lr")
                if self.background is not None:
                    self._maybe_switch_to_parallel(epoch, b + 1)
                sums["loss"] += step.loss * step.count
                sums["correct"] += step.correct
                sums["seen"] += step.count
                bar.update(1)
                if b % 20 == 0 or b == len(loader) - 1:
                    el = sums["seconds"] + time.perf_counter() - t_start
                    bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}",
                                    img_s=f"{sums['seen'] / max(el, 1e-9):.0f}", refresh=False)
                if stopping and b + 1 < len(loader):
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

        def checkpoint(path: Path) -> None:
            self._write(path.name, lambda: save_checkpoint(path, self.model, self.opt, progress))

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
            **self._row_extra(),
        }
        if not self.startup_recorded:  # the first epoch this process trained
            row["seconds_to_first_batch"] = self.first_batch_seconds
            self.startup_recorded = True
        self.metrics.append(row)
        progress.epoch, progress.batch, progress.partial = epoch, 0, {}
        best = test_acc > progress.best_test_acc
        if best:
            progress.best_test_acc = test_acc
        if self.writer:
            # Metrics first, checkpoint last: a kill in between leaves a row ahead of the
            # checkpoint, which a resume drops (rows are kept up to the checkpoint's epoch);
            # the other order would lose the row for good.
            self._write("metrics.jsonl",
                        lambda: _write_metrics(out / "metrics.jsonl", self.metrics))
            if best:
                checkpoint(out / "best.npz")
            checkpoint(out / "checkpoint.npz")
            s = self.settings
            self._write("curves.png", lambda: plot_curves(
                self.metrics, out / "curves.png",
                title=f"scratchcnn, {a.backend} backend, batch {s['batch_size']}, "
                      f"{s['optimizer']}"))
        self.last_checkpoint = out / "checkpoint.npz"
        self._say(f"epoch {epoch:>3}/{a.epochs}  train loss {row['train_loss']:.4f} "
              f"acc {100 * row['train_acc']:.2f}%  |  test loss {test_loss:.4f} "
              f"acc {100 * test_acc:.2f}%  |  {row['epoch_seconds']:.1f} s  "
              f"{row['images_per_second']:.0f} img/s  data wait "
              f"{row['loader_wait_seconds']:.2f} s", flush=True)

    def _interrupted(self, where: str) -> int:
        """After a stop request: checkpoint (mid-epoch position included), say how to resume."""
        from scratchcnn.checkpoint import save_checkpoint

        ckpt = self.out / "checkpoint.npz"
        if self.progress.batch:
            if self.writer:
                self._write("checkpoint.npz",
                            lambda: save_checkpoint(ckpt, self.model, self.opt, self.progress))
            self.last_checkpoint = ckpt
        if self.last_checkpoint is None:
            self._say(f"interrupted {where}; no checkpoint yet, nothing to resume",
                      file=sys.stderr)
            return 130
        self._say(f"interrupted {where}; checkpoint written. Resume with: "
              f"{self.resume_command(self.last_checkpoint)}", file=sys.stderr)
        return 130


def _compute_units(a: argparse.Namespace) -> str:
    """What computes: "N thread(s)" on the CPU, the GPU (or simulator) for cuda."""
    if a.backend == "cuda":
        from scratchcnn.kernels import get_backend

        return "CUDA simulator" if get_backend("cuda").simulator else "GPU"
    return f"{a.threads if a.backend == 'parallel' else 1} thread(s)"


def _checked_settings(settings: dict | None, source: object) -> dict:
    """A checkpoint's run settings, each of the right type and range (ValueError if not)."""
    if settings is None:
        raise ValueError(f"{source}: the checkpoint holds no run settings (saved by the "
                         f"library, not by this command); continue it from Python, or use "
                         f"--eval-only")
    def bad(key: str, want: str) -> ValueError:
        return ValueError(f"{source}: corrupt checkpoint settings: {key!r} must be {want}, got "
                          f"{settings.get(key)!r}; use another checkpoint or start a new run")

    def count(v: object, lo: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= lo

    if isinstance(settings, dict):  # written before these settings existed
        settings = {**{k: v for k, v in LATER_SETTINGS.items() if k not in settings},
                    **settings}
    if set(settings) != set(RUN_DEFAULTS):
        raise ValueError(f"{source}: corrupt checkpoint settings: expected the keys "
                         f"{sorted(RUN_DEFAULTS)}, got {sorted(settings)}; use another "
                         f"checkpoint or start a new run")
    if not count(settings["batch_size"], 1):
        raise bad("batch_size", "an integer >= 1")
    if settings["optimizer"] not in DEFAULT_LR:
        raise bad("optimizer", f"one of {sorted(DEFAULT_LR)}")
    lr = settings["lr"]
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool)
                               and math.isfinite(lr) and lr > 0):
        raise bad("lr", "a finite number > 0")
    m = settings["momentum"]
    if not (isinstance(m, (int, float)) and not isinstance(m, bool) and 0 <= m < 1):
        raise bad("momentum", "a number in [0, 1)")
    if not count(settings["seed"], 0):
        raise bad("seed", "an integer >= 0")
    if not isinstance(settings["augment"], bool):
        raise bad("augment", "true or false")
    if settings["lr_schedule"] not in LR_SCHEDULES:
        raise bad("lr_schedule", f"one of {list(LR_SCHEDULES)}")
    if settings["dataset"] not in ("cifar10", "fashion-mnist", "mnist", "folder"):
        raise bad("dataset", "cifar10, fashion-mnist, mnist or folder")
    for key in ("limit_train", "limit_test"):
        if settings[key] is not None and not count(settings[key], 1):
            raise bad(key, "null or an integer >= 1")
    return dict(settings)


def _read_metrics(path: Path, up_to: int) -> list[dict]:
    """Metrics of the epochs a resumed checkpoint already covers (later lines dropped).

    Every line must be a JSON object with an integer ``epoch``; a damaged file is a
    one-line ValueError naming the file and the line."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read ({_one_line(e)}); delete or repair it to "
                         f"resume") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise ValueError(f"{path}: line {n} is not a metrics row (a JSON object with an "
                             f"integer 'epoch' >= 1); repair or delete that line, or delete "
                             f"the file, to resume")
        if epoch <= up_to:
            rows.append(row)
    return rows


def _write_metrics(path: Path, rows: list[dict]) -> None:
    from scratchcnn.files import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
