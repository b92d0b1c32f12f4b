"""bench/scaling.py: the model on synthetic measurements, and a ``--quick`` run end to end.

The model part (shares, payloads, the alpha-beta fit, the step-time sum, where
scaling stops) runs on made-up inputs and is checked for structure and
consistency, never for a timing or a ratio. The ``--quick`` run needs the mpi
extra (mpi4py and ``mpiexec``) and trains on a small fake CIFAR-10.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_file_as, write_fake_cifar_files

ROOT = Path(__file__).resolve().parent.parent
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and (
    shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec"))
needs_mpi = pytest.mark.skipif(
    not HAVE_MPI, reason="the mpi extra is not installed (pip install '.[mpi]': mpi4py and mpich)")


@pytest.fixture(scope="module")
def scaling():
    return load_file_as("bench_scaling", ROOT / "bench" / "scaling.py")


def synthetic(scaling, batches=(32, 256), max_nodes=16) -> dict:
    """Measurements as the probes write them: compute linear in the share, bytes from a
    made-up per-sample payload, the unit from the real reference network."""
    from scratchcnn.distributed import sample_unit
    from scratchcnn.model import reference_cnn

    model = reference_cnn(seed=0, backend="serial")
    out = []
    for n in batches:
        unit = sample_unit(model, n, (3, 32, 32))
        every, largest = scaling.needed_sizes(n, unit, max_nodes)
        sizes = {str(s): {"bytes": 16 + 1000 * s, "piece_shapes": {},
                          "seconds": 1e-3 * s if s in largest else None} for s in every}
        out.append({"batch": n, "unit": unit, "largest_share_sizes": largest, "sizes": sizes,
                    "finish_seconds": 2e-3, "one_process_step_seconds": 1e-3 * n})
    return {"compute": {"threads": 2, "repeats": 1, "header_bytes": 16, "batches": out},
            "allgather": {"fit": {"alpha_s": 1e-5, "beta_s_per_byte": 1e-9}}}


def test_alpha_beta_fit_recovers_a_line(scaling):
    alpha, beta = 3e-6, 2.5e-10
    pts = [(b, alpha + b * beta) for b in (16, 1024, 65536, 1 << 20, 1 << 24)]
    a, b = scaling.fit_alpha_beta(pts)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6)
    a, b = scaling.fit_alpha_beta([(16, 1.0), (1 << 20, 1.0)])  # flat: no negative beta
    assert a >= 0 and b >= 0


def test_network_flag(scaling):
    net = scaling.parse_network("10GbE=50,10")
    assert net["alpha_s"] == pytest.approx(50e-6) and net["beta_s_per_byte"] == pytest.approx(8e-10)
    with pytest.raises(Exception, match="NAME=ALPHA_US,GBIT_PER_S"):
        scaling.parse_network("10GbE")


def test_model_rows_are_consistent(scaling):
    measured = synthetic(scaling)
    nets = [scaling.parse_network("slow=100,1")]
    model = scaling.build_model(measured, nets, max_nodes=16)
    assert [c["network"] for c in model["batches"][0]["curves"]][1:] == ["slow"]
    assert model["networks"][0]["assumed"] is False and model["networks"][1]["assumed"] is True
    for b in model["batches"]:
        n, unit = b["batch"], b["unit"]
        assert b["max_ranks_with_data"] == n // unit
        for c in b["curves"]:
            rows, net = c["rows"], next(x for x in model["networks"] if x["name"] == c["network"])
            assert [r["nodes"] for r in rows] == list(range(1, 17))
            assert rows[0]["comm_s"] == 0 and rows[0]["speedup"] == 1
            for r in rows:
                s = scaling.share_sizes(n, unit, r["nodes"])
                assert r["largest_share"] == max(s) and sum(s) == n
                assert r["ranks_with_data"] == min(r["nodes"], n // unit)
                assert r["largest_block_bytes"] == 16 + 1000 * max(s)
                assert r["gathered_bytes"] == sum(16 + 1000 * v for v in s)
                assert r["comm_s"] == pytest.approx(
                    (r["nodes"] - 1) * (net["alpha_s"] + r["largest_block_bytes"]
                                        * net["beta_s_per_byte"]))
                assert r["step_s"] == pytest.approx(r["compute_s"] + r["finish_s"] + r["comm_s"])
                assert r["images_per_s"] == pytest.approx(n / r["step_s"])
            # past the ranks that can hold data, more nodes only add communication
            tail = [r for r in rows if r["nodes"] >= n // unit]
            assert all(a["step_s"] < b["step_s"] for a, b in zip(tail, tail[1:]))
            stop = c["stops"]
            assert stop["nodes"] <= n // unit
            assert rows[stop["nodes"] - 1]["step_s"] == min(r["step_s"] for r in rows)
            assert stop["why"] and stop["finish_bound_speedup"] >= stop["speedup"]


def test_where_it_stops_names_the_data_holding_ranks(scaling):
    measured = synthetic(scaling, batches=(32,), max_nodes=8)
    free = {"name": "free", "alpha_s": 0.0, "beta_s_per_byte": 0.0, "assumed": True}
    b = scaling.build_model(measured, [free], max_nodes=8)["batches"][0]
    stop = b["curves"][1]["stops"]
    assert stop["nodes"] == 4 and "every rank that can hold data is busy" in stop["why"]


def test_reports_from_synthetic_measurements(scaling, tmp_path):
    measured = synthetic(scaling)
    measured["machine"] = {"cpu_model": "test CPU", "cpu_count": 2, "blas_kernels": ["x"],
                           "load_average_1min": [0.5, 0.7],
                           "python": "3", "numpy": "1", "numba": "0", "threading_layer": "omp"}
    measured["allgather"].update(library="none", points=[[16, 1e-5, 1e-5]])
    run = {"epoch_seconds": [{"epoch_seconds": 2.0, "comm_seconds": 0.1}],
           "median_epoch_seconds": 2.0, "median_comm_seconds": 0.1, "comm_share": 0.05,
           "command": "c"}
    measured["cli"] = {"configurations": {"1x2": run, "2x1": run}, "ratio": 1.0,
                       "ratio_names": ["2x1", "1x2"], "limit_train": 64, "batch": 32,
                       "steps_per_epoch": 2, "measured_comm_seconds_per_step": 0.05,
                       "predicted_comm_seconds_per_step": 0.01}
    scaling.write_reports(measured, [scaling.parse_network("10GbE=50,10")], 16, tmp_path, "cmd")
    text = (tmp_path / "scaling.md").read_text()
    assert "**assumed** 10GbE" in text and "measured intra-node" in text
    assert "#### Global batch 32" in text and "#### Global batch 256" in text
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert len(report["model"]["batches"][0]["curves"][0]["rows"]) == 16


@needs_mpi
def test_quick_run_end_to_end(tmp_path):
    data = tmp_path / "cifar"
    write_fake_cifar_files(data, n=40, seed=3)  # 200 training images
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "scaling.py"), "--quick", "--data-dir",
           str(data), "--out", str(out), "--network", "slow=100,1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    report = json.loads((out / "scaling.json").read_text())
    cli = report["cli"]
    assert sorted(cli["configurations"]) == sorted(cli["ratio_names"]) and cli["ratio"] > 0
    for c in cli["configurations"].values():
        assert c["median_epoch_seconds"] > 0 and 0 <= c["comm_share"] < 1
    assert cli["configurations"][cli["ratio_names"][1]]["median_comm_seconds"] == 0
    assert report["allgather"]["fit"]["alpha_s"] >= 0
    for b in report["compute"]["batches"]:
        for size in b["largest_share_sizes"]:
            assert b["sizes"][str(size)]["seconds"] > 0
        assert b["finish_seconds"] > 0
    names = [c["network"] for c in report["model"]["batches"][0]["curves"]]
    assert names[1:] == ["slow"]
    assert "scaling.png" in (out / "scaling.md").read_text()
