"""Batch-preparation kernels run by the loader threads.

Both kernels gather images by an index vector from the uint8 NCHW dataset and
write float32 values scaled to [0, 1] (``x / 255``, as in the Keras CIFAR-10
tutorial) into a preallocated ``(B, C, H, W)`` float32 output.

They are serial ``@njit(nogil=True, cache=True)`` on purpose:

* ``nogil=True`` lets loader threads run them while the training thread computes;
* no ``parallel=True``: loader threads must only call serial kernels (the
  ``workqueue`` threading layer aborts when parallel functions are entered from
  several Python threads at once; see docs/numba-facts.md);
* the randomness (crop offsets, flips) is drawn by NumPy in Python and passed in
  as arrays, so results do not depend on which thread runs which batch.

Indices are not bounds-checked here (the loader only passes valid ones); crop
offsets of any value are safe: pixels outside the image read as zero.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["PAD", "gather_augment_normalize", "gather_normalize", "warm_up"]

#: Zero padding on each side for the random crop; offsets dy, dx range over 0..2*PAD.
PAD = 4


@numba.njit(nogil=True, cache=True, error_model="numpy")
def gather_normalize(images, indices, out):  # pragma: no cover - compiled
    """out[b] = images[indices[b]] / 255 as float32.

    images: uint8 (N, C, H, W); indices: int64 (B,); out: float32 (B, C, H, W).
    """
    scale = np.float32(255.0)
    C, H, W = images.shape[1], images.shape[2], images.shape[3]
    for b in range(indices.shape[0]):
        i = indices[b]
        for c in range(C):
            for y in range(H):
                for x in range(W):
                    out[b, c, y, x] = np.float32(images[i, c, y, x]) / scale


@numba.njit(nogil=True, cache=True, error_model="numpy")
def gather_augment_normalize(images, indices, dy, dx, flip, out):  # pragma: no cover
    """Gather, random-crop with zero padding, random horizontal flip, scale to [0, 1].

    For sample b, with P = images[indices[b]] zero-padded by PAD on every side
    of each (H, W) plane: crop ``P[:, dy[b]:dy[b]+H, dx[b]:dx[b]+W]`` and, if
    ``flip[b]`` is non-zero, mirror the crop left-right. Then divide by 255.

    images: uint8 (N, C, H, W); indices, dy, dx, flip: int64 (B,), dy and dx in
    0..2*PAD; out: float32 (B, C, H, W).
    """
    scale = np.float32(255.0)
    zero = np.float32(0.0)
    C, H, W = images.shape[1], images.shape[2], images.shape[3]
    for b in range(indices.shape[0]):
        i = indices[b]
        oy = dy[b] - PAD  # crop origin in unpadded coordinates
        ox = dx[b] - PAD
        f = flip[b] != 0
        for c in range(C):
            for y in range(H):
                sy = y + oy
                if sy < 0 or sy >= H:
                    for x in range(W):
                        out[b, c, y, x] = zero
                    continue
                for x in range(W):
                    sx = (W - 1 - x if f else x) + ox
                    if sx < 0 or sx >= W:
                        out[b, c, y, x] = zero
                    else:
                        out[b, c, y, x] = np.float32(images[i, c, sy, sx]) / scale


def warm_up() -> None:
    """Compile (or load from Numba's cache) both kernels now, on tiny arrays.

    Otherwise the first batch of the first epoch pays for it, inside a loader
    thread, and shows up in that epoch's ``wait_seconds``.
    """
    images = np.zeros((1, 3, 2, 2), dtype=np.uint8)
    idx = np.zeros(1, dtype=np.int64)
    out = np.empty((1, 3, 2, 2), dtype=np.float32)
    gather_normalize(images, idx, out)
    gather_augment_normalize(images, idx, idx, idx, idx, out)
