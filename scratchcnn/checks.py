"""Input checks at the public API: clear ``ValueError``s instead of Numba typing errors.

The kernels trust their inputs (a wrong shape there is silent garbage or a
crash), so every layer checks what it receives before calling them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: One entry per axis: an int (that exact size), or a name ("N", "H", ...) for any size >= 1.
ShapeSpec = Sequence["int | str"]


def format_spec(spec: ShapeSpec) -> str:
    """``("N", 3, "H", "W")`` -> ``"(N, 3, H, W)"``."""
    return "(" + ", ".join(str(s) for s in spec) + ("," if len(spec) == 1 else "") + ")"


def is_device_array(x: object) -> bool:
    """A numba.cuda device array (real or simulated): has a shape, a dtype and copy_to_host."""
    return not isinstance(x, np.ndarray) and hasattr(x, "copy_to_host") and hasattr(x, "dtype")


class _Spec:
    """A shape spec whose text is built lazily, in f-strings of error messages."""

    __slots__ = ("spec",)

    def __init__(self, spec: ShapeSpec) -> None:
        self.spec = spec

    def __format__(self, _: str) -> str:
        return format_spec(self.spec)


def check_array(layer: str, x: object, spec: ShapeSpec, dtype: np.dtype) -> np.ndarray:
    """Check that ``x`` is a C-contiguous ``dtype`` array matching ``spec``; return it.

    ``x`` is a NumPy array or a CUDA device array (CUDA backend).
    Raises ``ValueError`` naming the layer, the expected and the received shape.
    """
    want = _Spec(spec)  # formatted only if an error message needs it (hot path)
    device = is_device_array(x)
    if not isinstance(x, np.ndarray) and not device:
        raise ValueError(f"{layer}: expected a numpy array of shape {want}, got {type(x).__name__}")
    if x.ndim != len(spec):
        raise ValueError(
            f"{layer}: expected a {len(spec)}-D array of shape {want}, "
            f"got a {x.ndim}-D array of shape {x.shape}"
        )
    for axis, (want_size, got) in enumerate(zip(spec, x.shape)):
        if isinstance(want_size, int) and got != want_size:
            raise ValueError(
                f"{layer}: expected shape {want}, got {x.shape} (axis {axis} is {got}, "
                f"expected {want_size})"
            )
        if got < 1:
            raise ValueError(
                f"{layer}: expected shape {want}, got {x.shape} (axis {axis} is empty)"
            )
    if x.dtype != dtype:
        raise ValueError(
            f"{layer}: expected dtype {np.dtype(dtype).name} for shape {want}, got {x.dtype} "
            f"with shape {x.shape} (convert with x.astype(np.{np.dtype(dtype).name}))"
        )
    if not (x.is_c_contiguous() if device else x.flags.c_contiguous):
        raise ValueError(
            f"{layer}: expected a C-contiguous array of shape {want}, got a non-contiguous "
            f"view of shape {x.shape} (pass np.ascontiguousarray(x))"
        )
    return x


def check_float_dtype(dtype: object) -> np.dtype:
    """Layers compute in float32 (training) or float64 (gradient checks)."""
    try:
        dt = np.dtype(dtype)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
