"""The training arithmetic has not changed: same bits as the recorded fingerprint.

``tests/data/fingerprint.json`` was made with ``python tests/fingerprint.py --write``;
every refactor must keep these bits. The unfused digests date from before the
layer/backend restructuring; the fused ones were recorded again when the fused conv +
pool kernels began computing only the pixels their pool reads (sums of fewer terms:
other bits, by design, see kernels/windows.py), and only then.
Float bits depend on the BLAS kernels OpenBLAS picks for the CPU, so the test
compares only where the CPU model and BLAS kernels match the recorded ones.
"""

import json

import pytest

from fingerprint import CONFIGS, PATH, blas_info, train_digest

RECORDED = json.loads(PATH.read_text())


def _same_machine_kind() -> tuple[bool, str]:
    here = blas_info()
    for key in ("cpu_model", "blas"):
        if here[key] != RECORDED[key]:
            return False, f"recorded on {key}={RECORDED[key]!r}, this machine has {here[key]!r}"
    return True, ""


@pytest.mark.parametrize("backend,threads,fused", CONFIGS)
def test_final_weights_match_the_recorded_fingerprint(backend, threads, fused):
    same, why = _same_machine_kind()
    if not same:
        pytest.skip(f"BLAS bits differ across machine kinds: {why}")
    key = f"{backend}@{threads}{'' if fused else '-unfused'}"
    assert train_digest(backend, threads, fused) == RECORDED["digests"][key]


def test_every_build_recorded_the_same_bits():
    """Serial and parallel at every thread count: one digest with the fusion, one without
    (the fused kernels sum fewer terms, so the two differ)."""
    for fused in (True, False):
        digests = {v for k, v in RECORDED["digests"].items() if k.endswith("-unfused") != fused}
        assert len(digests) == 1
    assert len(set(RECORDED["digests"].values())) == 2
