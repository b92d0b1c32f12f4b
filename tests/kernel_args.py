"""Workspace arguments for calling the conv kernels directly in tests."""

from __future__ import annotations

import numpy as np


def conv_workspaces(shapes_fn, x_shape, w_shape, stride, pad, dtype, group=None,
                    slots=None) -> dict:
    """NaN-filled workspaces (a kernel that reads before writing shows up as NaN)."""
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    kwargs = {} if group is None else {"group": group}
    if slots is not None:
        kwargs["slots"] = slots
    shapes = shapes_fn(n, c, h, w, f, kh, kw, *stride, *pad, **kwargs)
    return {k: np.full(v, np.nan, dtype) for k, v in shapes.items()}


def window_order(oh: int, ow: int) -> np.ndarray:
    """The conv-plane pixel index (row * ow + col) of each window-major index t = q*PP + w
    of the fused conv + pool kernels (kernels/windows.py): q = 2*dy + dx the place in the
    window, w = i*PW + j the window."""
    ph, pw = oh // 2, ow // 2
    q, i, j = np.meshgrid(np.arange(4), np.arange(ph), np.arange(pw), indexing="ij")
    return ((2 * i + q // 2) * ow + 2 * j + q % 2).ravel()


def plane_argmax(fam: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """The fused kernels' argmax (window-major) as the separate pool's (conv-plane index)."""
    return window_order(oh, ow)[fam].astype(np.int32)
