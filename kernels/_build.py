"""One source, two builds: compile each kernel serially and with ``parallel=True``.

Every kernel in this package is a plain Python function that uses
``numba.prange`` for the one loop that may run on several threads. Compiled
with ``parallel=False`` a ``prange`` is an ordinary ``range``; compiled with
``parallel=True`` Numba splits that loop across its thread pool. The only
difference between ``scratchcnn.kernels.serial`` and
``scratchcnn.kernels.parallel`` is therefore that one flag.

Caching: Numba's on-disk cache key ignores the jit flags (numba issue 6845),
so ``njit(cache=True)`` and ``njit(cache=True, parallel=True)`` on the *same*
function would load each other's machine code. Each build therefore gets its
own ``__qualname__`` (``conv2d_forward__serial`` / ``conv2d_forward__parallel``),
which gives it its own cache file. ``tests/test_threads.py`` checks that the
cached parallel build really runs on several threads.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import numba

#: Flags shared by both builds. No fastmath: the serial and the parallel build
#: must produce bit-for-bit identical results, so the compiler may not
#: reassociate sums or fuse multiply-adds differently in the two builds.
#: ``nogil``: loader threads and benchmarks may call kernels from Python threads.
_COMMON = dict(cache=True, nogil=True, error_model="numpy")


def _renamed(fn: Callable, suffix: str) -> Callable:
    """A copy of ``fn`` whose name (and so Numba cache file) ends with ``suffix``."""
    name = fn.__name__ + suffix
    code = fn.__code__.replace(co_name=name, co_qualname=fn.__qualname__ + suffix)
    new = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    new.__qualname__ = fn.__qualname__ + suffix
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    return new


def build(fn: Callable, parallel: bool) -> Callable:
    """Compile ``fn`` (lazily, on first call) as the serial or the parallel build."""
    suffix = "__parallel" if parallel else "__serial"
    return numba.njit(parallel=parallel, **_COMMON)(_renamed(fn, suffix))


#: Every helper's dispatcher (see ``helper``): what ``scratchcnn.lazy_llvm.defer_helpers``
#: treats as never called from Python in a compile worker.
HELPERS: list = []


def helper(fn: Callable) -> Callable:
    """Compile a small helper called from inside kernels (never itself parallel)."""
    disp = numba.njit(inline="never", **_COMMON)(fn)
    HELPERS.append(disp)
    return disp
