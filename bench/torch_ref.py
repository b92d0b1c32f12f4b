"""PyTorch (CPU) reference: the same network, optimizer and batches, for head-to-head timing.

Network: Conv2d 3->32 3x3, ReLU, MaxPool2d 2, Conv2d 32->64 3x3, ReLU,
MaxPool2d 2, Conv2d 64->64 3x3, ReLU, Flatten, Linear 1024->64, ReLU,
Linear 64->10 — ``scratchcnn.model.reference_cnn`` layer for layer. The
initial weights are *copied* from ``reference_cnn(seed)`` (Glorot-uniform,
zero biases, as in Keras), so both start from the same point: conv weights
have the same (F, C, KH, KW) layout; our Dense stores (in, out), torch's
Linear (out, in), hence a transpose. Flatten is channel-major in both.

Optimizer: ``torch.optim.Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-7)`` (Keras's
values; torch adds eps to the bias-corrected sqrt(v), Keras/ours to the
uncorrected one — a negligible difference). Loss: ``nn.CrossEntropyLoss``
(mean over the batch). float32 throughout.

Batches: the numpy arrays of the same ``BatchLoader`` our runs use, wrapped
zero-copy with ``torch.from_numpy``.

Import this module only when the torch reference is requested: it imports torch.
"""

from __future__ import annotations

import time

import torch
from harness import LR, EpochResult
from torch import nn

from scratchcnn.data.loader import BatchLoader

_INTEROP_SET = False


def set_interop_once() -> None:
    """``torch.set_num_interop_threads(1)``: allowed once, before any inter-op work."""
    global _INTEROP_SET
    if not _INTEROP_SET:
        torch.set_num_interop_threads(1)
        _INTEROP_SET = True


def torch_reference_cnn(seed: int, input_shape: tuple[int, int, int] = (3, 32, 32)
                        ) -> nn.Sequential:
    """The reference network in torch, initialised with ``reference_cnn(seed)``'s weights.

    ``input_shape`` (C, H, W): C input channels; the flatten size is our model's.
    """
    from scratchcnn.model import reference_cnn

    ours = reference_cnn(seed=seed, backend="serial", input_shape=input_shape).state_dict()
    flat = ours["dense1.weight"].shape[0]
    net = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    pairs = {"conv1": net[0], "conv2": net[3], "conv3": net[6], "dense1": net[9],
             "dense2": net[11]}
    with torch.no_grad():
        for name, mod in pairs.items():
            w = torch.from_numpy(ours[f"{name}.weight"].copy())
            mod.weight.copy_(w.T if isinstance(mod, nn.Linear) else w)
            mod.bias.copy_(torch.from_numpy(ours[f"{name}.bias"].copy()))
    return net


