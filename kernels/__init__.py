"""scratchcnn.kernels: the Numba kernels, in a serial and a parallel build (and CUDA).

Each kernel is written once (in ``conv.py``, ``convpool.py``, ``pool.py``,
``dense.py``, ``activation.py``, ``loss.py``, ``optim.py``) and compiled twice by
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

``get_backend("cuda")`` builds the optional CUDA backend (``cuda.py``, needs
the ``cuda`` extra: numba-cuda) on first request; numba.cuda is never imported
before that.

Array helpers: besides its kernels, every backend namespace carries a tiny
array API, so layers allocate and move data without knowing where it lives:
``empty(shape, dtype)``, ``zeros(shape, dtype)``, ``to_device(a)`` (a NumPy
array into the backend's memory), ``to_host(a)`` (back to NumPy),
``copy_into(dst, src)`` (host data into an existing array), ``synchronize()``
(wait for queued kernels) and ``is_device_array(a)``. On the CPU backends the
transfers are the identity (no copy) and ``synchronize`` does nothing.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that np.dot in njit calls)
from threadpoolctl import threadpool_limits

from . import activation, conv, conv_fast, convpool, dense, loss, optim, pool
from ._build import build

threadpool_limits(limits=1, user_api="blas")

_MODULES = (conv, conv_fast, convpool, pool, dense, activation, loss, optim)

#: Names of all kernels each backend provides.
KERNEL_NAMES: tuple[str, ...] = tuple(name for mod in _MODULES for name in mod.__all__)

#: Kernels only the CPU backends have: the conv + ReLU + max-pool fusion
#: (``Conv2D.can_pool_with`` checks for them; on "cuda" the layers run one by one).
CPU_ONLY: tuple[str, ...] = tuple(convpool.__all__)


def _identity(a):
    return a


def _copy_into(dst: np.ndarray, src) -> None:
    dst[...] = src


def _no_device(a) -> bool:
    return False


def _nothing() -> None:
    pass


#: The array API of the CPU backends: plain NumPy, transfers are the identity.
_HOST_ARRAYS = dict(empty=np.empty, zeros=np.zeros, to_device=_identity, to_host=_identity,
                    copy_into=_copy_into, synchronize=_nothing, is_device_array=_no_device)


@cache
def _workspace_shapes(args: tuple, group: int | None, slots: int) -> dict:
    """``conv_fast.conv2d_workspace_shapes``, computed once per geometry and slot count."""
    return conv_fast.conv2d_workspace_shapes(*args, group=group, slots=slots)


def _serial_workspace_shapes(*args, group: int | None = None) -> dict:
    """``conv_fast.conv2d_workspace_shapes`` with one dcols slot: one thread runs the backward."""
    return dict(_workspace_shapes(args, group, 1))


def _parallel_workspace_shapes(*args, group: int | None = None) -> dict:
    """``conv_fast.conv2d_workspace_shapes`` with one dcols slot per thread that runs the backward.

    The *current* thread count (``numba.get_num_threads()``, set per calling
    thread), not the pool size: with 8 slots on 2 threads each thread would walk
    4 slots of scratch instead of reusing one that stays in cache. The layers ask
    every forward pass (answered from a cache), so a changed thread count gets
    its own workspaces. The results do not depend on the slot count (tests check
    the bits).
    """
    return dict(_workspace_shapes(args, group, numba.get_num_threads()))


def _make_backend(name: str, parallel: bool) -> SimpleNamespace:
    kernels = {
        kname: build(getattr(mod, kname), parallel) for mod in _MODULES for kname in mod.__all__
    }
    shapes = _parallel_workspace_shapes if parallel else _serial_workspace_shapes
    return SimpleNamespace(name=name, parallel=parallel, device="cpu",
                           conv2d_workspace_shapes=shapes, **_HOST_ARRAYS, **kernels)


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
        return _cuda_backend()
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


_cuda: SimpleNamespace | None = None


def _cuda_backend() -> SimpleNamespace:
    """Build the CUDA backend once; a one-line ValueError when it cannot run here."""
    global _cuda
    if _cuda is None:
        if importlib.util.find_spec("numba_cuda") is None:
            raise ValueError("backend 'cuda': numba-cuda is not installed: pip install "
                             "'.[cuda]' (or use --backend parallel)")
        from numba import cuda

        if not cuda.is_available():
            raise ValueError("backend 'cuda': no usable CUDA GPU (numba.cuda.is_available() "
                             "is False): use --backend parallel")
        from .cuda import make_cuda_backend

        _cuda = make_cuda_backend()
    return _cuda
