"""Shared pieces of the training benchmarks (bench/compare.py, bench/loader.py).

* :class:`ScratchRun` — one configuration of our network (backend + thread
  count): the same model, loss, optimizer and loop as ``scratchcnn.train``,
  trained epoch by epoch, optionally with per-layer timers.
* :class:`Timers` — wraps ``forward``/``backward``/``step`` methods of the
  layers, the loss and the optimizer from outside (instance attributes that
  shadow the class methods), accumulating ``perf_counter`` seconds per part.
* :func:`training_flops` — FLOPs per training image, from the layer shapes.
* :func:`warm_up_backend` — JIT warm-up (compile or cache load), timed.
* :func:`spread` — min / median / max of a list of timings.

Numba must already be configured (``scratchcnn.threads.configure_threads``)
before this module is imported: it imports the numerical parts of the package.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np

from scratchcnn.data.loader import BatchLoader
from scratchcnn.fusion import ConvReLUPool
from scratchcnn.layers import Conv2D, Dense
from scratchcnn.loop import evaluate, train_step, warm_up
from scratchcnn.losses import SoftmaxCrossEntropy
from scratchcnn.model import Sequential, reference_cnn
from scratchcnn.optim import Adam

BATCH_SIZE = 32
EVAL_BATCH_SIZE = 250
LR = 1e-3


def spread(values: list[float]) -> dict[str, float]:
    """``{"min", "median", "max", "n"}`` of ``values`` (every timing shows its spread)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; else ``os.cpu_count()``."""
    cores, phys = set(), "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    cores.add((phys, value))
    except OSError:
        pass
    return len(cores) or (os.cpu_count() or 1)


# -- FLOPs ---------------------------------------------------------------------------


def training_flops(model: Sequential, input_shape: tuple[int, int, int] = (3, 32, 32)) -> dict:
    """FLOPs of one training image through ``model``: forward + backward, per layer.

    Counted: the multiply-adds (2 FLOPs each) of the convolutions and dense
    layers, the only layers with a GEMM's worth of work.

    * conv forward: ``2 * F * C * KH * KW * OH * OW``; dense forward ``2 * I * O``;
    * backward: the weight gradient costs as much as the forward, and so does
      the input gradient — which the first layer does not compute
      (``Sequential.backward`` skips it). So backward = 2x forward, except 1x
      for the first layer.

    Not counted (< 1 % together): bias adds, ReLU, pooling, the loss, the
    optimizer. Returns ``{"per_layer": {name: {...}}, "per_image": total}``.
    """
    shape = tuple(input_shape)
    per_layer, total = {}, 0
    for i, layer in enumerate(model.layers):
        out = layer.output_shape(shape)
        fwd = 0
        if isinstance(layer, Conv2D):
            kh, kw = layer.kernel_size
            fwd = 2 * layer.out_channels * layer.in_channels * kh * kw * out[1] * out[2]
        elif isinstance(layer, Dense):
            fwd = 2 * layer.in_features * layer.out_features
        if fwd:
            bwd = fwd if i == 0 else 2 * fwd
            per_layer[layer.name] = {"forward": fwd, "backward": bwd, "total": fwd + bwd}
            total += fwd + bwd
        shape = out
    return {"per_layer": per_layer, "per_image": total}


def peak_for(threads: int, peak: dict) -> float:
    """The GEMM peak (GFLOP/s) that ``threads`` threads can reach on this machine.

    1 thread: the measured 1-thread peak; at least as many threads as cores:
    the measured all-core peak; in between: n x the 1-thread peak, capped at
    the all-core peak.
    """
    if threads <= 1:
        return peak["one_thread_gflops"]
    if threads >= peak["all_threads"]:
        return peak["all_threads_gflops"]
    return min(threads * peak["one_thread_gflops"], peak["all_threads_gflops"])


# -- timers --------------------------------------------------------------------------


class Timers:
    """Seconds spent in wrapped methods, by part name; ``reset()`` between epochs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: object, method: str, part: str) -> None:
        """Replace ``obj.method`` by a timed call of the original (instance attribute)."""
        original: Callable = getattr(obj, method)
        seconds = self.seconds
        clock = time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[part] += clock() - t0

        timed.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(obj, method, timed)

    def instrument(self, model: Sequential, loss: SoftmaxCrossEntropy, opt: Adam) -> None:
        """Time every layer's forward and backward, the loss and the optimizer step."""
        for step in model.steps:  # a fused conv + ReLU + pool step counts as its conv
            name = step.conv.name if isinstance(step, ConvReLUPool) else step.name
            self.wrap(step, "forward", f"{name} forward")
            self.wrap(step, "backward", f"{name} backward")
        self.wrap(loss, "forward", "loss")
        self.wrap(loss, "backward", "loss")
        self.wrap(opt, "step", "optimizer")

    def reset(self) -> None:
        self.seconds.clear()


