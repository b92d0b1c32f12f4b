"""scratchcnn.kernels: the Numba kernels, in a serial and a parallel build.

Each kernel is written once (in ``conv.py``, ``pool.py``, ``dense.py``,
``activation.py``, ``loss.py``, ``optim.py``) and compiled twice by
``_build.build``: ``serial`` with ``parallel=False`` (every ``prange`` is a
plain ``range``) and ``parallel`` with ``parallel=True``.

    from scratchcnn.kernels import serial, parallel
    parallel.conv2d_forward(x, w, b, 1, 1, 0, 0, cols, out)

Kernels write into preallocated outputs and never allocate. They expect
C-contiguous arrays of one float dtype (float32 for training, float64 for
gradient checks); the layers in ``scratchcnn.layers`` check inputs, kernels
do not.

No hidden threads: the matrix products go through ``np.dot``, i.e. SciPy's
OpenBLAS. Importing this package pins every BLAS thread pool to one thread, so
the serial build computes on exactly one thread and the parallel build on
exactly Numba's thread count.
"""

from __future__ import annotations

from types import SimpleNamespace

import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that np.dot in njit calls)
from threadpoolctl import threadpool_limits

from . import activation, conv, dense, loss, optim, pool
from ._build import build

threadpool_limits(limits=1, user_api="blas")

_MODULES = (conv, pool, dense, activation, loss, optim)

#: Names of all kernels each backend provides.
KERNEL_NAMES: tuple[str, ...] = tuple(name for mod in _MODULES for name in mod.__all__)


def _make_backend(name: str, parallel: bool) -> SimpleNamespace:
    kernels = {
        kname: build(getattr(mod, kname), parallel) for mod in _MODULES for kname in mod.__all__
    }
    return SimpleNamespace(name=name, parallel=parallel, **kernels)


serial = _make_backend("serial", parallel=False)
parallel = _make_backend("parallel", parallel=True)

BACKENDS = ("serial", "parallel", "cuda")


def get_backend(name: str) -> SimpleNamespace:
    """The kernel namespace for ``"serial"``, ``"parallel"`` or ``"cuda"``."""
    if name == "serial":
        return serial
    if name == "parallel":
        return parallel
    if name == "cuda":
        raise ValueError("backend 'cuda' is not available yet; use --backend parallel")
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
