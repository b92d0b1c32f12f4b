"""BatchLoader: determinism across thread counts, augmentation, errors, shutdown."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

import numpy as np
import pytest

from scratchcnn.data import BatchLoader
from scratchcnn.data import loader as loader_mod
from scratchcnn.data.augment import PAD, gather_augment_normalize, gather_normalize

N = 37  # not a multiple of the batch size: exercises the short last batch


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, size=(N, 3, 8, 6), dtype=np.uint8)  # H != W on purpose
    labels = rng.integers(0, 10, size=N).astype(np.int64)
    return images, labels


def _loader_threads() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate()
        if t.name.startswith(loader_mod.THREAD_NAME_PREFIX) and t.is_alive()
    ]


def _collect(images, labels, epoch, **kw) -> list[tuple[np.ndarray, np.ndarray]]:
    with BatchLoader(images, labels, 8, **kw) as loader:
        return list(loader.epoch(epoch))


def test_len_and_shapes(data):
    images, labels = data
    loader = BatchLoader(images, labels, 8, threads=0)
    assert len(loader) == 5
    batches = list(loader.epoch(0))
    assert [b[0].shape[0] for b in batches] == [8, 8, 8, 8, 5]
    for x, y in batches:
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1:] == (3, 8, 6)
        assert y.dtype == np.int64 and y.shape == (x.shape[0],)
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert len(BatchLoader(images, labels, 8, drop_last=True)) == 4
    assert len(list(BatchLoader(images, labels, 8, drop_last=True, threads=0).epoch(0))) == 4


def test_plain_batches_are_images_over_255(data):
    images, labels = data
    batches = _collect(images, labels, 0, shuffle=False, threads=0)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(x, images.astype(np.float32) / 255)
    np.testing.assert_array_equal(y, labels)


def test_shuffle_is_a_permutation_of_the_data(data):
    images, labels = data
    batches = _collect(images, labels, 3, threads=0)
    x = np.concatenate([b[0] for b in batches])
    order = BatchLoader(images, labels, 8).order(3)
    assert sorted(order.tolist()) == list(range(N))
    np.testing.assert_array_equal(x, images[order].astype(np.float32) / 255)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), labels[order])


@pytest.mark.parametrize("augment", [False, True])
def test_identical_batches_whatever_the_thread_count(data, augment):
    images, labels = data
    runs = {
        threads: _collect(images, labels, 2, threads=threads, augment=augment, seed=7)
        for threads in (0, 1, 4)
    }
    for threads in (1, 4):
        assert len(runs[threads]) == len(runs[0])
        for (x0, y0), (x, y) in zip(runs[0], runs[threads], strict=True):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(y, y0)


def test_same_order_with_and_without_augment_and_resumable(data):
    images, labels = data
    plain = _collect(images, labels, 5, threads=2, seed=3)
    aug = _collect(images, labels, 5, threads=2, seed=3, augment=True)
    for (_, y0), (_, y1) in zip(plain, aug, strict=True):
        np.testing.assert_array_equal(y0, y1)
    # a fresh loader (a resumed run) gives the same epoch 5
    again = _collect(images, labels, 5, threads=0, seed=3, augment=True)
    for (x0, y0), (x1, y1) in zip(aug, again, strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


@pytest.mark.parametrize("threads", [0, 2])
def test_start_skips_to_the_same_batches(data, threads):
    """A run resumed mid-epoch (start=k) gets exactly the batches k, k+1, ... it missed."""
    images, labels = data
    full = _collect(images, labels, 4, threads=threads, augment=True, seed=9)
    with BatchLoader(images, labels, 8, threads=threads, augment=True, seed=9) as loader:
        tail = list(loader.epoch(4, start=3))
        assert list(loader.epoch(4, start=len(loader))) == []
        with pytest.raises(ValueError, match="start"):
            loader.epoch(4, start=len(loader) + 1)
    assert len(tail) == len(full) - 3
    for (x0, y0), (x1, y1) in zip(full[3:], tail, strict=True):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_epochs_and_seeds_differ(data):
    images, labels = data
    loader = BatchLoader(images, labels, 8, threads=0)
    assert not np.array_equal(loader.order(0), loader.order(1))
    assert not np.array_equal(
        loader.order(0), BatchLoader(images, labels, 8, seed=1).order(0)
    )
    y0 = np.concatenate([y for _, y in loader.epoch(0)])
    y1 = np.concatenate([y for _, y in loader.epoch(1)])
    assert not np.array_equal(y0, y1)


def _reference_augment(img: np.ndarray, dy: int, dx: int, flip: int) -> np.ndarray:
    _, h, w = img.shape
    padded = np.pad(img, ((0, 0), (PAD, PAD), (PAD, PAD)))
    crop = padded[:, dy:dy + h, dx:dx + w]
    if flip:
        crop = crop[:, :, ::-1]
    return crop.astype(np.float32) / 255


def test_augment_kernel_matches_numpy_reference(data):
    images, _ = data
    idx = np.array([0, 5, 5, 36, 12, 7], dtype=np.int64)
    dy = np.array([0, 8, 4, 3, 8, 1], dtype=np.int64)
    dx = np.array([0, 8, 4, 7, 0, 2], dtype=np.int64)
    flip = np.array([0, 1, 0, 1, 1, 0], dtype=np.int64)
    out = np.full((len(idx), 3, 8, 6), np.nan, dtype=np.float32)
    gather_augment_normalize(images, idx, dy, dx, flip, out)
    for b in range(len(idx)):
        expected = _reference_augment(images[idx[b]], dy[b], dx[b], flip[b])
        np.testing.assert_array_equal(out[b], expected)


def test_augmented_loader_matches_reference(data):
    images, labels = data
    seed, epoch = 11, 4
    batches = _collect(images, labels, epoch, threads=2, seed=seed, augment=True)
    order = BatchLoader(images, labels, 8, seed=seed).order(epoch)
    for k in (0, 4):  # a full batch and the short last one
        x, _ = batches[k]
        idx = order[8 * k:8 * k + x.shape[0]]
        rng = np.random.default_rng([seed, epoch, k])
        dy, dx = rng.integers(0, 9, len(idx)), rng.integers(0, 9, len(idx))
        flip = rng.integers(0, 2, len(idx))
        for b in range(len(idx)):
            np.testing.assert_array_equal(
                x[b], _reference_augment(images[idx[b]], dy[b], dx[b], flip[b])
            )


def test_plain_kernel(data):
    images, _ = data
    idx = np.array([3, 1, 36], dtype=np.int64)
    out = np.empty((3, 3, 8, 6), dtype=np.float32)
    gather_normalize(images, idx, out)
    np.testing.assert_array_equal(out, images[idx].astype(np.float32) / 255)


@pytest.mark.parametrize("threads", [0, 2])
def test_exception_in_batch_surfaces_in_consumer(data, monkeypatch, threads):
    images, labels = data
    real = loader_mod.make_batch

    def flaky(*args):
        if args[-1] == 3:
            raise ZeroDivisionError("batch 3 is cursed")
        return real(*args)

    monkeypatch.setattr(loader_mod, "make_batch", flaky)
    received = []
    loader = BatchLoader(images, labels, 8, threads=threads, prefetch=2)
    with loader, pytest.raises(ZeroDivisionError, match="batch 3 is cursed"):
        for x, _ in loader.epoch(0):
            received.append(x.shape[0])
    assert received == [8, 8, 8]
    assert not _loader_threads()


def test_close_mid_epoch_is_prompt(data, monkeypatch):
    images, labels = data
    real = loader_mod.make_batch

    made = []

    def slow(*args):
        time.sleep(0.05)
        made.append(1)
        return real(*args)

    monkeypatch.setattr(loader_mod, "make_batch", slow)
    loader = BatchLoader(images, labels, 2, threads=2, prefetch=4)  # 19 batches
    it = loader.epoch(0)
    next(it)
    next(it)
    assert _loader_threads()
    loader.close()
    # close() waits for at most the batches already running (no timing: a count), not
    # for the rest of the epoch: 2 consumed + 4 prefetched + 2 running at most
    assert len(made) <= 2 + 4 + 2 < 19
    assert not _loader_threads()
    with pytest.raises(RuntimeError, match="closed"):
        next(it)
    with pytest.raises(RuntimeError, match="closed"):
        loader.epoch(1)
    loader.close()  # idempotent


@pytest.mark.parametrize("threads", [0, 2])
def test_iterator_made_before_close_does_not_restart_threads(data, threads):
    images, labels = data
    loader = BatchLoader(images, labels, 8, threads=threads)
    it = loader.epoch(0)
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(it)
    assert not _loader_threads()


def test_abandoned_iterator_cancels_prefetched_work(data, monkeypatch):
    images, labels = data
    real = loader_mod.make_batch
    started: list[int] = []

    def counting(*args):
        started.append(args[-1])
        time.sleep(0.1)
        return real(*args)

    monkeypatch.setattr(loader_mod, "make_batch", counting)
    with BatchLoader(images, labels, 2, threads=1, prefetch=3) as loader:  # 19 batches
        it = loader.epoch(0)
        next(it)  # batch 0 taken; batches 1, 2, 3 now queued or running
        del it  # the one worker is busy with batch 1: batches 2 and 3 get cancelled
        gc.collect()
        time.sleep(0.3)
        assert started[:2] == [0, 1] and 3 not in started
    assert not _loader_threads()


def test_prefetch_is_bounded(data, monkeypatch):
    images, labels = data
    real = loader_mod.make_batch
    started: list[int] = []

    def counting(*args):
        started.append(args[-1])
        return real(*args)

    monkeypatch.setattr(loader_mod, "make_batch", counting)
    prefetch = 3
    with BatchLoader(images, labels, 2, threads=2, prefetch=prefetch) as loader:
        for j, _ in enumerate(loader.epoch(0)):
            time.sleep(0.01)  # let the workers run ahead as far as they may
            assert len(started) <= j + 1 + prefetch
    assert sorted(started) == list(range(19))


@pytest.mark.parametrize("threads", [0, 2])
def test_wait_seconds(data, threads):
    images, labels = data
    with BatchLoader(images, labels, 8, threads=threads) as loader:
        assert loader.wait_seconds == 0.0
        for _ in loader.epoch(0):
            assert isinstance(loader.wait_seconds, float) and loader.wait_seconds >= 0.0
        first = loader.wait_seconds
        assert first > 0.0
        it = loader.epoch(1)
        assert loader.wait_seconds == 0.0  # reset per epoch
        list(it)
        assert loader.wait_seconds >= 0.0


def test_no_threads_left_after_full_epochs(data):
    images, labels = data
    with BatchLoader(images, labels, 8, threads=3) as loader:
        for e in range(2):
            list(loader.epoch(e))
        assert 1 <= len(_loader_threads()) <= 3
    assert not _loader_threads()


def test_bad_arguments(data):
    images, labels = data
    with pytest.raises(ValueError):
        BatchLoader(images.astype(np.float32), labels, 8)
    with pytest.raises(ValueError):
        BatchLoader(images, labels[:-1], 8)
    with pytest.raises(ValueError):
        BatchLoader(images, labels, 0)
    with pytest.raises(ValueError):
        BatchLoader(images, labels, 8, threads=-1)
    with pytest.raises(ValueError):
        BatchLoader(images, labels, 8, prefetch=0)
    with pytest.raises(ValueError):
        BatchLoader(images, labels, 8, seed=-1)
    with pytest.raises(ValueError):
        BatchLoader(images, labels, 8).epoch(-1)


def test_warm_up_compiles_the_signature_the_loader_uses(data):
    from scratchcnn.data import augment

    augment.warm_up()
    n_plain = len(augment.gather_normalize.signatures)
    n_aug = len(augment.gather_augment_normalize.signatures)
    images, labels = data
    for aug in (False, True):
        for shuffle in (False, True):
            _collect(images, labels, 0, threads=0, augment=aug, shuffle=shuffle)
    assert len(augment.gather_normalize.signatures) == n_plain
    assert len(augment.gather_augment_normalize.signatures) == n_aug


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("low", [True, False])
def test_loader_threads_run_at_low_priority(data, low):
    images, labels = data
    main_nice = os.getpriority(os.PRIO_PROCESS, 0)
    with BatchLoader(images, labels, 8, threads=2, low_priority=low) as loader:
        list(loader.epoch(0))
        workers = _loader_threads()
        assert workers
        nices = {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in workers}
    assert nices == ({19} if low else {main_nice})
    assert os.getpriority(os.PRIO_PROCESS, 0) == main_nice  # this thread is untouched
