"""bench/neighbour.py, bench/startup.py, bench/tta.py, bench/peak_gap.py,
bench/compile_profile.py, bench/products.py, bench/numba_gemm.py, bench/winograd.py: flags,
arithmetic and report structure only (the real runs take minutes on a quiet machine; no timing
is asserted anywhere)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))


@pytest.mark.parametrize("script", ["neighbour.py", "startup.py", "tta.py"])
def test_help(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--out" in r.stdout


def test_neighbour_configs_and_report():
    import neighbour

    assert neighbour.parse_config("parallel@2:GOMP_SPINCOUNT=1000,OMP_WAIT_POLICY=passive") == (
        "parallel", 2, {"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": "passive"})
    assert neighbour.parse_config("cli") == ("cli", None, {})
    for bad in ("parallel", "gpu@2", "serial:NOEQUALS"):
        with pytest.raises(argparse.ArgumentTypeError):
            neighbour.parse_config(bad)

    def row(config, quiet, busy):
        return {"config": config, "threading_layer": "omp", "phases": [
            {"busy": False, "epoch_seconds": [quiet], "loadavg": [0.1, 0.1, 0.1]},
            {"busy": True, "epoch_seconds": [busy], "loadavg": [1.0, 0.5, 0.2],
             "core_share": 0.9}]}

    rows = [row("serial", 10.0, 11.0), row("cli", 6.0, 12.0), row("torch@2", 5.0, 40.0),
            row("parallel@2", 5.0, 30.0)]
    summary = {s["config"]: s for s in neighbour.summarize(rows)}
    assert summary["cli"]["busy_vs_serial_busy"] == pytest.approx(12 / 11)
    assert summary["cli"]["busy_vs_torch2_busy"] == pytest.approx(12 / 40)
    assert summary["cli"]["slowdown"] == pytest.approx(2.0)
    assert summary["cli"]["quiet_vs_parallel2_quiet"] == pytest.approx(6 / 5)
    report = {"command": "x", "started": "t", "machine": {
        "cpu_model": "cpu", "cpu_count": 2, "loadavg_start": [0, 0, 0], "loadavg_end": [0, 0, 0]},
        "settings": {"train_images": 10, "epochs": 1, "rounds": 1},
        "configurations": rows, "summary": list(summary.values())}
    md = neighbour.render(report)
    assert md.count("\n| `") == 4 and "busy / serial busy" in md
    assert "| 1.20 |" in md  # cli quiet / parallel@2 quiet


def test_tta_report(tmp_path):
    import tta

    curve = {"warm_up_seconds": 1.0, "reached_at_epoch": 2, "seconds_to_target": 20.0,
             "epochs": [{"epoch": e, "train_seconds_total": 10.0 * e, "test_acc": 0.3 * e}
                        for e in (1, 2)]}
    rep = {"command": "x", "started": "t", "cpu_model": "cpu", "cpu_count": 2,
           "loadavg_start": [0, 0, 0], "loadavg_end": [0, 0, 0], "threads": 2,
           "torch_threads": 2, "train_images": 10, "test_images": 10,
           "results": [{"recipe": "plain", "target": 0.5, "augment": False,
                        "lr_schedule": "constant", "lr": 1e-3,
                        "curves": {"ours": curve, "torch@2": dict(curve,
                                                                  seconds_to_target=10.0)}}]}
    md = tta.render(rep)
    assert "ours / torch" in md and "| 2.00 |" in md
    assert "loader thread" not in md  # a report from before --loader-threads
    rep.update(loader_threads="auto", loader_threads_ours=0, loader_threads_torch=0)
    assert "governor on, 0 loader thread(s) (auto)); torch at 2 threads, 0 loader thread(s) " \
           "(auto)." in tta.render(rep)
    # auto is the training CLI's rule at each library's thread count; a number is used as is
    from compare import loader_threads_for  # tta's rule for both libraries

    from scratchcnn.threads import auto_loader_threads

    assert loader_threads_for("auto", "parallel@2") == auto_loader_threads("parallel", 2)
    assert loader_threads_for("auto", "torch@1") == auto_loader_threads("parallel", 1)
    assert loader_threads_for(3, "torch@2") == 3
    assert tta.build_parser().parse_args([]).loader_threads == "auto"
    tta.plot(rep, tmp_path / "tta.png")
    assert (tmp_path / "tta.png").read_bytes()[:4] == b"\x89PNG"


def test_startup_report():
    import startup

    step = {"mode": "cold-inline", "import_seconds": 1.0, "seconds": 30.0, "loadavg": [1, 1, 1],
            "per_function": {"conv2d_forward": {"incl": 7.0, "own": 3.0, "count": 1}}}
    rep = {"command": "x", "started": "t", "cpu_model": "cpu", "cpu_count": 2,
           "backend": "parallel", "threads": 2,
           "steps": [step, {"mode": "cli-warm", "first_batch_seconds": 1.5,
                            "process_seconds": 4.0, "loadavg": [1, 1, 1]}]}
    md = startup.render(rep)
    assert "| conv2d_forward | 7.00 | 3.00 | 1 |" in md and "| cli-warm | 1.5 |" in md


def _compare_report() -> dict:
    """A two-layer compare.json: 'conv1 forward' 1 GFLOP per epoch, the rest without FLOPs."""
    def config(name, threads, conv, opt):
        return {"name": name, "threads": threads,
                "breakdown_seconds": {"conv1 forward": conv, "optimizer": opt}}

    return {"command": "python bench/compare.py", "settings": {"train_images": 1000},
            "gemm_peak": {"one_thread_gflops": 10.0, "all_threads": 2,
                          "all_threads_gflops": 20.0},
            "flops": {"per_layer": {"conv1": {"forward": 1e6, "backward": 0}}},
            "configurations": [config("serial", 1, 0.4, 0.1), config("parallel@2", 2, 0.2, 0.1),
                               {"name": "torch@1", "threads": 1, "breakdown_seconds": {}}]}


def test_peak_gap_arithmetic(tmp_path):
    import json

    import peak_gap

    serial, par = peak_gap.analyse(_compare_report())
    # serial: 1e9 FLOPs at 10 GFLOP/s = 0.1 s at the peak; conv1 took 0.4 s -> gap 0.3 s
    conv = next(r for r in serial["rows"] if r["part"] == "conv1 forward")
    assert conv["seconds_at_peak"] == pytest.approx(0.1)
    assert conv["gap_seconds"] == pytest.approx(0.3)
    assert conv["peak_fraction"] == pytest.approx(0.25)
    opt = next(r for r in serial["rows"] if r["part"] == "optimizer")
    assert opt["flops"] == 0 and opt["gap_seconds"] == pytest.approx(0.1)  # all gap
    assert serial["gap_seconds"] == pytest.approx(0.5 - 0.1)
    assert sum(r["gap_share"] for r in serial["rows"]) == pytest.approx(1.0)
    assert [r["part"] for r in serial["rows"]] == ["conv1 forward", "optimizer"]  # biggest first
    # parallel@2 against the 2-thread peak: 1e9 / 20e9 = 0.05 s
    assert par["seconds_at_peak"] == pytest.approx(0.05)
    assert par["peak_fraction"] == pytest.approx(1e9 / 0.3 / 20e9)
    src = tmp_path / "compare.json"
    src.write_text(json.dumps(_compare_report()))
    assert peak_gap.main([str(src), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "peak_gap.md").read_text()
    assert "**serial**" in md and "**parallel@2**" in md and "| optimizer |" in md


def test_peak_gap_refuses_a_report_without_breakdown(tmp_path, capsys):
    import json

    import peak_gap

    rep = _compare_report()
    rep["configurations"] = rep["configurations"][2:]
    src = tmp_path / "compare.json"
    src.write_text(json.dumps(rep))
    assert peak_gap.main([str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "compare.json" in err and "breakdown" in err


def test_compile_profile_variants():
    import compile_profile

    assert compile_profile._env_of("") == {}
    assert compile_profile._env_of("NUMBA_OPT=2  NUMBA_LOOP_VECTORIZE=0") == {
        "NUMBA_OPT": "2", "NUMBA_LOOP_VECTORIZE": "0"}
    # a malformed variant is refused in one line before any process is started
    r = subprocess.run([sys.executable, str(BENCH / "compile_profile.py"), "--step",
                        "--variant", "NUMBA_OPT"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "expected NAME=VALUE" in r.stderr


def test_products_table_arithmetic():
    import products

    config = {"step_ms": {"conv1 forward": 3.0, "optimizer": 1.0},
              "products_ms": {"conv1 forward": 2.0},
              "flops": {"conv1 forward": 2e7}}
    md, totals = products.table(config, peak_gflops=20.0)
    # 2e7 FLOPs at 20 GFLOP/s = 1 ms at the peak: the step (4 ms) is at 25%, the products
    # alone (2 ms) at 50%; glue = the conv's 1 ms + the optimizer's 1 ms
    assert totals["step_ms"] == pytest.approx(4.0)
    assert totals["glue_ms"] == pytest.approx(2.0) and totals["glue_share"] == pytest.approx(0.5)
    assert totals["step_peak_fraction"] == pytest.approx(0.25)
    assert totals["products_peak_fraction"] == pytest.approx(0.5)
    # at 40% of the peak the step may take 2.5 ms: 2 ms of products leave 0.5 ms of glue
    assert products.table(config, 20.0, target=0.4)[1]["glue_ms_at_target"] == pytest.approx(0.5)
    assert "| conv1 forward | 3.000 | 2.000 | 50% | 1.000 | 25.0% |" in md
    assert "| optimizer | 1.000 | 0.000 | - | 1.000 | 25.0% |" in md
    # the glue by piece: conv1 forward's 1 ms of glue, 0.25 + 0.5 of it timed as pieces
    config["glue_pieces_ms"] = {"conv1 forward": {"patches": 0.25, "pool": 0.5}}
    md, rows = products.pieces_table(config)
    assert rows == [{"part": "conv1 forward", "glue_ms": pytest.approx(1.0),
                     "pieces_ms": {"patches": 0.25, "pool": 0.5}, "rest_ms": pytest.approx(0.25)}]
    assert "| conv1 forward | 1.000 | 0.250 | 0.500 |  |  |  |  |  | 0.250 | 25.0% |" in md
    assert products.in_step_cost(config) is None  # a report from before alone_ms
    # the part by itself took 2.9 ms of its 3 ms in the step: 0.1 ms of the 0.25 ms rest is
    # the cost of running in the step, 0.15 ms stays unexplained inside the kernel
    config["alone_ms"] = {"conv1 forward": 2.9, "optimizer": 0.5}
    md, rows = products.pieces_table(config)
    assert rows[0]["rest_in_step_ms"] == pytest.approx(0.1)
    assert rows[0]["rest_in_kernel_ms"] == pytest.approx(0.15)
    assert "| 0.150 | 0.100 | 0.250 | 25.0% |" in md and "rest: in the step" in md
    cost = products.in_step_cost(config)
    assert cost == {"alone_ms": pytest.approx(3.4), "step_ms": pytest.approx(4.0),
                    "cost_ms": pytest.approx(0.6), "cost_share": pytest.approx(0.15)}


def test_products_run_covers_every_product(tmp_path):
    """A tiny real run: both configurations, every conv and dense part has its products,
    and their FLOPs add up to the hand count of the network (bench/harness.py)."""
    import json

    out = tmp_path / "p"
    r = subprocess.run([sys.executable, str(BENCH / "products.py"), "--threads", "2",
                        "--steps", "2", "--rounds", "1", "--gemm-size", "128", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((out / "products.json").read_text())
    assert [c["name"] for c in rep["configurations"]] == ["serial", "parallel@2"]
    peak = rep["gemm_peak"]  # probed every round; the median is the one reported
    assert len(peak["per_round"]) == 1
    assert peak["all_threads_gflops"] == peak["per_round"][0]["all_threads_gflops"] > 0
    per_image = 3_110_400 + 18_690_048 + 3_538_944 + 393_216 + 3_840  # tests/test_bench_quick
    for c in rep["configurations"]:
        layers = ("conv1", "conv2", "conv3", "dense1", "dense2")
        want = {f"{n} {d}" for n in layers for d in ("forward", "backward")}
        assert set(c["products_ms"]) == want and set(c["flops"]) == want
        assert want <= set(c["step_ms"]) and "optimizer" in c["step_ms"]
        assert all(v > 0 for v in c["products_ms"].values())
        assert sum(c["flops"].values()) == pytest.approx(32 * per_image)
        pieces = {p: set(v) for p, v in c["glue_pieces_ms"].items()}
        assert pieces == {"conv1 forward": {"patches", "pool"},
                          "conv1 backward": {"unpool", "sums"},
                          "conv2 forward": {"patches", "pool"},
                          "conv2 backward": {"unpool", "fold", "sums"},
                          "conv3 forward": {"patches", "scatter"},
                          "conv3 backward": {"gather", "fold", "sums"}}
        assert all(v > 0 for d in c["glue_pieces_ms"].values() for v in d.values())
        assert set(c["alone_ms"]) >= want and all(v > 0 for v in c["alone_ms"].values())
        assert c["in_step"]["step_ms"] == pytest.approx(
            sum(c["step_ms"][p] for p in c["alone_ms"]))
        t = c["totals"]
        assert t["glue_ms"] == pytest.approx(t["step_ms"] - t["products_ms"])
        assert t["step_ms"] == pytest.approx(sum(c["step_ms"].values()))
    md = (out / "products.md").read_text()
    assert "#### serial" in md and "#### parallel@2" in md and "products.py --threads 2" in md


def test_numba_gemm_products_are_right_and_shaped_like_the_kernels():
    """bench/numba_gemm.py: both Numba products equal BLAS's within float32 rounding, the
    blocked one's edges included (M % 4 and N % 32 both non-zero), and its shapes are the
    products the CPU plans make for the reference network at batch 32."""
    import numba_gemm

    from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes

    rows = numba_gemm.measure(1, shapes=[("edges", 7, 13, 37), ("tiles", 8, 16, 64)])
    for r in rows:
        assert set(r["gflops"]) == {"blas", "loop", "blocked"}
        assert all(v > 0 for v in r["gflops"].values())
        assert all(d < 1e-4 for d in r["max_abs_diff"].values()), r
    shapes = {name: (M, K, N) for name, M, K, N in numba_gemm.SHAPES}
    for conv, (C, H, F) in {"conv1": (3, 32, 32), "conv2": (32, 15, 64),
                            "conv3": (64, 6, 64)}.items():
        ws = conv2d_workspace_shapes(32, C, H, H, F, 3, 3, 1, 1, 0, 0)
        K1 = ws["wb"][1]  # K + 1 (the bias folded in)
        if conv == "conv1":  # patches as columns, one sample per product
            P = ws["cols"][2]
            assert shapes["conv1 forward"] == (F, K1, P)
            assert shapes["conv1 weight gradient"] == (F, P, K1)
        else:  # patches as rows: G*P rows per product
            GP = ws["cols"][1]
            assert shapes[f"{conv} forward"] == (GP, K1, F)
    assert shapes["conv2 weight gradient"] == (64, 676, 289)
    assert shapes["conv2 input gradient"] == (676, 64, 288)
    peak = {"one_thread_gflops": 100.0, "size": 64}
    md = numba_gemm.report(rows, peak, "cmd", {"cpu_model": "cpu", "cpu_count": 2})
    assert md.count("| edges | 7 × 13 × 37 |") == 1 and "% of the peak" in md
    # the verdict follows the numbers: BLAS faster at every shape, or not
    fast = [dict(r, gflops={"blas": 50.0, "loop": 10.0, "blocked": 20.0}) for r in rows]
    sm = numba_gemm.summarize(fast, 100.0)
    assert sm == {"best_numba_percent": 20.0, "blas_percent_min": 50.0,
                  "blas_percent_max": 50.0, "blas_faster_everywhere": True}
    assert "the patches stay materialized" in numba_gemm.report(fast, peak, "cmd", {
        "cpu_model": "cpu", "cpu_count": 2})
    fast[1]["gflops"] = {"blas": 50.0, "loop": 60.0, "blocked": 20.0}
    assert not numba_gemm.summarize(fast, 100.0)["blas_faster_everywhere"]
    md = numba_gemm.report(fast, peak, "cmd", {"cpu_model": "cpu", "cpu_count": 2})
    assert "may pay" in md and "stay materialized" not in md


def test_winograd_forward_is_the_convolution():
    """bench/winograd.py: the F(2x2, 3x3) forward and its backward (dw, db, dx) equal the CPU
    plan's convolution and its gradients (float64: to rounding; float32: within float32
    rounding), for odd and even output sizes (the last tile row and column cut off or not),
    with more than one sample and channel; its multiply-add counts are the direct and the
    16-product ones; the verdict follows the ratios, forward and backward."""
    import numpy as np
    import winograd

    for N, C, H, F in [(2, 3, 7, 4), (3, 5, 8, 2), (1, 2, 3, 1)]:  # OH = 5, 6, 1
        for dtype, tol in ((np.float64, 1e-13), (np.float32, 1e-5)):
            diffs = winograd.check(N, C, H, F, dtype)
            assert set(diffs) == {"forward", "dw", "db", "dx"}
            assert max(diffs.values()) < tol, (N, C, H, F, dtype, diffs)
    rows = winograd.measure(1, layers=[("tiny", 2, 3, 7, 4)])
    (r,) = rows
    assert r["tiles"] == 2 * 3 * 3 and r["OH"] == 5
    assert r["flops_direct"] == 2 * 2 * 4 * 3 * 9 * 5 * 5
    assert r["flops_winograd_products"] == 2 * 16 * 18 * 3 * 4
    assert max(r["max_rel_diff_float32"].values()) < 1e-5
    assert max(r["max_rel_diff_float64"].values()) < 1e-13
    assert set(r["ms"]) == {"im2row + BLAS (now)", "winograd", "input transform", "16 products",
                            "output transform", "filter transform"}
    assert set(r["ms_backward"]) == {"now (both gradients)", "winograd", "output adjoint",
                                     "32 products", "input adjoint", "filter adjoint"}
    fake = [dict(r, ratio=0.8, backward_ratio=0.9), dict(r, layer="other", ratio=1.2)]
    assert not winograd.summarize(fake)["winograd_faster_everywhere"]
    assert winograd.summarize(fake[:1])["winograd_faster_everywhere"]
    assert not winograd.summarize([dict(r, ratio=0.8, backward_ratio=1.1)])[
        "winograd_faster_everywhere"]
    md = winograd.report(fake, {"one_thread_gflops": 100.0, "size": 64}, "cmd",
                         {"cpu_model": "cpu", "cpu_count": 2})
    assert md.count("| tiny (3→4, 7² → 5²) |") == 2 and "not faster at every layer" in md


def test_winograd_step_estimate_shrinks_only_conv2_and_conv3():
    """bench/winograd.py's step-level estimate: the conv2 and conv3 parts of a products.py
    step shrink by their layer's forward or backward ratio, nothing else moves, and the %
    of the peak grows by the inverse of the step's shrink."""
    import winograd

    products = {"configurations": [{
        "name": "serial", "threads": 1,
        "step_ms": {"conv1 forward": 1.0, "conv2 forward": 2.0, "conv2 backward": 4.0,
                    "conv3 backward": 1.0, "optimizer": 2.0},
        "totals": {"step_ms": 10.0, "step_peak_fraction": 0.4}}]}
    summary = {"conv2": {"ratio": 0.5, "backward_ratio": 0.75, "products_ratio": 0.25,
                         "backward_products_ratio": 0.5},
               "conv3": {"ratio": 0.8, "backward_ratio": 0.5, "products_ratio": 0.4,
                         "backward_products_ratio": 0.25},
               "winograd_faster_everywhere": True}
    (e,) = winograd.step_estimate(products, summary)
    saved = 2.0 * 0.5 + 4.0 * 0.25 + 1.0 * 0.5  # conv2 forward, conv2 backward, conv3 backward
    bound = 2.0 * 0.75 + 4.0 * 0.5 + 1.0 * 0.75
    assert e["step_ms_estimate"] == pytest.approx(10.0 - saved)
    assert e["step_ms_bound"] == pytest.approx(10.0 - bound)
    assert e["step_peak_percent"] == pytest.approx(40.0)
    assert e["step_peak_percent_estimate"] == pytest.approx(40.0 * 10.0 / (10.0 - saved))
    assert e["step_peak_percent_bound"] == pytest.approx(40.0 * 10.0 / (10.0 - bound))
