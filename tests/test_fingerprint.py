"""The training arithmetic has not changed: same bits as the recorded fingerprint.

``tests/data/fingerprint.json`` was made with ``python tests/fingerprint.py --write``
before the layer/backend restructuring; every refactor since must keep these bits.
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
    assert len(set(RECORDED["digests"].values())) == 1
