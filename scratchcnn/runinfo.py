"""What a run records about the machine and the software it ran on."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_kernels() -> list[str]:
    """The BLAS libraries loaded in this process and the kernel set each picked for this
    CPU (OpenBLAS chooses per CPU kind: float bits differ between kinds)."""
    from threadpoolctl import threadpool_info

    import scratchcnn.kernels  # noqa: F401  (loads SciPy's BLAS, which the kernels call)

    return sorted(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                  for i in threadpool_info() if i.get("user_api") == "blas")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("scratchcnn", "numpy", "numba", "llvmlite", "scipy", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, object]:
    """CPU model, core count, OS, Numba's thread pool and threading layer."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        layer = f"not initialized (configured: {numba.config.THREADING_LAYER})"
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "numba_num_threads_pool": numba.config.NUMBA_NUM_THREADS,
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
    }
