"""A fingerprint of the training arithmetic: the SHA-256 of the final weights and
optimizer state after a fixed short training, for every kernel build.

``python tests/fingerprint.py --write`` records it in ``tests/data/fingerprint.json``
together with the CPU model and the BLAS kernel it was made with (OpenBLAS picks
its kernels per CPU, so the bits are only comparable on the same kind of machine).
``tests/test_fingerprint.py`` recomputes it and compares where CPU and BLAS match.

The training: the reference network on 116 deterministic random images (three
batches of 32 and a partial batch of 20, so the sample-group sizes of the last
batch differ), 5 steps of Adam then 5 of SGD with momentum, float32. It is run
on the serial backend and on the parallel backend at 1, 2 and 3 threads, with
and without the conv + ReLU + pool fusion; all builds must give the same bits, one
digest with the fusion and one without (the fused kernels compute only the pixels their
pool reads: sums of fewer terms, so other bits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__" and int(os.environ.get("NUMBA_NUM_THREADS", "0") or 0) < 3:
    os.environ["NUMBA_NUM_THREADS"] = "3"

import numpy as np  # noqa: E402

PATH = Path(__file__).parent / "data" / "fingerprint.json"
CONFIGS = [("serial", 1, True), ("serial", 1, False)] + [
    ("parallel", t, fused) for t in (1, 2, 3) for fused in (True, False)]


def blas_info() -> dict[str, str]:
    """CPU model and the BLAS library/kernel np.dot inside the kernels calls."""
    from scratchcnn.runinfo import blas_kernels, cpu_model

    return {"cpu_model": cpu_model(), "blas": blas_kernels()}


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((116, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 116).astype(np.int64)
    return x, y


def train_digest(backend: str, threads: int, fused: bool) -> str:
    """SHA-256 over the weights and optimizer state after the fixed training."""
    import numba

    from scratchcnn.loop import train_step
    from scratchcnn.losses import SoftmaxCrossEntropy
    from scratchcnn.model import reference_cnn
    from scratchcnn.optim import SGD, Adam

    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        x, y = _data()
        model = reference_cnn(seed=7, backend=backend)
        model.fuse_conv_pool = fused
        loss = SoftmaxCrossEntropy(backend=backend)
        h = hashlib.sha256()
        for opt in (Adam(model.parameters(), lr=1e-3, backend=backend),
                    SGD(model.parameters(), lr=0.01, momentum=0.9, backend=backend)):
            for step in range(5):
                lo = (step % 4) * 32
                xb, yb = x[lo:lo + 32], y[lo:lo + 32]
                h.update(np.float64(train_step(model, loss, opt, xb, yb).loss).tobytes())
            for name, arr in sorted(opt.state_dict().items()):
                h.update(name.encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        for name, arr in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()
    finally:
        numba.set_num_threads(before)


def compute() -> dict:
    digests = {f"{b}@{t}{'' if f else '-unfused'}": train_digest(b, t, f)
               for b, t, f in CONFIGS}
    return {**blas_info(), "digests": digests}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"record into {PATH}")
    a = p.parse_args()
    fp = compute()
    print(json.dumps(fp, indent=2))
    if a.write:
        PATH.parent.mkdir(exist_ok=True)
        PATH.write_text(json.dumps(fp, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
