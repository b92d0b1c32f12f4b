"""Exercise checks (minitorch style): the student's file fails, a right answer passes.

- By default (the normal suite) every check runs against the committed solution
  in docs/exercises/solutions/, and the skeleton in docs/exercises/ is shown to
  fail the same check, so the check can tell right from wrong.
- With ``SCRATCHCNN_EXERCISE=1`` the checks run against the student's own file
  in docs/exercises/ (the skeleton until they fix it): red, then green. The
  "skeleton fails" check is not defined then: that file is the student's edit,
  not the skeleton, and it would fail once the student's fix is right.
- After the exercise, ``git checkout -- docs/exercises/`` restores the skeleton
  for the normal suite (whose skeleton check fails on a solved file, and says so).

Exercise 1 (weight_grad): integer-valued data, so every partial sum is exact in
float32 and any difference from the exact answer is a lost update (a race), not
a change of summation order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import numpy as np
import pytest

from conftest import assert_skeleton_fails, load_file_as

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "docs" / "exercises"
STUDENT = os.environ.get("SCRATCHCNN_EXERCISE") == "1"


def _load(path: Path):
    name = "exercise_" + "_".join(path.relative_to(EX).with_suffix("").parts)
    return load_file_as(name, path)


def _integer_data(n: int, features: int, outputs: int):
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(n, features)).astype(np.float32)
    dy = rng.integers(-2, 3, size=(n, outputs)).astype(np.float32)
    exact = (x.astype(np.int64).T @ dy.astype(np.int64)).astype(np.float32)
    return x, dy, exact


def check_weight_grad(mod, set_threads, repeats: int = 3) -> None:
    """Exact on 2 (and up to 4) threads, every time; same bits at 1 and 2 threads."""
    x, dy, exact = _integer_data(1 << 18, 8, 4)  # |sums| <= 2**20: exact in float32
    bits = {}
    for threads in (1, 2, min(4, numba.config.NUMBA_NUM_THREADS)):
        set_threads(threads)
        for r in range(repeats):
            dw = np.full((8, 4), np.nan, np.float32)
            mod.weight_grad(x, dy, dw)
            wrong = int(np.count_nonzero(dw != exact))
            assert wrong == 0, (f"{threads} thread(s), run {r + 1}: {wrong} of {dw.size} "
                                f"elements of dW are not the exact sum: lost updates (a race)")
        bits[threads] = dw.tobytes()
    assert bits[1] == bits[2], "the bits change with the thread count"


if STUDENT:  # defined only in student mode, so that the normal suite skips nothing
    def test_student_weight_grad(numba_threads):
        check_weight_grad(_load(EX / "weight_grad.py"), numba_threads, repeats=20)


def test_solution_weight_grad(numba_threads):
    check_weight_grad(_load(EX / "solutions" / "weight_grad.py"), numba_threads)


if not STUDENT:  # in student mode docs/exercises/ holds the student's edit, not the skeleton
    def test_skeleton_weight_grad_fails_the_check(numba_threads):
        """The skeleton splits the batch: all threads add into all of dW. With 2^18
        samples and 2 threads the lost updates show in practically every run (see
        docs/results/racy.md); the check repeats up to 20 times to be sure."""
        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.fail("needs Numba's pool to have at least 2 threads")
        path = EX / "weight_grad.py"
        assert_skeleton_fails(lambda: check_weight_grad(_load(path), numba_threads, repeats=20),
                              path, "lost updates")
