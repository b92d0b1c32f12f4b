"""A real Numba typing error, and how to read it.

    python docs/examples/typing_error.py

``half_sums`` is correct Python and NumPy: ``len(x) / 2`` is a float, and
NumPy's ``np.zeros`` would complain too, but only when run. Numba types the
whole function before it runs anything, so it stops at compile time with a
``TypingError``. The script prints the first lines of the message (the part
to read), then calls the fixed version (``//``, an integer division).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core.errors import TypingError


@njit(cache=False)
def half_sums(x):
    out = np.zeros(len(x) / 2, np.float32)  # BUG: "/" gives a float, a size must be an int
    for i in range(out.shape[0]):
        out[i] = x[2 * i] + x[2 * i + 1]
    return out


@njit(cache=False)
def half_sums_fixed(x):
    out = np.zeros(len(x) // 2, np.float32)
    for i in range(out.shape[0]):
        out[i] = x[2 * i] + x[2 * i + 1]
    return out


def main() -> None:
    x = np.arange(6, dtype=np.float32)
    try:
        half_sums(x)
    except TypingError as e:
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        print("TypingError, first lines of the message:")
        for ln in lines[:4]:
            print("   ", ln[:110])
        print("    ...")
        where = [i for i, ln in enumerate(lines) if "typing_error.py" in ln]
        for ln in lines[where[-1]:where[-1] + 4] if where else []:
            print("   ", ln.strip()[-110:])
    else:
        raise SystemExit("expected a TypingError")
    print("fixed:", half_sums_fixed(x))


if __name__ == "__main__":
    main()
