"""Sequential model and the reference network of the TensorFlow CIFAR-10 tutorial."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np

# Atomic writes and .npz reading live in scratchcnn.files; the names stay importable here.
from scratchcnn.files import load_npz, save_npz_atomic  # noqa: F401
from scratchcnn.layers import Conv2D, Dense, Flatten, Layer, MaxPool2D, Parameter


class Sequential:
    """Layers applied in order. ``forward`` gives logits, ``backward`` fills gradients.

    ``fuse_conv_pool`` (default True): a ReLU ``Conv2D`` followed by a 2x2,
    stride-2 ``MaxPool2D`` runs as one kernel on the CPU backends
    (``Conv2D.forward_pooled``): the same numbers, bit for bit, without writing
    the convolution's output. Set it to False to run every layer on its own.
    """

    def __init__(self, layers: Iterable[Layer], fuse_conv_pool: bool = True) -> None:
        self.layers = list(layers)
        self.fuse_conv_pool = fuse_conv_pool
        self._pooled: set[int] = set()  # conv layers run with the next layer's pool
        if not self.layers:
            raise ValueError("Sequential: needs at least one layer")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"Sequential: item {i} is a {type(layer).__name__}, not a layer "
                                 f"(Conv2D, MaxPool2D, Dense, ReLU, Flatten)")
        seen: Counter[str] = Counter()
        for layer in self.layers:
            if layer.auto_named:  # unnamed: number it like Keras does
                seen[layer.kind] += 1
                layer.name = f"{layer.kind}_{seen[layer.kind]}"
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"Sequential: layer names must be unique, got {names}")

    # -- computation --------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run every layer on ``x`` (N, C, H, W); return the output (logits).

        The result is the caller's own copy on the CPU backends (layers reuse
        their output buffers); on ``"cuda"`` it is the last layer's device buffer.
        """
        self._pooled = set()
        layers, i = self.layers, 0
        while i < len(layers):
            if (self.fuse_conv_pool and i + 1 < len(layers) and isinstance(layers[i], Conv2D)
                    and layers[i].can_pool_with(layers[i + 1])):
                x = layers[i].forward_pooled(x, layers[i + 1])
                self._pooled.add(i)
                i += 2
            else:
                x = layers[i].forward(x)
                i += 1
        return x.copy() if isinstance(x, np.ndarray) else x

    __call__ = forward

    def backward(self, dout: np.ndarray, need_input_grad: bool = False) -> np.ndarray | None:
        """Back-propagate d(loss)/d(output); fills every ``Parameter.grad``.

        Returns d(loss)/d(input) if ``need_input_grad``, else None (and the
        first layer then skips computing it).
        """
        applied = False  # whether dout already carries the derivative of layer i's fused ReLU
        i = len(self.layers) - 1
        while i >= 0:
            layer = self.layers[i]
            need = need_input_grad or i > 0
            if i - 1 in self._pooled:  # conv + pool ran as one kernel: so does their backward
                dout, applied = self.layers[i - 1].backward_pooled(dout, need_input_grad or
                                                                   i - 1 > 0), False
                i -= 2
                continue
            if isinstance(layer, MaxPool2D) and i > 0 and _fused_relu(self.layers[i - 1]):
                # Fold the previous layer's ReLU backward into the pool's pass.
                dout, applied = layer.backward(dout, need, relu_before=True), True
            elif _fused_relu(layer):
                dout, applied = layer.backward(dout, need, activation_applied=applied), False
            else:
                dout, applied = layer.backward(dout, need), False
            i -= 1
        return dout

    # -- parameters ---------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(``"<layer>.<param>"``, Parameter) pairs, in layer order."""
        for layer in self.layers:
            for p in layer.params():
                yield f"{layer.name}.{p.name}", p

    def parameters(self) -> list[Parameter]:
        """All parameters, in layer order (the order optimizers keep state in)."""
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.value.size for p in self.parameters())

    @property
    def backend(self) -> str:
        return self.layers[0].backend

    @backend.setter
    def backend(self, name: str) -> None:
        for layer in self.layers:
            layer.backend = name

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].dtype

    def summary(self, input_shape: tuple[int, int, int] = (3, 32, 32)) -> str:
        """A table of layers, per-sample output shapes and parameter counts."""
        lines = [f"{'layer':<12} {'output shape':<16} {'params':>8}"]
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
            n = sum(p.value.size for p in layer.params())
            lines.append(f"{layer.name:<12} {str(shape):<16} {n:>8,}")
        lines.append(f"{'total':<29} {self.num_parameters():>8,}")
        return "\n".join(lines)

    # -- persistence --------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter arrays keyed by ``"<layer>.<param>"``, on the host.

        CPU backends: views of the parameters, not copies. CUDA: host copies.
        """
        return {f"{layer.name}.{p.name}": layer._k.to_host(p.value)
                for layer in self.layers for p in layer.params()}

    def load_state_dict(self, state: dict[str, np.ndarray], source: str = "state") -> None:
        """Copy arrays into the parameters; ValueError names what is missing or wrong."""
        for layer in self.layers:
            for p in layer.params():
                name = f"{layer.name}.{p.name}"
                if name not in state:
                    raise ValueError(f"{source}: missing parameter {name!r}; is this a checkpoint "
                                     f"of the same network?")
                a = np.asarray(state[name])
                if a.shape != p.value.shape:
                    raise ValueError(f"{source}: parameter {name!r} has shape {a.shape}, the "
                                     f"model expects {p.value.shape}")
                layer._k.copy_into(p.value, a)  # CUDA: a copy to the device

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights to ``path`` (.npz) atomically: a crash leaves the old file."""
        save_npz_atomic(path, self.state_dict())

    def load(self, path: str | os.PathLike) -> None:
        """Load weights saved by ``save`` (or a training checkpoint)."""
        self.load_state_dict(load_npz(path), source=str(path))


def _fused_relu(layer: Layer) -> bool:
    return getattr(layer, "activation", None) == "relu"


def reference_cnn(seed: int = 0, backend: str = "parallel", dtype: object = np.float32,
                  num_classes: int = 10) -> Sequential:
    """The CNN of the TensorFlow/Keras CIFAR-10 tutorial (122,570 parameters).

    Conv 3->32 3x3 + ReLU, MaxPool 2, Conv 32->64 3x3 + ReLU, MaxPool 2,
    Conv 64->64 3x3 + ReLU, Flatten, Dense 1024->64 + ReLU, Dense 64->10 (logits).
    As in the tutorial's Keras code, each ReLU is the ``activation`` of its
    Conv2D/Dense layer (fused into the kernel) rather than a layer of its own.
    Glorot-uniform weights from ``np.random.default_rng(seed)``, zero biases.
    """
    rng = np.random.default_rng(seed)
    kw = dict(backend=backend, dtype=dtype)
    return Sequential([
        Conv2D(3, 32, 3, activation="relu", rng=rng, name="conv1", **kw),
        MaxPool2D(2, name="pool1", **kw),
        Conv2D(32, 64, 3, activation="relu", rng=rng, name="conv2", **kw),
        MaxPool2D(2, name="pool2", **kw),
        Conv2D(64, 64, 3, activation="relu", rng=rng, name="conv3", **kw),
        Flatten(name="flatten", **kw),
        Dense(64 * 4 * 4, 64, activation="relu", rng=rng, name="dense1", **kw),
        Dense(64, num_classes, rng=rng, name="dense2", **kw),
    ])
