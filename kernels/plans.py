"""Plans: what a CPU backend gives a layer for one input geometry.

A layer reads like the math; a plan reads like the machine. ``Conv2D`` asks
its backend for a plan per input shape (``backend.conv2d_plan(...)``) and calls
``plan.forward(x, w, b, out)`` / ``plan.backward(dout, w, dw, db, dx)``. The
plan owns everything the fast kernels need besides their inputs and outputs:
the workspaces (the weights and bias side by side, the unrolled patches kept
from forward for the weight gradient, the per-group partial weight gradients,
per-thread scratch: a tile for a group's product, its patch gradients), the
sample-group size, and the number of
scratch slots, which on the parallel backend follows the current thread count.
None of it changes a result bit: the group size depends only on the shapes,
and the slot count only decides which scratch a thread reuses (tests check).

The CUDA backend has its own plan (``cuda.py``) with the same methods, minus
the conv + ReLU + pool fusion.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from .conv_fast import conv2d_workspace_shapes


def _pair(v) -> tuple[int, int]:
    a, b = v
    return int(a), int(b)


class Conv2DPlan:
    """The fast convolution kernels of one CPU backend for one geometry.

    ``x_shape`` (N, C, H, W), ``w_shape`` (F, C, KH, KW), ``stride`` and
    ``padding`` pairs. ``group_batch``: the batch size the sample groups are
    chosen for (default N). A data-parallel rank holding a share of a global
    batch passes the global size, so its share is cut into the same groups as
    the one-process run (N must then be a multiple of the group size).
    """

    def __init__(self, k: SimpleNamespace, slots: Callable[[], int], x_shape: tuple,
                 w_shape: tuple, stride, padding, dtype, group_batch: int | None = None) -> None:
        from .conv_fast import group_size

        self._k, self._slots = k, slots
        n, c, h, w = (int(v) for v in x_shape)
        f, _, kh, kw = (int(v) for v in w_shape)
        (self.sh, self.sw), (self.ph, self.pw) = _pair(stride), _pair(padding)
        self.oh = (h + 2 * self.ph - kh) // self.sh + 1
        self.ow = (w + 2 * self.pw - kw) // self.sw + 1
        self.out_shape = (n, f, self.oh, self.ow)
        self.dtype = np.dtype(dtype)
        gb = n if group_batch is None else int(group_batch)
        self.group = group_size(gb, self.oh * self.ow)
        if n % self.group:
            raise ValueError(f"a batch share of {n} is not a multiple of the sample-group "
                             f"size {self.group} chosen for a batch of {gb}")
        self._geometry = (n, c, h, w, f, kh, kw, self.sh, self.sw, self.ph, self.pw)
        shapes = conv2d_workspace_shapes(*self._geometry, group=self.group, slots=1)
        alloc = {key: np.empty(shapes[key], self.dtype) for key in ("wb", "cols", "partial")}
        self._wb, self._cols, self._partial = alloc["wb"], alloc["cols"], alloc["partial"]
        self._no_argmax = np.zeros((1, 1, 1, 1), np.int32)  # the pool=False calls' argmax
        self._scratch: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._unused_dx: np.ndarray | None = None
        self.num_groups = self._partial.shape[0]

    def _slot_scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """(dcols, tile) with one slot per thread that runs the backward (allocated once
        per slot count)."""
        s = self._slots()
        scratch = self._scratch.get(s)
        if scratch is None:
            shapes = conv2d_workspace_shapes(*self._geometry, group=self.group, slots=s)
            scratch = self._scratch[s] = (np.empty(shapes["dcols"], self.dtype),
                                          np.empty(shapes["tile"], self.dtype))
        return scratch

    def _dx(self, dx):
        """dx, or (no input gradient wanted) an array of its shape the kernels leave alone."""
        if dx is not None:
            return dx
        if self._unused_dx is None:
            self._unused_dx = np.empty(self._geometry[:4], self.dtype)
        return self._unused_dx

    # -- the convolution ------------------------------------------------------------
    # A convolution without a pool runs through the conv + ReLU + pool kernels too, with
    # pool=False (the bits of conv2d_forward / conv2d_backward): one compiled kernel pair
    # serves every convolution, so a cold start compiles two conv kernels, not four.
    def forward(self, x, w, b, out, *, relu: bool = False) -> None:
        """out = conv(x, w) + b (then max(., 0) if ``relu``); keeps x's patches for backward."""
        _, tile = self._slot_scratch()
        self._k.conv2d_relu_pool_forward(x, w, b, self.sh, self.sw, self.ph, self.pw, self.oh,
                                         self.ow, relu, False, self._wb, self._cols, tile, out,
                                         self._no_argmax)

    def backward(self, dout, w, dw, db, dx=None) -> None:
        """dw, db and (unless ``dx`` is None) dx from d(loss)/d(out) of the last forward."""
        dcols, tile = self._slot_scratch()
        self._k.conv2d_relu_pool_backward(dout, self._no_argmax, dout, w, self._cols, self.sh,
                                          self.sw, self.ph, self.pw, self.oh, self.ow, False,
                                          dx is not None, tile, self._partial, dcols, dw, db,
                                          self._dx(dx))

    # -- conv + ReLU + 2x2 max-pool as one kernel ---------------------------------------
    def forward_relu_pool(self, x, w, b, pout, argmax) -> None:
        """pout, argmax = maxpool2x2(relu(conv(x, w) + b)); the conv output is never written."""
        _, tile = self._slot_scratch()
        self._k.conv2d_relu_pool_forward(x, w, b, self.sh, self.sw, self.ph, self.pw, self.oh,
                                         self.ow, True, True, self._wb, self._cols, tile, pout,
                                         argmax)

    def backward_relu_pool(self, dpool, argmax, pout, w, dw, db, dx=None) -> None:
        """The gradients of ``forward_relu_pool`` from d(loss)/d(pout)."""
        dcols, tile = self._slot_scratch()
        self._k.conv2d_relu_pool_backward(dpool, argmax, pout, w, self._cols, self.sh, self.sw,
                                          self.ph, self.pw, self.oh, self.ow, True,
                                          dx is not None, tile, self._partial, dcols, dw, db,
                                          self._dx(dx))

    # -- the weight gradient's pieces -------------------------------------------------
    def gradient_pieces(self) -> dict[str, np.ndarray]:
        """The last backward's un-summed weight gradient: ``per_group`` (groups, F, K+1),
        one (dw | db) product per sample group, in sample order."""
        return {"per_group": self._partial}


def make_conv2d_plan(k: SimpleNamespace, slots: Callable[[], int]) -> Callable[..., Conv2DPlan]:
    """The backend's ``conv2d_plan(x_shape, w_shape, stride, padding, dtype, group_batch=None)``."""

    def conv2d_plan(x_shape, w_shape, stride, padding, dtype, group_batch=None) -> Conv2DPlan:
        return Conv2DPlan(k, slots, x_shape, w_shape, stride, padding, dtype, group_batch)

    return conv2d_plan
