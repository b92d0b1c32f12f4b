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

Buffers: a layer allocates its outputs and input gradients once per input
shape and reuses them for every batch (fresh allocations of several MB per
step cost page faults). An array returned by ``forward`` or ``backward`` is
therefore valid until that layer's next call of the same method; copy it to
keep it. ``Sequential.forward`` returns a copy. What the kernels need besides
inputs and outputs (workspaces, scratch per thread) is not the layer's
business: a convolution gets a *plan* per input geometry from its backend
(``backend.conv2d_plan``), which owns it.

Gradient pieces: after ``backward``, ``gradient_pieces()`` returns the
un-summed pieces a layer's weight gradient was made from, and
``finish_gradients(pieces)`` recomputes the gradients from (possibly gathered)
pieces, in the backward pass's own order; see ``scratchcnn.loop``.
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
        #: The batch size sample groups are chosen for (None: each batch's own size).
        #: A data-parallel rank sets the global batch size (``Sequential.set_group_batch``).
        self.group_batch: int | None = None
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
        self.__dict__.pop("_plans", None)

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

    def gradient_pieces(self) -> dict[str, np.ndarray]:
        """The un-summed pieces of the last backward's weight gradient (none here)."""
        return {}

    def finish_gradients(self, pieces: dict[str, np.ndarray]) -> None:
        """Recompute the parameter gradients from ``pieces`` (nothing to do here)."""

    def _through_activation(self, dout: np.ndarray) -> np.ndarray:
        """With a fused ReLU, d(loss)/d(pre-activation) = dout where the output is > 0."""
        if self.activation is None:
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

    def plan_for(self, x_shape: tuple[int, int, int, int]):
        """The backend's plan for inputs of shape ``x_shape`` (one per shape and group batch;
        it owns the kernels' workspaces)."""
        n, c, h, w = x_shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"{self.name}: input {tuple(x_shape)} is smaller than the "
                             f"{kh}x{kw} kernel (with padding {self.padding})")
        plans = self.__dict__.setdefault("_plans", {})
        key = (tuple(x_shape), self.group_batch)
        plan = plans.get(key)
        if plan is None:
            plan = plans[key] = self._k.conv2d_plan(x_shape, self.weight.value.shape,
                                                    self.stride, self.padding, self.dtype,
                                                    group_batch=self.group_batch)
        return plan

    def _plan(self, x: object):
        """Check x; return it (in backend memory) and the plan for its shape."""
        x = self._input(x, ("N", self.in_channels, "H", "W"))
        self._in_shape, self._last_plan = x.shape, self.plan_for(x.shape)
        return x, self._last_plan

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, plan = self._plan(x)
        self._out_shape = plan.out_shape
        out = self._out = self._buf("out", plan.out_shape)
        plan.forward(x, self.weight.value, self.bias.value, out, relu=self.activation == "relu")
        return out

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dout = self._through_activation(self._check_dout(dout))
        dx = self._buf("dx", self._in_shape) if need_input_grad else None
        self._last_plan.backward(dout, self.weight.value, self.weight.grad, self.bias.grad, dx)
        return dx

    def gradient_pieces(self) -> dict[str, np.ndarray]:
        """``per_group``: the weight and bias gradient of each sample group, (groups, F, K+1)."""
        return self._last_plan.gradient_pieces()

    def finish_gradients(self, pieces: dict[str, np.ndarray]) -> None:
        """dw, db = the sum of ``pieces["per_group"]`` over its groups, in group order (the
        backward pass's own sum; any number of groups, e.g. gathered from several ranks)."""
        sum_groups = getattr(self._k, "conv2d_sum_group_partials", None)
        if sum_groups is None:
            raise ValueError(f"{self.name}: backend {self.backend!r} keeps no per-group "
                             f"gradient pieces; use a CPU backend")
        sum_groups(pieces["per_group"], self.weight.grad, self.bias.grad)

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

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dout = self._check_dout(dout)
        if not need_input_grad:
            return None
        dx = self._buf("dx", self._in_shape)
        self._k.maxpool2d_backward(dout, self._argmax, self._out, False, dx)  # False: no ReLU
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

    def backward(self, dout: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        dout = self._dout = self._through_activation(self._check_dout(dout))
        self._k.dense_backward_weight(self._x, dout, self.weight.grad, self.bias.grad)
        if not need_input_grad:
            return None
        dx = self._buf("dx", self._x.shape)
        self._k.dense_backward_input(dout, self.weight.value, dx)
        return dx

    def gradient_pieces(self) -> dict[str, np.ndarray]:
        """``x`` (N, I) and ``dout`` (N, O): the last batch's input and the gradient at the
        pre-activation output; the weight gradient is one product of the two over the batch."""
        return {"x": self._x, "dout": self._dout}

    def finish_gradients(self, pieces: dict[str, np.ndarray]) -> None:
        self._k.dense_backward_weight(pieces["x"], pieces["dout"], self.weight.grad,
                                      self.bias.grad)

    def __repr__(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"Dense({self.in_features}->{self.out_features}{act}, name={self.name!r})"
