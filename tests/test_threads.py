"""Thread set-up: cached parallel builds really run parallel; no hidden BLAS threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import json, numba, numpy as np
    from scratchcnn.kernels import parallel, serial
    x = np.arange(-500, 500, dtype=np.float32)
    serial.relu_forward(x, np.empty_like(x))
    try:
        numba.threading_layer()
        after_serial = "initialized"
    except ValueError:  # no parallel region has run in this process
        after_serial = "not initialized"
    parallel.relu_forward(x, np.empty_like(x))
    print(json.dumps({
        "after_serial": after_serial,
        "after_parallel": numba.threading_layer(),
        "cache_hits": sum(parallel.relu_forward.stats.cache_hits.values()),
    }))
""")


def _run(code: str, env_extra: dict[str, str]) -> str:
    env = {**os.environ, **env_extra}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_cached_parallel_build_is_parallel(tmp_path):
    """Numba's cache key ignores parallel=True (numba#6845); our builds have distinct names."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    cold = json.loads(_run(PROBE, env).splitlines()[-1])
    warm = json.loads(_run(PROBE, env).splitlines()[-1])
    for run in (cold, warm):
        assert run["after_serial"] == "not initialized"  # the serial build spawned no threads
        assert run["after_parallel"] in ("omp", "tbb", "workqueue")
    assert cold["cache_hits"] == 0 and warm["cache_hits"] >= 1  # the second run used the cache


def test_blas_pinned_to_one_thread():
    code = textwrap.dedent("""
        import json, scratchcnn.kernels
        from threadpoolctl import threadpool_info
        print(json.dumps([(i["internal_api"], i["num_threads"]) for i in threadpool_info()
                          if i["user_api"] == "blas"]))
    """)
    pools = json.loads(_run(code, {}).splitlines()[-1])
    assert pools, "no BLAS library found"
    assert all(n == 1 for _, n in pools), pools


def test_configure_threads_above_core_count():
    n = (os.cpu_count() or 1) + 1
    code = textwrap.dedent(f"""
        import warnings
        from scratchcnn.threads import configure_threads
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            configure_threads({n})
        import numba
        print(numba.get_num_threads(), len(w), w[0].message if w else "")
    """)
    out = _run(code, {"NUMBA_NUM_THREADS": ""}).split()
    assert out[0] == str(n) and out[1] == "1" and "cores" in " ".join(out[2:])


@pytest.mark.parametrize("bad", [0, -2, 1.5, "4"])
def test_configure_threads_rejects(bad):
    from scratchcnn.threads import configure_threads

    with pytest.raises(ValueError, match="thread count"):
        configure_threads(bad)


def test_configure_threads_after_numba_import_beyond_pool():
    import numba

    from scratchcnn.threads import configure_threads

    limit = numba.config.NUMBA_NUM_THREADS
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        configure_threads(limit + 1)


def test_package_layout():
    """kernels/ is installed as scratchcnn.kernels, never as a top-level module."""
    import scratchcnn.kernels as k

    assert k.__name__ == "scratchcnn.kernels"
    code = "import importlib.util as u; print(u.find_spec('kernels') is None)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.stdout.strip() == "True"


def test_reference_network_size():
    import scratchcnn as sc

    m = sc.reference_cnn(seed=0, backend="serial")
    assert m.num_parameters() == 122_570
    w = m.layers[0].weight.value
    limit = (6 / (27 + 288)) ** 0.5  # Glorot: fan_in 3*3*3, fan_out 32*3*3
    assert w.dtype.name == "float32" and abs(w).max() <= limit and abs(w).max() > 0.9 * limit
    assert all(not p.value.any() for n, p in m.named_parameters() if n.endswith("bias"))
    again = sc.reference_cnn(seed=0, backend="serial")
    assert all(a.value.tobytes() == b.value.tobytes()
               for a, b in zip(m.parameters(), again.parameters()))


def test_auto_loader_threads_only_on_free_cores():
    """--loader-threads auto: a loader thread per core the compute threads leave free,
    at most 2; none where they take every core, or for distributed ranks."""
    from scratchcnn.threads import auto_loader_threads

    assert auto_loader_threads("parallel", 2, cores=2) == 0
    assert auto_loader_threads("parallel", 3, cores=2) == 0  # oversubscribed: still 0
    assert auto_loader_threads("parallel", 1, cores=2) == 1
    assert auto_loader_threads("parallel", 8, cores=16) == 2
    assert auto_loader_threads("serial", 2, cores=2) == 1  # serial computes on 1 thread
    assert auto_loader_threads("serial", 1, cores=1) == 0
    assert auto_loader_threads("cuda", 16, cores=16) == 2
    assert auto_loader_threads("parallel", 1, cores=16, distributed=True) == 0


@pytest.mark.parametrize(("text", "want"), [("auto", "auto"), ("AUTO", "auto"), ("0", 0),
                                            ("3", 3)])
def test_loader_threads_flag(text, want):
    from scratchcnn.train import build_parser

    assert build_parser().parse_args(["--loader-threads", text]).loader_threads == want


@pytest.mark.parametrize("bad", ["-1", "two", ""])
def test_loader_threads_flag_rejects(bad, capsys):
    from scratchcnn.train import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--loader-threads", bad])
    err = capsys.readouterr().err
    assert "--loader-threads" in err and "expected auto or an integer >= 0" in err
