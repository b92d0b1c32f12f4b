"""ReLU kernels on flat (1-D, contiguous) views of any tensor."""

from __future__ import annotations

from numba import prange

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(x, out):
    zero = x.dtype.type(0)
    # PARALLEL: element-wise; element i is read and written by iteration i only.
    for i in prange(x.size):
        v = x[i]
        out[i] = zero if v <= zero else v  # NaN <= 0 is False: relu(NaN) = NaN


def relu_backward(x, dout, dx):
    """dx = 0 where the forward input was <= 0 (the gradient at 0 is 0), else dout.

    A NaN input passes dout through (NaN <= 0 is False), as PyTorch's ReLU does."""
    zero = x.dtype.type(0)
    # PARALLEL: element-wise, as in the forward pass.
    for i in prange(x.size):
        dx[i] = zero if x[i] <= zero else dout[i]
