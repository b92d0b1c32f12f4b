"""scratchcnn.lazy_llvm: a parallel kernel's machine code is made once, not once per link
of its chain, and what it computes -- and what the cache keeps -- does not change.

Each case runs in a fresh process with its own cache folder (the patch is process-wide
and the cache is the point). The bit-level check on the real kernels is
tests/test_fingerprint.py, which runs with the patch on (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from scratchcnn import lazy_llvm

PROBE = textwrap.dedent('''
    import json, sys
    import numpy as np
    import numba
    from numba import prange
    from numba.core import codegen

    if sys.argv[1] != "0":
        from scratchcnn.lazy_llvm import enable
        assert enable()
    made = []  # libraries turned into machine code
    original = codegen.JITCodeLibrary._finalize_specific

    def counting(self):
        made.append(self.name)
        return original(self)

    codegen.JITCodeLibrary._finalize_specific = counting

    @numba.njit(cache=True, inline="never")
    def helper(a, i):
        return a[i] * 2.0 + 1.0

    @numba.njit(parallel=True, cache=True)
    def kernel(a, out):
        for i in prange(a.shape[0]):
            out[i] = helper(a, i)

    if sys.argv[1] == "2":  # a compile worker: the helper is never called from Python
        from scratchcnn.lazy_llvm import defer_helpers
        assert defer_helpers([helper])

    a = np.arange(1000.0)
    out = np.empty_like(a)
    kernel(a, out)
    try:
        helper(a, 3)
        called = "ran"
    except TypeError:
        called = "TypeError"
    sig = kernel.signatures[0]
    print(json.dumps({"right": out.tolist() == (a * 2.0 + 1.0).tolist(),
                      "machine_code": made, "cache_hits": sum(kernel.stats.cache_hits.values()),
                      "asm": "ret" in kernel.inspect_asm(sig), "helper_called": called}))
''')


def _probe(tmp_path, lazy: bool | str, cache: str) -> dict:
    script = tmp_path / "probe_kernel.py"
    script.write_text(PROBE)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / cache)}
    mode = lazy if isinstance(lazy, str) else ("1" if lazy else "0")
    r = subprocess.run([sys.executable, str(script), mode], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_known_numba_or_left_alone():
    import numba

    if not lazy_llvm.supported():
        pytest.skip(f"Numba {numba.__version__}: its library finalization is not the one "
                    f"lazy_llvm was written for, so enable() leaves Numba alone")
    assert lazy_llvm.enable() is True


def test_one_machine_code_per_chain_same_results_and_a_usable_cache(tmp_path):
    if not lazy_llvm.supported():
        pytest.skip("lazy_llvm does not apply to this Numba (see test_known_numba_or_left_alone)")
    plain = _probe(tmp_path, lazy=False, cache="plain")
    lazy = _probe(tmp_path, lazy=True, cache="lazy")
    assert plain["right"] and lazy["right"] and lazy["asm"]
    # plain: the helper, the prange body (a gufunc), the two wrappers Numba builds around
    # it and the kernel each get machine code; lazy: not the body nor its wrappers (only
    # ever linked into the next)
    def chain(names: list[str]) -> list[str]:
        return [n for n in names if "wrapper" in n.lower() or "parfor_gufunc" in n]

    assert len(chain(plain["machine_code"])) == 3, plain
    assert chain(lazy["machine_code"]) == [], lazy
    assert "kernel" in lazy["machine_code"]
    # the cache the lazy process wrote serves a plain process: loaded, not compiled
    again = _probe(tmp_path, lazy=False, cache="lazy")
    assert again["right"] and again["cache_hits"] == 1


def test_deferred_helpers_get_no_machine_code_and_cannot_run_from_python(tmp_path):
    """defer_helpers (compile workers only): the helper's code reaches the kernel (right
    results, also when loaded from the cache by a plain process) but is never made into
    machine code on its own; called from Python, the helper raises instead of running."""
    if not lazy_llvm.supported():
        pytest.skip("lazy_llvm does not apply to this Numba (see test_known_numba_or_left_alone)")
    plain = _probe(tmp_path, lazy=False, cache="plain")
    assert plain["machine_code"].count("helper") >= 1 and plain["helper_called"] == "ran"
    worker = _probe(tmp_path, lazy="2", cache="worker")
    assert worker["right"] and "helper" not in worker["machine_code"], worker
    assert worker["helper_called"] == "TypeError"
    again = _probe(tmp_path, lazy=False, cache="worker")
    assert again["right"] and again["cache_hits"] == 1


def test_env_switch(monkeypatch):
    monkeypatch.setenv("SCRATCHCNN_LAZY_LLVM", "0")
    assert lazy_llvm.enable_from_env(default=True) is False
