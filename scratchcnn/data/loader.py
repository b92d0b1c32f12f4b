"""A deterministic, thread-pool batch loader with bounded prefetch.

``BatchLoader(images, labels, batch_size, ...)`` turns the uint8 NCHW dataset
into float32 batches in [0, 1], optionally augmented (random crop with 4-pixel
zero padding, random horizontal flip).

Determinism: the order of epoch ``e`` is a permutation drawn from
``np.random.default_rng([seed, e])`` and the augmentation of batch ``k`` from
``np.random.default_rng([seed, e, k])``. No random state is shared or carried
from one epoch or batch to the next, so

* the batches are bit-for-bit identical whatever the number of loader threads;
* a run resumed at epoch ``e`` sees exactly the batches an uninterrupted run
  would have seen.

Threads: with ``threads=0`` each batch is prepared in the calling thread when
it is asked for. With ``threads >= 1`` a ``ThreadPoolExecutor`` prepares up to
``prefetch`` batches ahead (the gather/augment kernels release the GIL); they
are delivered in order. There is no queue between producer and consumer: the
consumer holds at most ``prefetch`` futures and submits the next batch when it
takes one, so no worker can ever block on a full queue, and closing only has
to cancel futures that have not started. The worker threads run at the lowest
CPU priority on Linux (``low_priority``, see ``lower_thread_priority``).
"""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from . import augment as _augment

if TYPE_CHECKING:  # typing.Self is Python >= 3.11; the package supports 3.10
    from typing import Self

__all__ = ["BatchLoader", "lower_thread_priority", "make_batch"]

#: Name prefix of the loader's worker threads (visible in ``threading.enumerate()``).
THREAD_NAME_PREFIX = "scratchcnn-loader"


def make_batch(
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    augment: bool,
    seed: int,
    epoch: int,
    batch_index: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Prepare batch ``batch_index`` of an epoch whose sample order is ``order``.

    Returns ``(x, y)``: float32 ``(B, C, H, W)`` C-contiguous in [0, 1] and int64
    ``(B,)``. Both are new arrays, owned by the caller. Pure function of its
    arguments: safe to run in any thread, in any order.
    """
    idx = order[batch_index * batch_size:(batch_index + 1) * batch_size]
    x = np.empty((idx.shape[0], *images.shape[1:]), dtype=np.float32)
    if augment:
        rng = np.random.default_rng([seed, epoch, batch_index])
        n = idx.shape[0]
        span = 2 * _augment.PAD + 1
        dy = rng.integers(0, span, size=n, dtype=np.int64)
        dx = rng.integers(0, span, size=n, dtype=np.int64)
        flip = rng.integers(0, 2, size=n, dtype=np.int64)
        _augment.gather_augment_normalize(images, idx, dy, dx, flip, x)
    else:
        _augment.gather_normalize(images, idx, x)
    return x, labels[idx]


def lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19), on Linux only.

    With the parallel backend on every core, a loader thread that wakes up
    preempts a compute thread, and the whole parallel region then waits at its
    barrier for that thread (measured: conv1's forward, the kernel running when
    the next batch is requested, fell from 2.0x to 1.6x on 2 threads). At nice 19
    the loader fills the gaps instead; ``prefetch`` batches ahead absorb the
    delay (the data wait did not change). Linux gives each thread its own nice
    value; elsewhere ``setpriority`` would renice the whole process, so this
    does nothing there.
    """
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 19)  # 0: the calling thread, on Linux
        except OSError:  # a sandbox may forbid it; the loader works the same
            pass


class BatchLoader:
    """Iterate over ``(x, y)`` batches of a uint8 NCHW image set, epoch by epoch.

    Parameters
    ----------
    images : uint8 array (N, C, H, W)
    labels : integer array (N,)
    batch_size : samples per batch; the last batch is smaller unless ``drop_last``.
    shuffle : draw a new order each epoch (else the stored order).
    seed : non-negative int; with the epoch it fixes the order and augmentation.
    augment : random crop (4-pixel zero padding) and horizontal flip.
    threads : loader threads; 0 prepares batches in the calling thread.
    prefetch : at most this many batches prepared ahead (``threads >= 1``).
    drop_last : drop the last, incomplete batch.
    low_priority : run the worker threads at the lowest CPU priority (Linux;
        see :func:`lower_thread_priority`).

    Attributes
    ----------
    wait_seconds : float
        Seconds the consumer spent waiting for batches in the current (most
        recently started) epoch; with ``threads=0``, the preparation time itself.

    Use as a context manager, or call :meth:`close`, to stop the worker threads.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        augment: bool = False,
        threads: int = 2,
        prefetch: int = 4,
        drop_last: bool = False,
        low_priority: bool = True,
    ) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {labels.shape}"
            )
        if labels.size and labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(threads) < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        if int(prefetch) < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.images = np.ascontiguousarray(images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.threads = int(threads)
        self.prefetch = int(prefetch)
        self.drop_last = bool(drop_last)
        self.low_priority = bool(low_priority)
        self.wait_seconds = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def num_samples(self) -> int:
        """Number of images in the set."""
        return int(self.images.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order (int64 permutation) of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterator over the batches ``(x, y)`` of ``epoch`` (a non-negative int).

        ``start`` skips the first batches without preparing them (a run resumed
        in the middle of an epoch continues with exactly the batches it missed).
        Resets :attr:`wait_seconds`. An exception raised while preparing a batch
        is raised here when that batch is due. Closing the iterator (``break``,
        ``del``, garbage collection) cancels the batches prepared ahead.
        """
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= int(start) <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        self.wait_seconds = 0.0
        if self.threads == 0:
            return self._serial(int(epoch), int(start))
        return self._threaded(int(epoch), int(start))

    def _args(self, epoch: int) -> tuple:
        return (
            self.images, self.labels, self.order(epoch), self.batch_size,
            self.augment, self.seed, epoch,
        )

    def _serial(self, epoch: int, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        args = self._args(epoch)
        for k in range(start, len(self)):
            if self._closed:
                raise RuntimeError("BatchLoader is closed")
            t0 = time.perf_counter()
            batch = make_batch(*args, k)
            self.wait_seconds += time.perf_counter() - t0
            yield batch

    def _threaded(self, epoch: int, start: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self._closed:  # closed between epoch() and the first next()
            raise RuntimeError("BatchLoader is closed")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.threads, thread_name_prefix=THREAD_NAME_PREFIX,
                initializer=lower_thread_priority if self.low_priority else None)
        pool = self._pool
        args = self._args(epoch)
        n_batches = len(self)
        pending: collections.deque[Future] = collections.deque()
        submitted = start
        try:
            while submitted < min(start + self.prefetch, n_batches):
                # make_batch is looked up at call time (tests replace it).
                pending.append(pool.submit(make_batch, *args, submitted))
                submitted += 1
            while pending:
                future = pending.popleft()
                t0 = time.perf_counter()
                try:
                    batch = future.result()
                except CancelledError:
                    if self._closed:
                        raise RuntimeError("BatchLoader is closed") from None
                    raise
                finally:
                    self.wait_seconds += time.perf_counter() - t0
                if submitted < n_batches:
                    if self._closed:
                        raise RuntimeError("BatchLoader is closed")
                    pending.append(pool.submit(make_batch, *args, submitted))
                    submitted += 1
                yield batch
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Cancel batches not yet started and stop the worker threads (idempotent).

        Waits only for batches already being prepared (milliseconds each).
        """
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"BatchLoader({self.num_samples} samples, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment}, threads={self.threads}, "
            f"prefetch={self.prefetch}, seed={self.seed})"
        )