# -- one configuration -----------------------------------------------------------------


@dataclass
class EpochResult:
    """What one timed epoch produced. ``parts``: seconds per part (empty if not timed)."""

    seconds: float
    images: int
    train_loss: float
    train_acc: float
    wait_seconds: float
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def breakdown(result: EpochResult) -> dict[str, float]:
    """Seconds per part, plus data wait and "other" (the loop's remaining time)."""
    parts = dict(result.parts)
    parts["data wait"] = result.wait_seconds
    parts["other"] = max(result.seconds - sum(parts.values()), 0.0)
    return parts


class ScratchRun:
    """Our reference network under one backend and thread count, trained like train.py.

    ``name`` is e.g. ``"serial"`` or ``"parallel@4"``. ``instrument`` adds the
    per-part timers (about 30 ``perf_counter`` pairs per batch).
    """

    kind = "scratchcnn"

    def __init__(self, backend: str, threads: int, seed: int, *, instrument: bool = False,
                 lr: float = LR) -> None:
        self.backend, self.threads = backend, threads
        self.name = "serial" if backend == "serial" else f"{backend}@{threads}"
        self.model = reference_cnn(seed=seed, backend=backend)
        self.loss = SoftmaxCrossEntropy(backend=backend)
        self.opt = Adam(self.model.parameters(), lr=lr, backend=backend)
        self.timers: Timers | None = None
        if instrument:
            self.timers = Timers()
            self.timers.instrument(self.model, self.loss, self.opt)

    def _use_threads(self) -> None:
        # Thread-local: must run in the thread that trains (this one).
        if self.backend == "parallel":
            numba.set_num_threads(self.threads)

    def train_epoch(self, loader: BatchLoader, epoch: int) -> EpochResult:
        """One epoch over ``loader`` (the loop of ``scratchcnn.train``), timed."""
        self._use_threads()
        model, loss, opt = self.model, self.loss, self.opt
        if self.timers:
            self.timers.reset()
        total, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        for x, y in loader.epoch(epoch):
            step = train_step(model, loss, opt, x, y)
            total += step.loss * step.count
            correct += step.correct
            seen += step.count
        seconds = time.perf_counter() - t0
        parts = dict(self.timers.seconds) if self.timers else {}
        return EpochResult(seconds, seen, total / seen, correct / seen, loader.wait_seconds,
                           parts)

    def evaluate(self, loader: BatchLoader) -> tuple[float, float]:
        """Mean loss and accuracy over ``loader``'s images (unshuffled, epoch 0)."""
        self._use_threads()
        return evaluate(self.model, self.loss, loader.epoch(0))

    def weights(self) -> dict[str, bytes]:
        """The raw bytes of every parameter (host copies), for bit-for-bit comparison."""
        return {name: np.ascontiguousarray(a).tobytes()
                for name, a in self.model.state_dict().items()}


def warm_up_backend(backend: str) -> dict:
    """Compile (or load from Numba's cache) every training kernel of ``backend``; timed.

    ``scratchcnn.loop.warm_up`` (what the training CLI runs) on a throwaway model. Returns
    seconds and how many kernels came from the on-disk cache vs were compiled.
    """
    from scratchcnn.kernels import get_backend

    t0 = time.perf_counter()
    model = reference_cnn(seed=0, backend=backend)
    loss = SoftmaxCrossEntropy(backend=backend)
    opt = Adam(model.parameters(), backend=backend)
    warm_up(model, loss, opt, loader=False)
    seconds = time.perf_counter() - t0
    ns = get_backend(backend)
    hits = misses = 0
    for fn in vars(ns).values():
        stats = getattr(fn, "stats", None)
        if stats is not None:
            hits += sum(stats.cache_hits.values())
            misses += sum(stats.cache_misses.values())
    return {"seconds": seconds, "cache_hits": hits, "cache_misses": misses}


def warm_up_loader() -> dict:
    """Compile (or cache-load) the loader's gather/augment kernels; timed."""
    from scratchcnn.data.augment import warm_up

    t0 = time.perf_counter()
    warm_up()
    return {"seconds": time.perf_counter() - t0}
