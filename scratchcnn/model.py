"""Sequential model and the reference network of the TensorFlow CIFAR-10 tutorial."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np

# Atomic writes and .npz reading live in scratchcnn.files; the names stay importable here.
from scratchcnn.files import load_npz, save_npz_atomic  # noqa: F401
from scratchcnn.fusion import fuse_conv_relu_pool
from scratchcnn.layers import Conv2D, Dense, Flatten, Layer, MaxPool2D, Parameter


class Sequential:
    """Layers applied in order. ``forward`` gives logits, ``backward`` fills gradients.

    ``fuse_conv_pool`` (default True): the build step (``steps``) runs each ReLU
    ``Conv2D`` followed by a 2x2, stride-2 ``MaxPool2D`` as one ``ConvReLUPool``
    on the CPU backends (see ``scratchcnn.fusion``): the same numbers, bit for
    bit, without writing the convolution's output. Set it to False to run every
    layer on its own. ``layers`` stays the list you gave (it names the
    parameters); ``steps`` is what runs.
    """

    def __init__(self, layers: Iterable[Layer], fuse_conv_pool: bool = True) -> None:
        self.layers = list(layers)
        self.fuse_conv_pool = fuse_conv_pool
        self._built: tuple[tuple, list[Layer]] | None = None
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

    # -- the build step -----------------------------------------------------------
    @property
    def steps(self) -> list[Layer]:
        """What ``forward`` runs, in order: the layers, fusable conv + pool pairs as one
        ``ConvReLUPool`` when ``fuse_conv_pool`` is on. Rebuilt when the flag or a
        layer's backend changes."""
        key = (self.fuse_conv_pool, tuple(layer.backend for layer in self.layers))
        if self._built is None or self._built[0] != key:
            steps = fuse_conv_relu_pool(self.layers) if self.fuse_conv_pool else self.layers
            self._built = (key, list(steps))
        return self._built[1]

    # -- computation --------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run every step on ``x`` (N, C, H, W); return the output (logits).

        The result is the caller's own copy on the CPU backends (layers reuse
        their output buffers); on ``"cuda"`` it is the last layer's device buffer.
        """
        for step in self.steps:
            x = step.forward(x)
        return x.copy() if isinstance(x, np.ndarray) else x

    __call__ = forward

    def backward(self, dout: np.ndarray, need_input_grad: bool = False) -> np.ndarray | None:
        """Back-propagate d(loss)/d(output); fills every ``Parameter.grad``.

        Returns d(loss)/d(input) if ``need_input_grad``, else None (and the
        first step then skips computing it).
        """
        steps = self.steps
        for i in reversed(range(len(steps))):
            dout = steps[i].backward(dout, need_input_grad or i > 0)
        return dout

    # -- gradient pieces (see scratchcnn.loop) -----------------------------------
    def gradient_pieces(self) -> dict[str, dict[str, np.ndarray]]:
        """Per step with parameters: the un-summed pieces of its last weight gradient."""
        return {step.name: step.gradient_pieces() for step in self.steps if step.params()}

    def finish_gradients(self, pieces: dict[str, dict[str, np.ndarray]]) -> None:
        """Recompute every parameter gradient from ``pieces`` (as ``gradient_pieces`` gives)."""
        for step in self.steps:
            if step.params():
                step.finish_gradients(pieces[step.name])

    def set_group_batch(self, n: int | None) -> None:
        """Choose sample groups for a batch of ``n`` (None: each batch's own size); a
        data-parallel rank passes the global batch size."""
        for layer in self.layers:
            layer.group_batch = n

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
        """A table of the steps that run (fused ones marked), per-sample output shapes and
        parameter counts."""
        lines = [f"{'layer':<14} {'output shape':<16} {'params':>8}"]
        shape = tuple(input_shape)
        for step in self.steps:
            shape = step.output_shape(shape)
            n = sum(p.value.size for p in step.params())
            note = "  (conv + ReLU + max-pool fused: one kernel)" if step not in self.layers else ""
            lines.append(f"{step.name:<14} {str(shape):<16} {n:>8,}{note}")
        lines.append(f"{'total':<31} {self.num_parameters():>8,}")
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

    # -- using a trained model ------------------------------------------------
    def predict(self, x: np.ndarray, batch_size: int = 250) -> np.ndarray:
        """Class probabilities (softmax of the logits), float32 ``(N, classes)``, for any N.

        ``x``: ``(N, C, H, W)`` images; uint8 is scaled to [0, 1] as the data
        loader does, floats are used as given. Runs ``batch_size`` images at a time.
        """
        from scratchcnn.checks import is_device_array

        x = np.asarray(x)
        out = []
        for i in range(0, len(x), max(1, int(batch_size))):
            logits = self.forward(_as_input(x[i:i + batch_size], self.dtype))
            logits = logits.copy_to_host() if is_device_array(logits) else logits
            z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
            e = np.exp(z)
            out.append((e / e.sum(axis=1, keepdims=True)).astype(np.float32))
        if not out:
            return np.zeros((0, self.layers[-1].output_shape((1,))[0]), np.float32)
        return np.concatenate(out)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 250) -> tuple[float, float]:
        """(mean cross-entropy loss, accuracy) on images ``x`` and integer labels ``y``.

        The same evaluation as training uses (``scratchcnn.loop.evaluate``); ``x`` as
        in :meth:`predict`.
        """
        from scratchcnn.loop import evaluate
        from scratchcnn.losses import SoftmaxCrossEntropy

        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"evaluate: {len(x)} images but {len(y)} labels")
        step = max(1, int(batch_size))
        batches = ((_as_input(x[i:i + step], self.dtype), y[i:i + step])
                   for i in range(0, len(x), step))
        return evaluate(self, SoftmaxCrossEntropy(backend=self.backend, dtype=self.dtype),
                        batches)


def _as_input(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A batch as the layers take it: uint8 scaled to [0, 1] (as the loader does), C-order."""
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x, dtype=dtype) / dtype.type(255)
    return np.ascontiguousarray(x, dtype=dtype)




