"""scratchcnn.kernels: the Numba kernels, in a serial and a parallel build (and CUDA).

Each kernel is written once (in ``conv.py`` -- the readable loop nests --,
``conv_fast.py``, ``convpool.py``, ``pool.py``, ``dense.py``, ``activation.py``,
``loss.py``, ``optim.py``) and compiled twice by ``_build.build``: ``serial``
with ``parallel=False`` (every ``prange`` is a plain ``range``) and
``parallel`` with ``parallel=True``.

    import numpy as np
    from scratchcnn.kernels import parallel
    x = np.ones((2, 3, 8, 8), np.float32); w = np.ones((4, 3, 3, 3), np.float32)
    b = np.zeros(4, np.float32); out = np.empty((2, 4, 6, 6), np.float32)
    parallel.conv2d_forward_direct(x, w, b, 1, 1, 0, 0, out)   # stride 1, no padding

The fast convolution kernels need workspaces; layers do not allocate them but
ask the backend for a *plan* per geometry, which owns them (``plans.py``):

    plan = parallel.conv2d_plan(x.shape, w.shape, (1, 1), (0, 0), np.float32)
    plan.forward(x, w, b, out)

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
from types import SimpleNamespace

import numba
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS that np.dot in njit calls)
from threadpoolctl import threadpool_limits

from . import activation, conv, conv_fast, convpool, dense, loss, optim, pool
from ._build import build
from .plans import make_conv2d_plan

threadpool_limits(limits=1, user_api="blas")

_MODULES = (conv, conv_fast, convpool, pool, dense, activation, loss, optim)

#: Names of all kernels each backend provides.
KERNEL_NAMES: tuple[str, ...] = tuple(name for mod in _MODULES for name in mod.__all__)

#: Kernels only the CPU backends have: the conv + ReLU + max-pool fusion (a backend
#: with ``fuses_conv_relu_pool`` has them; on "cuda" the layers run one by one), the
#: fixed-order sum of per-group gradients (the CUDA plan keeps no per-group pieces),
#: and the readable ladder of conv.py beyond its direct forward (teaching kernels).
CPU_ONLY: tuple[str, ...] = (*convpool.__all__, "conv2d_sum_group_partials",
                             *(n for n in conv.__all__ if n != "conv2d_forward_direct"))


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


def _one_slot() -> int:
    """The serial backend: one thread runs the backward, one scratch slot."""
    return 1


def _make_backend(name: str, parallel: bool) -> SimpleNamespace:
    kernels = {
        kname: build(getattr(mod, kname), parallel) for mod in _MODULES for kname in mod.__all__
    }
    ns = SimpleNamespace(name=name, parallel=parallel, device="cpu", fuses_conv_relu_pool=True,
                         **_HOST_ARRAYS, **kernels)
    # Scratch slots: one per thread that runs a backward pass. On the parallel backend the
    # *current* thread count (set per calling thread), not the pool size: with 8 slots on 2
    # threads each thread would walk 4 slots of scratch instead of reusing one in cache.
    ns.conv2d_plan = make_conv2d_plan(ns, numba.get_num_threads if parallel else _one_slot)
    return ns


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
