"""Layers: Conv2D, MaxPool2D, Dense, ReLU, Flatten.

A layer owns its parameters and their gradients (``Parameter.value`` and
``Parameter.grad``, float32 by default, float64 for gradient checks), caches
what its backward pass needs, and does no arithmetic itself: it checks its
input and calls the kernels of its backend (``"serial"``, ``"parallel"`` or
``"cuda"``).

Where arrays live is the backend's business: layers allocate through its
array helpers (``self._k.empty``, ``zeros``, ``to_device``). On the CPU
backends these are NumPy; on ``"cuda"`` parameters, gradients and
activations are device arrays and a NumPy input is copied to the device once,
by the first layer that receives it.

Tensors are NCHW: (batch, channels, height, width). ``backward(dout)``
overwrites (does not accumulate) the parameter gradients and returns the
gradient with respect to the layer's input.

Buffers: a layer allocates its outputs, input gradients and workspaces once
per input shape and reuses them for every batch (fresh allocations of several
MB per step cost page faults: about 2.5 ms of a 20 ms step). An array returned
by ``forward`` or ``backward`` is therefore valid until that layer's next call
of the same method; copy it to keep it. ``Sequential.forward`` returns a copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from scratchcnn.checks import ShapeSpec, check_array, check_float_dtype, is_device_array
from scratchcnn.kernels import get_backend


@dataclass
class Parameter:
    """A trainable array and its gradient (same shape and dtype)."""

    name: str
    value: np.ndarray  # or a CUDA device array on the "cuda" backend
    grad: np.ndarray


def glorot_uniform(
    shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator, dtype: np.dtype
) -> np.ndarray:
    """Keras's default kernel initializer: U(-l, l), l = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def _is_int(v: object) -> bool:
    """A Python or NumPy integer (not a bool, not a float that happens to be whole)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _count(v: object, what: str) -> int:
    """An integer >= 1 (a channel or feature count), else a one-line ValueError."""
    if not _is_int(v) or int(v) < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    return int(v)


def _pair(v: int | tuple[int, int], what: str, lo: int = 1) -> tuple[int, int]:
    """An int or a pair of ints, each >= ``lo``, as a pair; else a one-line ValueError."""
    if _is_int(v):
        a, b = v, v
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(e) for e in v):
        a, b = v
    else:
        raise ValueError(f"{what} must be an integer or a pair of integers, got {v!r}")
    if int(a) < lo or int(b) < lo:
        raise ValueError(f"{what} must be >= {lo}, got {v!r}")
    return int(a), int(b)


ACTIVATIONS = (None, "relu")


def _activation(value: str | None, layer: str) -> str | None:
    if value not in ACTIVATIONS:
        raise ValueError(f"{layer}: activation must be None or 'relu', got {value!r}")
    return value


class Layer:
    """Base class. Subclasses implement ``forward``, ``backward``, ``output_shape``."""

    #: Default name stem; Sequential numbers unnamed layers (conv2d_1, ...).
    kind = "layer"

    def __init__(self, *, backend: str = "parallel", dtype: object = np.float32,
                 name: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{self.kind}: name must be a non-empty string, got {name!r}")
        self.name = name or self.kind
        self.auto_named = name is None
        try:
            self.dtype = check_float_dtype(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.name}: {' '.join(str(e).split())}") from None
        try:
            self.backend = backend
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.name}: {' '.join(str(e).split())}") from None

    @property
    def backend(self) -> str:
        """Name of the kernel backend this layer calls."""
        return self._backend_name

    @backend.setter
    def backend(self, name: str) -> None:
        k = get_backend(name)
        old = getattr(self, "_k", None)
        # Moving between host and device copies the parameters (an optimizer built
        # before the move keeps its state where it was: build it afterwards).
        if old is not None and old.device != k.device:
            for p in self.params():
                p.value = k.to_device(old.to_host(p.value))
                p.grad = k.to_device(old.to_host(p.grad))
        self._k: SimpleNamespace = k
        self._backend_name = name
        self.__dict__.pop("_buffers", None)  # buffers live in the old backend's memory

    def _buf(self, key: str, shape: tuple[int, ...], dtype: object = None) -> np.ndarray:
        """The layer's reusable buffer ``key`` with this shape (allocated on first use).

        One buffer per (key, shape, dtype, backend): training batches, a smaller
        last batch and evaluation batches each keep their own.
        """
        dt = np.dtype(self.dtype if dtype is None else dtype)
        cache = self.__dict__.setdefault("_buffers", {})
        full_key = (key, tuple(shape), dt.str, self._backend_name)
        buf = cache.get(full_key)
        if buf is None:
            buf = cache[full_key] = self._k.empty(tuple(shape), dt)
        return buf

    def _parameter(self, name: str, value: np.ndarray) -> Parameter:
        """A Parameter in the backend's memory: ``value`` (host) and a zero gradient."""
        return Parameter(name, self._k.to_device(value), self._k.zeros(value.shape, self.dtype))

    def _input(self, x: object, spec: ShapeSpec) -> np.ndarray:
        """Check ``x`` (host or device array) against ``spec``; return it in backend memory."""
        return self._k.to_device(check_array(self.name, x, spec, self.dtype))

    def params(self) -> list[Parameter]:
        """The layer's trainable parameters (empty for parameter-free layers)."""
        return []

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample input shape (no batch axis)."""
        raise NotImplementedError

    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        raise NotImplementedError  # pragma: no cover - interface

    def _through_activation(self, dout: np.ndarray, applied: bool = False) -> np.ndarray:
        """With a fused ReLU, d(loss)/d(pre-activation) = dout where the output is > 0.

        ``applied``: the caller already zeroed dout where the output is 0
        (``Sequential`` lets a following max-pool do it in its own pass).
        """
        if self.activation is None or applied:
            return dout
        dpre = self._buf("dpre", dout.shape)
        self._k.relu_backward(self._out.reshape(-1), dout.reshape(-1), dpre.reshape(-1))
        return dpre

    def _check_dout(self, dout: np.ndarray) -> np.ndarray:
        shape = getattr(self, "_out_shape", None)
        if shape is None:
            raise RuntimeError(f"{self.name}: backward() called before forward()")
        return self._k.to_device(check_array(f"{self.name} (backward)", dout, shape, self.dtype))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Conv2D(Layer):
    """2-D convolution with bias: (N, C, H, W) -> (N, F, OH, OW).

    ``padding``: an int, a pair (ph, pw), ``"valid"`` (0) or ``"same"`` (odd
    kernels and stride 1 only: (k - 1) // 2 on each side keeps H, W; with a
    larger stride Keras pads the odd row/column at the bottom/right, which the
    symmetric kernels cannot, so that is refused). ``activation="relu"`` applies
    max(., 0) inside the kernel's output pass, as Keras's ``Conv2D(...,
    activation="relu")`` does in one layer (it saves a pass over the output).
    """

    kind = "conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, *, activation: str | None = None,
                 rng: np.random.Generator | None = None, **kw) -> None:
        super().__init__(**kw)
        self.activation = _activation(activation, self.name)
        self.in_channels = _count(in_channels, f"{self.name}: in_channels")
        self.out_channels = _count(out_channels, f"{self.name}: out_channels")
        in_channels, out_channels = self.in_channels, self.out_channels
        self.kernel_size = _pair(kernel_size, f"{self.name}: kernel_size")
        self.stride = _pair(stride, f"{self.name}: stride")
        self.padding = self._resolve_padding(padding)
        kh, kw_ = self.kernel_size
        rng = rng if rng is not None else np.random.default_rng()
        fan_in, fan_out = in_channels * kh * kw_, out_channels * kh * kw_
        shape = (out_channels, in_channels, kh, kw_)
        self.weight = self._parameter("weight",
                                      glorot_uniform(shape, fan_in, fan_out, rng, self.dtype))
        self.bias = self._parameter("bias", np.zeros(out_channels, self.dtype))

    def _resolve_padding(self, padding: int | tuple[int, int] | str) -> tuple[int, int]:
        if isinstance(padding, str) and padding == "valid":
            return (0, 0)
        if isinstance(padding, str) and padding == "same":
            kh, kw = self.kernel_size
            if kh % 2 == 0 or kw % 2 == 0:
                raise ValueError(f"{self.name}: padding='same' needs an odd kernel, "
                                 f"got {self.kernel_size}")
            if self.stride != (1, 1):
                # Keras pads the extra row/column of an uneven total at the bottom/right
                # only; the kernels pad symmetrically, so the result would differ.
                raise ValueError(f"{self.name}: padding='same' needs stride 1 (got stride "
                                 f"{self.stride}): with stride > 1 Keras pads one side more "
                                 f"than the other, which these kernels cannot; pass an explicit "
                                 f"padding=(ph, pw) instead")
            return ((kh - 1) // 2, (kw - 1) // 2)
        if isinstance(padding, str):
            raise ValueError(f"{self.name}: padding must be an int, a pair, 'valid' or 'same', "
                             f"got {padding!r}")
        if not (_is_int(padding) or (isinstance(padding, (tuple, list)) and len(padding) == 2
                                     and all(_is_int(e) for e in padding))):
            raise ValueError(f"{self.name}: padding must be an int, a pair, 'valid' or 'same', "
                             f"got {padding!r}")
        return _pair(padding, f"{self.name}: padding", lo=0)

    def params(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (self.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def _workspace(self, key: str) -> np.ndarray:
        """Workspace ``key`` of the backend's conv kernels for the current input shape."""
        return self._buf(f"ws.{key}", self._ws_shapes[key])

    def _prepare(self, x: object) -> np.ndarray:
        """Check x; set the input/output shapes, the workspace shapes and cols."""
        x = self._input(x, ("N", self.in_channels, "H", "W"))
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"{self.name}: input {x.shape} is smaller than the "
                             f"{kh}x{kw} kernel (with padding {self.padding})")
        self._out_shape = (n, *self.output_shape((c, h, w)))
        self._in_shape = x.shape
        # asked every call (the backend caches the answer): the parallel
        # backend's scratch slots follow the current thread count
        self._ws_shapes = self._k.conv2d_workspace_shapes(n, c, h, w, self.out_channels,
                                                          kh, kw, sh, sw, ph, pw)
        self._cols = self._workspace("cols")  # kept for the weight gradient
        return x

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._prepare(x)
        (sh, sw), (ph, pw) = self.stride, self.padding
        self._pooled_by = None
        out = self._out = self._buf("out", self._out_shape)
        self._k.conv2d_forward(x, self.weight.value, self.bias.value, sh, sw, ph, pw,
                               self.activation == "relu", self._workspace("wb"), self._cols,
                               self._workspace("gemm_out"), out)
        return out

    def backward(self, dout: np.ndarray, need_input_grad: bool = True,
                 activation_applied: bool = False) -> np.ndarray | None:
        if getattr(self, "_pooled_by", None) is not None:
            raise RuntimeError(f"{self.name}: the last forward pass was forward_pooled(); "
                               f"use backward_pooled()")
        dout = self._through_activation(self._check_dout(dout), activation_applied)
        (sh, sw), (ph, pw) = self.stride, self.padding
        dx = self._buf("dx", self._in_shape)  # left untouched without need_input_grad
        self._k.conv2d_backward(dout, self.weight.value, self._cols, sh, sw, ph, pw,
                                need_input_grad, self._workspace("gemm_out"),  # gathered dout
                                self._workspace("partial"), self._workspace("dcols"),
                                self.weight.grad, self.bias.grad, dx)
        return dx if need_input_grad else None

    def can_pool_with(self, pool: Layer) -> bool:
        """Whether ``forward_pooled(x, pool)`` applies: a ReLU conv followed by a 2x2,
        stride-2 max-pool, on a backend with the fused kernels (the CPU ones)."""
        return (self.activation == "relu" and isinstance(pool, MaxPool2D)
                and pool.pool_size == (2, 2) and pool.stride == (2, 2)
                and pool.backend == self.backend
                and hasattr(self._k, "conv2d_relu_pool_forward"))

    def forward_pooled(self, x: np.ndarray, pool: MaxPool2D) -> np.ndarray:
        """``pool.forward(self.forward(x))`` in one kernel: the conv output is never
        written (see kernels/convpool.py). Same result, bit for bit; the pool layer
        keeps its argmax and output as if it had run. Backward: ``backward_pooled``."""
        if not self.can_pool_with(pool):  # before _prepare: a refused call changes nothing
            raise ValueError(f"{self.name}: forward_pooled needs activation='relu' and a "
                             f"2x2, stride-2 MaxPool2D on the same CPU backend")
        x = self._prepare(x)
        n, f, oh, ow = self._out_shape
        if oh < 2 or ow < 2:
            raise ValueError(f"{pool.name}: input {self._out_shape} is smaller than the "
                             f"2x2 pooling window")
        (sh, sw), (ph, pw) = self.stride, self.padding
        self._pooled_by, self._out = pool, None
        pool._in_shape = self._out_shape
        pool._out_shape = (n, *pool.output_shape((f, oh, ow)))
        pout = pool._out = pool._buf("out", pool._out_shape)
        pool._argmax = pool._buf("argmax", pool._out_shape, np.int32)
        self._k.conv2d_relu_pool_forward(x, self.weight.value, self.bias.value, sh, sw, ph, pw,
                                         oh, ow, self._workspace("wb"), self._cols,
                                         self._workspace("tile"), pout, pool._argmax)
        return pout

    def backward_pooled(self, dpool: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        """The gradients of ``forward_pooled`` from d(loss)/d(pool output)."""
        pool = getattr(self, "_pooled_by", None)
        if pool is None:
            raise RuntimeError(f"{self.name}: backward_pooled() needs forward_pooled() first")
        dpool = pool._check_dout(dpool)
        (sh, sw), (ph, pw) = self.stride, self.padding
        _, _, oh, ow = self._out_shape
        dx = self._buf("dx", self._in_shape)  # left untouched without need_input_grad
        self._k.conv2d_relu_pool_backward(dpool, pool._argmax, pool._out, self.weight.value,
                                          self._cols, sh, sw, ph, pw, oh, ow, need_input_grad,
                                          self._workspace("tile"), self._workspace("partial"),
                                          self._workspace("dcols"), self.weight.grad,
                                          self.bias.grad, dx)
        return dx if need_input_grad else None

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return (f"Conv2D({self.in_channels}->{self.out_channels}, kernel={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{act}, name={self.name!r})")


class MaxPool2D(Layer):
    """Max pooling, no padding: (N, C, H, W) -> (N, C, (H-KH)//sh+1, (W-KW)//sw+1).

    Stride defaults to the window. Tied maxima: the first in row-major window
    order takes the whole gradient (see ``scratchcnn/kernels/pool.py``).
    """

    kind = "maxpool2d"

    def __init__(self, pool_size: int | tuple[int, int] = 2,
                 stride: int | tuple[int, int] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.pool_size = _pair(pool_size, f"{self.name}: pool_size")
        self.stride = self.pool_size if stride is None else _pair(stride, f"{self.name}: stride")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        c, h, w = input_shape
        (kh, kw), (sh, sw) = self.pool_size, self.stride
        return (c, (h - kh) // sh + 1, (w - kw) // sw + 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, ("N", "C", "H", "W"))
        n, c, h, w = x.shape
        (kh, kw), (sh, sw) = self.pool_size, self.stride
        if h < kh or w < kw:
            raise ValueError(f"{self.name}: input {x.shape} is smaller than the "
                             f"{kh}x{kw} pooling window")
        self._out_shape = (n, *self.output_shape((c, h, w)))
        self._in_shape = x.shape
        out = self._out = self._buf("out", self._out_shape)
        # flat index of each window's maximum in its plane: int32 is plenty, and
        # half the memory traffic of int64 (pool1: 0.9 instead of 1.8 MB a step)
        self._argmax = self._buf("argmax", self._out_shape, np.int32)
        self._k.maxpool2d_forward(x, kh, kw, sh, sw, out, self._argmax)
        return out

    def backward(self, dout: np.ndarray, need_input_grad: bool = True,
                 relu_before: bool = False) -> np.ndarray | None:
        """``relu_before``: the previous layer's output went through a fused ReLU;
        also apply that ReLU's derivative (zero where the window's max is <= 0)."""
        dout = self._check_dout(dout)
        if not need_input_grad:
            return None
        dx = self._buf("dx", self._in_shape)
        self._k.maxpool2d_backward(dout, self._argmax, self._out, relu_before, dx)
        return dx


class ReLU(Layer):
    """max(x, 0), element-wise, any shape. The gradient at exactly 0 is 0."""

    kind = "relu"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(input_shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        ndim = x.ndim if isinstance(x, np.ndarray) or is_device_array(x) else 0
        spec = ("N",) + tuple(f"d{i}" for i in range(1, ndim)) if ndim >= 1 else ("N", "...")
        x = self._input(x, spec)
        self._x = x
        self._out_shape = x.shape
        out = self._buf("out", x.shape)
        self._k.relu_forward(x.reshape(-1), out.reshape(-1))
        return out

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dout = self._check_dout(dout)
        if not need_input_grad:
            return None
        dx = self._buf("dx", dout.shape)
        self._k.relu_backward(self._x.reshape(-1), dout.reshape(-1), dx.reshape(-1))
        return dx


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), channel-major (NCHW order). A view, no copy."""

    kind = "flatten"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (int(np.prod(input_shape)),)

    def forward(self, x: np.ndarray) -> np.ndarray:
        ndim = x.ndim if isinstance(x, np.ndarray) or is_device_array(x) else 0
        spec = ("N",) + tuple(f"d{i}" for i in range(1, ndim)) if ndim >= 2 else ("N", "...")
        x = self._input(x, spec)
        self._in_shape = x.shape
        self._out_shape = (x.shape[0], int(np.prod(x.shape[1:])))
        return x.reshape(self._out_shape)

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dout = self._check_dout(dout)
        return dout.reshape(self._in_shape) if need_input_grad else None


class Dense(Layer):
    """Fully connected: (N, I) -> (N, O), y = x @ W + b, W of shape (I, O) as in Keras.

    ``activation="relu"`` fuses max(., 0) into the kernel, as in Keras.
    """

    kind = "dense"

    def __init__(self, in_features: int, out_features: int, *, activation: str | None = None,
                 rng: np.random.Generator | None = None, **kw) -> None:
        super().__init__(**kw)
        self.activation = _activation(activation, self.name)
        self.in_features = _count(in_features, f"{self.name}: in_features")
        self.out_features = _count(out_features, f"{self.name}: out_features")
        in_features, out_features = self.in_features, self.out_features
        rng = rng if rng is not None else np.random.default_rng()
        shape = (in_features, out_features)
        self.weight = self._parameter(
            "weight", glorot_uniform(shape, in_features, out_features, rng, self.dtype))
        self.bias = self._parameter("bias", np.zeros(out_features, self.dtype))

    def params(self) -> list[Parameter]:
        return [self.weight, self.bias]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.out_features,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._input(x, ("N", self.in_features))
        self._x = x
        self._out_shape = (x.shape[0], self.out_features)
        out = self._out = self._buf("out", self._out_shape)
        self._k.dense_forward(x, self.weight.value, self.bias.value, self.activation == "relu",
                              out)
        return out

    def backward(self, dout: np.ndarray, need_input_grad: bool = True,
                 activation_applied: bool = False) -> np.ndarray | None:
        dout = self._through_activation(self._check_dout(dout), activation_applied)
        self._k.dense_backward_weight(self._x, dout, self.weight.grad, self.bias.grad)
        if not need_input_grad:
            return None
        dx = self._buf("dx", self._x.shape)
        self._k.dense_backward_input(dout, self.weight.value, dx)
        return dx

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"Dense({self.in_features}->{self.out_features}{act}, name={self.name!r})"
