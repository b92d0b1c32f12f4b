"""Thread-count set-up, which must happen before Numba is imported.

Numba fixes the size of its thread pool (``NUMBA_NUM_THREADS``, default: the
number of cores) when it is first imported; ``numba.set_num_threads`` can only
go below it. ``configure_threads(n)`` therefore raises the pool size in the
environment if Numba is not imported yet, then sets the thread count.
"""

from __future__ import annotations

import os
import sys
import warnings


def configure_threads(n: int) -> int:
    """Make Numba's parallel kernels use ``n`` threads; return ``n``.

    Works for any ``n`` >= 1 if called before anything imports Numba (the
    training CLI does so first thing). More threads than cores is allowed, with
    a warning: the threads then take turns on the cores.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be an integer >= 1, got {n!r}")
    if "numba" not in sys.modules:
        current = os.environ.get("NUMBA_NUM_THREADS")
        if current is None or not current.isdigit() or int(current) < n:
            os.environ["NUMBA_NUM_THREADS"] = str(n)
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if n > limit:
        raise ValueError(
            f"{n} threads requested but Numba was imported with NUMBA_NUM_THREADS={limit}; "
            f"set NUMBA_NUM_THREADS={n} in the environment (or call configure_threads "
            f"before importing numba)"
        )
    numba.set_num_threads(n)
    cores = os.cpu_count() or 1
    if n > cores:
        warnings.warn(f"{n} threads on {cores} cores: threads will share cores "
                      f"(expect no speedup beyond {cores})", stacklevel=2)
    return n
