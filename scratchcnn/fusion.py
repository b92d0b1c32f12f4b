"""Conv + ReLU + 2x2 max-pool as one layer, and the build step that makes it.

The reference network follows its first two ReLU convolutions by a 2x2,
stride-2 max-pool. Run as two layers, the convolution writes its whole output
and the pool reads it back (and the same again backward). On the CPU backends
one kernel does both (``kernels/convpool.py``): the pooling runs on each
sample group's product while it is in cache, the convolution's output is
never written, and only the pixels the pool reads are computed (conv2's last row
and column are not). The result equals the two layers one after the other to
rounding: the gradients are sums of fewer terms in another order, so their bits
differ from the unfused layers' (and agree across backends and thread counts,
as always); the pooled output and argmax are the same where BLAS rounds alike.

``Sequential`` calls ``fuse_conv_relu_pool(layers)`` as its build step: every
fusable (Conv2D, MaxPool2D) pair becomes one ``ConvReLUPool`` step that uses
the two layers' public configuration and parameters. The layers themselves
stay in ``Sequential.layers`` (their names key the state dict); the fused step
only runs them.
"""

from __future__ import annotations

import numpy as np

from scratchcnn.kernels import get_backend
from scratchcnn.layers import Conv2D, Layer, MaxPool2D, Parameter


class ConvReLUPool(Layer):
    """``pool.forward(conv.forward(x))`` for a ReLU ``Conv2D`` and a 2x2, stride-2
    ``MaxPool2D``, in one kernel; backward likewise. Its parameters are the conv's."""

    kind = "conv_relu_pool"

    def __init__(self, conv: Conv2D, pool: MaxPool2D) -> None:
        if not self.can_fuse(conv, pool):
            raise ValueError(f"{conv.name}+{pool.name}: ConvReLUPool needs a Conv2D with "
                             f"activation='relu' and a 2x2, stride-2 MaxPool2D on the same "
                             f"CPU backend")
        self.conv, self.pool = conv, pool
        super().__init__(backend=conv.backend, dtype=conv.dtype, name=f"{conv.name}+{pool.name}")

    @staticmethod
    def can_fuse(conv: Layer, pool: Layer) -> bool:
        """A ReLU convolution then a 2x2, stride-2 max-pool, on a backend with the fused
        kernels (the CPU ones)."""
        return (isinstance(conv, Conv2D) and isinstance(pool, MaxPool2D)
                and conv.activation == "relu" and pool.pool_size == (2, 2)
                and pool.stride == (2, 2) and conv.backend == pool.backend
                and conv.dtype == pool.dtype
                and getattr(get_backend(conv.backend), "fuses_conv_relu_pool", False))

    def params(self) -> list[Parameter]:
        return self.conv.params()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.pool.output_shape(self.conv.output_shape(input_shape))

    def forward(self, x: np.ndarray) -> np.ndarray:
        conv = self.conv
        x = self._input(x, ("N", conv.in_channels, "H", "W"))
        plan = self._plan = conv.plan_for(x.shape)
        n, f, oh, ow = plan.out_shape
        if oh < 2 or ow < 2:
            raise ValueError(f"{self.pool.name}: input {plan.out_shape} is smaller than the "
                             f"2x2 pooling window")
        self._in_shape = x.shape
        self._out_shape = (n, *self.pool.output_shape((f, oh, ow)))
        out = self._out = self._buf("out", self._out_shape)
        self._argmax = self._buf("argmax", self._out_shape, np.int32)
        plan.forward_relu_pool(x, conv.weight.value, conv.bias.value, out, self._argmax)
        return out

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dout = self._check_dout(dout)
        w, b = self.conv.weight, self.conv.bias
        dx = self._buf("dx", self._in_shape) if need_input_grad else None
        self._plan.backward_relu_pool(dout, self._argmax, self._out, w.value, w.grad, b.grad, dx)
        return dx

    def gradient_pieces(self) -> dict[str, np.ndarray]:
        """As ``Conv2D.gradient_pieces``: the per-group weight and bias gradients."""
        return self._plan.gradient_pieces()

    def finish_gradients(self, pieces: dict[str, np.ndarray]) -> None:
        self.conv.finish_gradients(pieces)


def fuse_conv_relu_pool(layers: list[Layer]) -> list[Layer]:
    """The steps a ``Sequential`` runs: ``layers`` with every fusable (conv, pool) pair
    replaced by one ``ConvReLUPool``."""
    steps: list[Layer] = []
    i = 0
    while i < len(layers):
        if i + 1 < len(layers) and ConvReLUPool.can_fuse(layers[i], layers[i + 1]):
            steps.append(ConvReLUPool(layers[i], layers[i + 1]))
            i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps
