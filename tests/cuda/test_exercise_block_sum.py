"""Exercise 9 (CUDA block reduction), checked under the CUDA simulator.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda           # solution + skeleton fails
    SCRATCHCNN_EXERCISE=1 NUMBA_ENABLE_CUDASIM=1 \
        python -m pytest -q tests/cuda/test_exercise_block_sum.py   # your file + solution

In student mode the "skeleton fails" check is not defined: docs/exercises/block_sum.py
is then the student's edit, not the skeleton. After the exercise,
``git checkout -- docs/exercises/`` restores the skeleton for the normal suite.

Integer-valued data: the sum is exact in float32 whatever the order in which
blocks' atomics land, so the check is an equality.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_skeleton_fails, cuda_unavailable, load_file_as

ROOT = Path(__file__).resolve().parents[2]
EX = ROOT / "docs" / "exercises"
STUDENT = os.environ.get("SCRATCHCNN_EXERCISE") == "1"


REASON = cuda_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))


def _load(path: Path):
    name = "cuda_exercise_" + "_".join(path.relative_to(EX).with_suffix("").parts)
    return load_file_as(name, path)


def check_block_sum(mod) -> None:
    from numba import cuda

    x = np.random.default_rng(0).integers(-3, 4, size=3 * mod.TPB + 5).astype(np.float32)
    blocks = -(-x.size // mod.TPB)
    d_out = cuda.to_device(np.zeros(1, np.float32))
    mod.block_sum[blocks, mod.TPB](cuda.to_device(x), d_out)
    got = float(d_out.copy_to_host()[0])
    want = float(x.astype(np.int64).sum())
    assert got == want, f"block_sum gave {got}, the exact sum is {want}"


if STUDENT:  # defined only in student mode: the normal run skips nothing
    def test_student_block_sum():
        check_block_sum(_load(EX / "block_sum.py"))


def test_solution_block_sum():
    check_block_sum(_load(EX / "solutions" / "block_sum.py"))


if not STUDENT:  # in student mode docs/exercises/ holds the student's edit, not the skeleton
    def test_skeleton_block_sum_fails_the_check():
        path = EX / "block_sum.py"
        assert_skeleton_fails(lambda: check_block_sum(_load(path)), path, "exact sum")