class TorchRun:
    """The torch model at ``threads`` intra-op threads; same interface as ``ScratchRun``."""

    kind = "torch"
    backend = "torch"

    def __init__(self, threads: int, seed: int, lr: float = LR,
                 input_shape: tuple[int, int, int] = (3, 32, 32)) -> None:
        set_interop_once()
        self.threads = threads
        self.name = f"torch@{threads}"
        self.model = torch_reference_cnn(seed, input_shape)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.999),
                                    eps=1e-7)
        self.criterion = nn.CrossEntropyLoss()
        self.timers = None

    def train_epoch(self, loader: BatchLoader, epoch: int) -> EpochResult:
        torch.set_num_threads(self.threads)
        model, opt, crit = self.model, self.opt, self.criterion
        model.train()
        total, correct, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        for x, y in loader.epoch(epoch):
            xb, yb = torch.from_numpy(x), torch.from_numpy(y)
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = crit(logits, yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            correct += int((logits.detach().argmax(1) == yb).sum())
            seen += len(y)
        seconds = time.perf_counter() - t0
        return EpochResult(seconds, seen, total / seen, correct / seen, loader.wait_seconds)

    @torch.no_grad()
    def evaluate(self, loader: BatchLoader) -> tuple[float, float]:
        torch.set_num_threads(self.threads)
        self.model.eval()
        total, correct, seen = 0.0, 0, 0
        for x, y in loader.epoch(0):
            xb, yb = torch.from_numpy(x), torch.from_numpy(y)
            logits = self.model(xb)
            total += self.criterion(logits, yb).item() * len(y)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(y)
        return total / seen, correct / seen

    def weights(self) -> None:
        """Not comparable bit-for-bit with ours (different kernels): None."""
        return None


def warm_up_torch(threads: int, input_shape: tuple[int, int, int] = (3, 32, 32)) -> dict:
    """A few training steps on a throwaway model (oneDNN primitive creation etc.); timed."""
    set_interop_once()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    net = torch_reference_cnn(0, input_shape)
    opt = torch.optim.Adam(net.parameters(), lr=LR, eps=1e-7)
    crit = nn.CrossEntropyLoss()
    for n in (32, 16):  # a full and a partial last batch
        x, y = torch.zeros(n, *input_shape), torch.zeros(n, dtype=torch.int64)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            crit(net(x), y).backward()
            opt.step()
    with torch.no_grad():
        net.eval()
        net(torch.zeros(250, *input_shape))
    return {"seconds": time.perf_counter() - t0}


def torch_version() -> str:
    return torch.__version__


class TorchProcessRun:
    """A ``TorchRun`` living in a child process of its own, driven over a pipe.

    PyTorch and Numba each bring an OpenMP runtime. In one process, measured
    here, torch@2 ran ~1.5x slower after Numba's parallel runs than on its own,
    while torch@1 and our runs were unaffected: the two runtimes' thread pools
    get in each other's way. A user runs one library at a time, so each torch
    configuration gets its own process (started with ``spawn``: no fork after
    an OpenMP region). The child builds the same loaders from the same data and
    seed, so it trains on exactly the same batches. Only ``train_epoch`` is
    timed, inside the child, exactly as in-process; start-up is not counted.
    """

    kind = "torch"
    backend = "torch"

    def __init__(self, threads: int, seed: int, loader_args: dict) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.threads, self.name, self.timers = threads, f"torch@{threads}", None
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, threads, seed, loader_args),
                                 daemon=True, name=f"bench-{self.name}")
        self._proc.start()
        child.close()
        kind, value = self._conn.recv()  # the child's set-up result
        if kind == "error":
            raise RuntimeError(f"{self.name} (child process): {value}")

    def _call(self, *msg):
        self._conn.send(msg)
        kind, value = self._conn.recv()
        if kind == "error":
            raise RuntimeError(f"{self.name} (child process): {value}")
        return value

    def train_epoch(self, loader: BatchLoader, epoch: int) -> EpochResult:
        return self._call("train", epoch)

    def evaluate(self, loader: BatchLoader) -> tuple[float, float]:
        return self._call("evaluate")

    def weights(self) -> None:
        return None

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(("stop",))
            self._proc.join(30)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _serve(conn, threads: int, seed: int, loader_args: dict) -> None:
    """Child process: build data, loaders and a TorchRun, then answer the parent's calls."""
    import traceback

    from harness import EVAL_BATCH_SIZE, warm_up_loader

    from scratchcnn.data.datasets import load_dataset

    try:
        a = loader_args
        # The same arrays as the parent's compare.load_data (no import of compare: no cycle).
        data = load_dataset(a.get("dataset", "cifar10"), a["data_dir"], download=False)
        n_train = min(a["limit_train"] or len(data.train_labels), len(data.train_labels))
        n_test = min(a["limit_test"] or len(data.test_labels), len(data.test_labels))
        train_x, train_y = data.train_images[:n_train], data.train_labels[:n_train]
        test_x, test_y = data.test_images[:n_test], data.test_labels[:n_test]
        train_loader = BatchLoader(train_x, train_y, a["batch_size"], shuffle=True, seed=seed,
                                   augment=a["augment"], threads=a["loader_threads"],
                                   prefetch=a["prefetch"])
        test_loader = BatchLoader(test_x, test_y, EVAL_BATCH_SIZE, shuffle=False,
                                  threads=a["loader_threads"], prefetch=a["prefetch"])
        warm_up_loader()  # the loader's Numba kernels: compiled/loaded before any timing
        warm_up_torch(threads, data.input_shape)
        run = TorchRun(threads, seed, input_shape=data.input_shape)
    except Exception:
        conn.send(("error", traceback.format_exc(limit=3)))
        return
    conn.send(("ok", None))
    with train_loader, test_loader:
        while True:
            msg = conn.recv()
            try:
                if msg[0] == "stop":
                    return
                if msg[0] == "ready":
                    conn.send(("ok", None))
                elif msg[0] == "train":
                    conn.send(("ok", run.train_epoch(train_loader, msg[1])))
                elif msg[0] == "evaluate":
                    conn.send(("ok", run.evaluate(test_loader)))
            except Exception:
                conn.send(("error", traceback.format_exc(limit=3)))