def reference_cnn(seed: int = 0, backend: str = "parallel", dtype: object = np.float32,
                  num_classes: int = 10,
                  input_shape: tuple[int, int, int] = (3, 32, 32)) -> Sequential:
    """The CNN of the TensorFlow/Keras CIFAR-10 tutorial (122,570 parameters).

    Conv C->32 3x3 + ReLU, MaxPool 2, Conv 32->64 3x3 + ReLU, MaxPool 2,
    Conv 64->64 3x3 + ReLU, Flatten, Dense F->64 + ReLU, Dense 64->``num_classes``
    (logits), for images of ``input_shape`` = (C, H, W). The flatten size F
    follows from the shapes: 64 x 4 x 4 = 1024 for CIFAR-10's (3, 32, 32);
    64 x 3 x 3 = 576 for MNIST/Fashion-MNIST's (1, 28, 28) (93,322 parameters).
    As in the tutorial's Keras code, each ReLU is the ``activation`` of its
    Conv2D/Dense layer (fused into the kernel) rather than a layer of its own.
    Glorot-uniform weights from ``np.random.default_rng(seed)``, zero biases.
    """
    c, h, w = (int(v) for v in input_shape)
    rng = np.random.default_rng(seed)
    kw = dict(backend=backend, dtype=dtype)
    convs = [
        Conv2D(c, 32, 3, activation="relu", rng=rng, name="conv1", **kw),
        MaxPool2D(2, name="pool1", **kw),
        Conv2D(32, 64, 3, activation="relu", rng=rng, name="conv2", **kw),
        MaxPool2D(2, name="pool2", **kw),
        Conv2D(64, 64, 3, activation="relu", rng=rng, name="conv3", **kw),
    ]
    shape: tuple[int, ...] = (c, h, w)
    for layer in convs:
        shape = layer.output_shape(shape)
    if min(shape[1:]) < 1:
        raise ValueError(f"reference_cnn: input_shape {tuple(input_shape)} is too small; the "
                         f"network needs images of at least 18x18 pixels")
    flat = int(np.prod(shape))
    return Sequential([
        *convs,
        Flatten(name="flatten", **kw),
        Dense(flat, 64, activation="relu", rng=rng, name="dense1", **kw),
        Dense(64, num_classes, rng=rng, name="dense2", **kw),
    ])
