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
