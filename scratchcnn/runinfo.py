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
