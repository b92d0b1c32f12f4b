"""The CUDA backend against the serial CPU kernels: every kernel, a few training steps, the CLI.

Runs under Numba's CUDA simulator where no GPU is present. The simulator must
be switched on before numba is first imported, so these tests run in their own
pytest process (``.ci/run`` does this after the main test run):

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda

On a machine with a CUDA GPU they run on the GPU, also inside the main test
run. Otherwise (main run, no GPU) they skip with the reason. The simulator runs
each GPU thread as a Python thread: shapes here are tiny on purpose.

(No ``conftest.py`` in this folder: a second conftest.py outside a package
replaces ``sys.modules["conftest"]``, which ``tests/test_train_cli.py`` imports
from; the skip lives in ``pytestmark`` below instead.)
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import scratchcnn as sc
from scratchcnn.kernels import CPU_ONLY, KERNEL_NAMES, get_backend, serial
from scratchcnn.kernels.conv_fast import conv2d_workspace_shapes
from scratchcnn.loop import train_step

from conftest import cuda_unavailable, write_fake_cifar_files

REASON = cuda_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

if REASON is None and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator's syncthreads is a polling loop between Python threads:
    # a short GIL switch interval makes it several times faster.
    sys.setswitchinterval(1e-4)

F32 = np.float32


@pytest.fixture(scope="module")
def cu():
    return get_backend("cuda")


def close(got, want, tol: float = 2e-5) -> None:
    """float32 agreement: absolute error <= tol * max(1, |want|max)."""
    want = np.asarray(want)
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


def test_backend_has_every_kernel_and_the_array_api(cu):
    assert cu.name == "cuda"
    for name in (*KERNEL_NAMES, "empty", "zeros", "to_device", "to_host", "copy_into",
                 "synchronize"):
        if name in CPU_ONLY:  # the conv + pool fusion: the layers run unfused on CUDA
            assert not hasattr(cu, name), name
        else:
            assert callable(getattr(cu, name)), name
    a = np.arange(6, dtype=F32).reshape(2, 3)
    d = cu.to_device(a)
    assert cu.is_device_array(d) and d.shape == (2, 3) and d.dtype == F32
    cu.copy_into(d, a[::-1])
    assert (cu.to_host(d) == a[::-1]).all()
    assert (cu.to_host(cu.zeros((4,), F32)) == 0).all()


def test_no_cpu_kernel_lacks_a_cuda_version(cu):
    if cu.missing:  # a CPU kernel added after the CUDA backend was written
        pytest.skip(f"CPU kernels without a CUDA version yet: {', '.join(cu.missing)}")


# ---------------------------------------------------------------------------------------------
# kernels: the CUDA launcher against the serial CPU kernel on the same inputs
# ---------------------------------------------------------------------------------------------
# (N, C, H, W, F, KH, KW, sh, sw, ph, pw)
CONV_CASES = [
    (2, 2, 5, 5, 3, 3, 3, 1, 1, 1, 1),  # "same" padding
    (2, 2, 7, 6, 2, 3, 3, 2, 2, 1, 1),  # stride 2 with padding
    (3, 1, 6, 5, 2, 2, 3, 2, 1, 0, 1),  # non-square kernel, mixed stride and padding
]


def _random_conv_cases(count: int, seed: int = 7) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    cases: list[tuple[int, ...]] = []
    while len(cases) < count:
        n, c, f = rng.integers(1, 3), rng.integers(1, 3), rng.integers(1, 4)
        h, w = rng.integers(3, 8, size=2)
        kh, kw = rng.integers(1, 4, size=2)
        sh, sw = rng.integers(1, 3, size=2)
        ph, pw = rng.integers(0, 2, size=2)
        if h + 2 * ph >= kh and w + 2 * pw >= kw:
            cases.append(tuple(int(v) for v in (n, c, h, w, f, kh, kw, sh, sw, ph, pw)))
    return cases


@pytest.mark.parametrize("case", CONV_CASES + _random_conv_cases(2), ids=str)
def test_conv_kernels(cu, case):
    n, c, h, w, f, kh, kw, sh, sw, ph, pw = case
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    k, p = c * kh * kw, oh * ow
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w), dtype=F32)
    wt = rng.standard_normal((f, c, kh, kw), dtype=F32)
    b = rng.standard_normal(f, dtype=F32)
    dout = rng.standard_normal((n, f, oh, ow), dtype=F32)
    dx_, wt_, b_, dout_ = (cu.to_device(a) for a in (x, wt, b, dout))

    # forward: im2col + product (fills cols), and the direct loop nest; relu fused or not
    ws = conv2d_workspace_shapes(n, c, h, w, f, kh, kw, sh, sw, ph, pw)
    cpu = {key: np.empty(shape, F32) for key, shape in ws.items()}
    cols_ = cu.empty((n, k, p), F32)  # the CUDA kernels' only workspace
    for relu in (True, False):  # ends with relu=False: cols and out feed the checks below
        out = np.empty((n, f, oh, ow), F32)
        serial.conv2d_forward(x, wt, b, sh, sw, ph, pw, relu, cpu["wb"], cpu["cols"],
                              cpu["gemm_out"], out)
        out_ = cu.empty((n, f, oh, ow), F32)
        cu.conv2d_forward(dx_, wt_, b_, sh, sw, ph, pw, relu, cols_, out_)
        close(cu.to_host(out_), out)
    assert cu.to_host(cols_).shape == (n, k, p)  # the CUDA im2col layout: one matrix per sample
    direct_ = cu.empty((n, f, oh, ow), F32)
    cu.conv2d_forward_direct(dx_, wt_, b_, sh, sw, ph, pw, direct_)
    close(cu.to_host(direct_), out)

    # input gradient (the CUDA kernel gathers; the CPU workspaces are unused there)
    dx = np.empty_like(x)
    serial.conv2d_backward_input(dout, wt, sh, sw, ph, pw, cpu["gemm_out"], cpu["dcols"], dx)
    ddx_ = cu.empty(x.shape, F32)
    cu.conv2d_backward_input(dout_, wt_, sh, sw, ph, pw, ddx_)
    close(cu.to_host(ddx_), dx)

    # weight and bias gradients: one block per weight and per batch chunk, one atomic each;
    # samples_per_block=1 makes every sample its own block (N atomics per weight)
    dw, db = np.empty_like(wt), np.empty_like(b)
    serial.conv2d_backward_weight(dout, cpu["cols"], cpu["gemm_out"], cpu["partial"], dw, db)
    for spb in (8, 1):
        dw_, db_ = cu.empty(wt.shape, F32), cu.empty(b.shape, F32)
        cu.conv2d_backward_weight(dout_, cols_, dw_, db_, samples_per_block=spb)
        close(cu.to_host(dw_), dw)
        close(cu.to_host(db_), db)


# (N, C, H, W, KH, KW, sh, sw)
POOL_CASES = [
    (2, 2, 6, 6, 2, 2, 2, 2),  # the network's 2x2 pool
    (1, 2, 7, 6, 3, 2, 2, 1),  # overlapping windows: atomics in the backward pass
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_maxpool_kernels(cu, case):
    n, c, h, w, kh, kw, sh, sw = case
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, size=(n, c, h, w)).astype(F32)  # few values: many ties
    dout = rng.standard_normal((n, c, oh, ow), dtype=F32)
    out, am = np.empty((n, c, oh, ow), F32), np.empty((n, c, oh, ow), np.int64)
    serial.maxpool2d_forward(x, kh, kw, sh, sw, out, am)
    out_, am_ = cu.empty(out.shape, F32), cu.empty(am.shape, np.int64)
    cu.maxpool2d_forward(cu.to_device(x), kh, kw, sh, sw, out_, am_)
    assert (cu.to_host(out_) == out).all()
    assert (cu.to_host(am_) == am).all()  # same tie rule: the first maximum wins
    for relu in (False, True):
        dx = np.empty_like(x)
        serial.maxpool2d_backward(dout, am, out, relu, dx)
        dx_ = cu.empty(x.shape, F32)
        cu.maxpool2d_backward(cu.to_device(dout), am_, out_, relu, dx_)
        close(cu.to_host(dx_), dx)


def test_dense_kernels(cu):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 7), dtype=F32)
    w = rng.standard_normal((7, 5), dtype=F32)
    b = rng.standard_normal(5, dtype=F32)
    dy = rng.standard_normal((3, 5), dtype=F32)
    x_, w_, b_, dy_ = (cu.to_device(a) for a in (x, w, b, dy))
    for relu in (False, True):
        out, out_ = np.empty((3, 5), F32), cu.empty((3, 5), F32)
        serial.dense_forward(x, w, b, relu, out)
        cu.dense_forward(x_, w_, b_, relu, out_)
        close(cu.to_host(out_), out)
    dx, dx_ = np.empty_like(x), cu.empty(x.shape, F32)
    serial.dense_backward_input(dy, w, dx)
    cu.dense_backward_input(dy_, w_, dx_)
    close(cu.to_host(dx_), dx)
    dw, db = np.empty_like(w), np.empty_like(b)
    dw_, db_ = cu.empty(w.shape, F32), cu.empty(b.shape, F32)
    serial.dense_backward_weight(x, dy, dw, db)
    cu.dense_backward_weight(x_, dy_, dw_, db_)
    close(cu.to_host(dw_), dw)
    close(cu.to_host(db_), db)


def test_relu_kernels(cu):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50, dtype=F32)
    x[::7] = 0  # the gradient at exactly 0 is 0
    dout = rng.standard_normal(50, dtype=F32)
    out, dx = np.empty_like(x), np.empty_like(x)
    serial.relu_forward(x, out)
    serial.relu_backward(x, dout, dx)
    x_, out_, dx_ = cu.to_device(x), cu.empty(50, F32), cu.empty(50, F32)
    cu.relu_forward(x_, out_)
    cu.relu_backward(x_, cu.to_device(dout), dx_)
    assert cu.to_host(out_).tobytes() == out.tobytes()
    assert cu.to_host(dx_).tobytes() == dx.tobytes()


def test_softmax_cross_entropy_kernel(cu):
    rng = np.random.default_rng(4)
    logits = (3 * rng.standard_normal((5, 6))).astype(F32)
    labels = rng.integers(0, 6, 5)
    losses, dlogits = np.empty(5, F32), np.empty_like(logits)
    inv_n = F32(1) / F32(len(labels))
    serial.softmax_cross_entropy(logits, labels, inv_n, losses, dlogits)
    losses_, dlogits_ = cu.empty(5, F32), cu.empty(logits.shape, F32)
    cu.softmax_cross_entropy(cu.to_device(logits), cu.to_device(labels), inv_n, losses_,
                             dlogits_)
    close(cu.to_host(losses_), losses)
    close(cu.to_host(dlogits_), dlogits)


def test_optimizer_kernels(cu):
    rng = np.random.default_rng(5)
    p, g = rng.standard_normal(40, dtype=F32), rng.standard_normal(40, dtype=F32)
    m, v = 0.1 * g, g * g
    want = [a.copy() for a in (p, g, m, v)]
    got = [cu.to_device(a) for a in (p, g, m, v)]
    scalars = (F32(1e-3), F32(0.9), F32(0.999), F32(1e-7))
    for _ in range(2):
        serial.adam_update(*want, *scalars)
        cu.adam_update(*got, *scalars)
    for a, b in zip(got, want):
        close(cu.to_host(a), b, tol=1e-6)
    want, got = [p.copy(), g, 0.1 * g], [cu.to_device(a) for a in (p, g, 0.1 * g)]
    scalars = (F32(0.01), F32(0.9), F32(1e-4))
    for _ in range(2):
        serial.sgd_update(*want, *scalars)
        cu.sgd_update(*got, *scalars)
    for a, b in zip(got, want):
        close(cu.to_host(a), b, tol=1e-6)


# ---------------------------------------------------------------------------------------------
# layers, training steps, checkpoints
# ---------------------------------------------------------------------------------------------
def tiny_net(backend: str, seed: int = 0) -> sc.Sequential:
    """Every layer type, a stride-2 padded conv; (N, 2, 8, 8) -> (N, 5)."""
    rng = np.random.default_rng(seed)
    kw = dict(backend=backend)
    return sc.Sequential([
        sc.Conv2D(2, 3, 3, padding=1, rng=rng, **kw), sc.ReLU(**kw), sc.MaxPool2D(2, **kw),
        sc.Conv2D(3, 2, 3, stride=2, padding=1, rng=rng, **kw), sc.ReLU(**kw),
        sc.Flatten(**kw), sc.Dense(8, 5, rng=rng, **kw),
    ])


def _train(backend: str, opt_name: str, steps: int, x, y):
    model = tiny_net(backend)
    loss = sc.SoftmaxCrossEntropy(backend=backend)
    if opt_name == "adam":
        opt = sc.Adam(model.parameters(), backend=backend)
    else:
        opt = sc.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, backend=backend)
    losses, correct = [], []
    for _ in range(steps):
        stats = train_step(model, loss, opt, x, y)
        losses.append(stats.loss)
        correct.append(stats.correct)
    grads = {n: get_backend(backend).to_host(p.grad) for n, p in model.named_parameters()}
    return losses, correct, grads, model.state_dict(), opt.state_dict()


@pytest.mark.parametrize("opt_name,steps", [("adam", 3), ("sgd", 2)])
def test_training_steps_match_serial(opt_name, steps):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 8, 8), dtype=F32)
    y = rng.integers(0, 5, 3)
    want = _train("serial", opt_name, steps, x, y)
    got = _train("cuda", opt_name, steps, x, y)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)  # losses, step by step
    assert got[1] == want[1]  # accuracy counts
    for g, w in zip(got[2:], want[2:]):  # gradients, weights, optimizer state
        assert g.keys() == w.keys()
        for name in w:
            assert isinstance(g[name], np.ndarray)
            close(g[name], w[name], tol=1e-5)


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
                    reason="the CUDA simulator's shared arrays (a GPU has no such race)")
def test_simulator_threads_of_a_block_share_one_shared_array(cu):
    """Under the simulator every GPU thread is a Python thread, and the simulator's
    ``cuda.shared.array`` looks an array up and stores a new one in two steps: threads
    preempted in between got different arrays, and a block reduction then summed only
    part of its values (once in CI: a conv weight gradient of exactly 0.0).
    kernels/cuda.py puts the two steps under a lock. 16 threads released together by
    a barrier, with a short GIL switch interval, over many rounds: the simulator's own
    method hands out more than one array (so this test can fail), the locked one never."""
    import threading

    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    def most_arrays_in_a_round(array_fn, threads: int = 16, rounds: int = 200) -> int:
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        most = 1
        try:
            for _ in range(rounds):
                shared, got = FakeCUDAShared(0), [None] * threads
                start = threading.Barrier(threads)

                def body(i, shared=shared, got=got, start=start):
                    start.wait()
                    got[i] = array_fn(shared, 8, np.float32)

                ts = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                most = max(most, len({id(a) for a in got}))
        finally:
            sys.setswitchinterval(interval)
        return most

    locked = FakeCUDAShared.array
    assert getattr(locked, "_scratchcnn_locked", False), "kernels/cuda.py did not patch"
    assert most_arrays_in_a_round(locked._scratchcnn_unlocked) > 1
    assert most_arrays_in_a_round(locked) == 1


def test_layers_check_device_arrays(cu):
    conv = sc.Conv2D(2, 3, 3, backend="cuda")
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        conv.forward(cu.zeros((1, 4, 5, 5), F32))
    with pytest.raises(ValueError, match="float32"):
        conv.forward(cu.zeros((1, 2, 5, 5), np.float64))
    out = conv.forward(np.zeros((1, 2, 5, 5), F32))  # a host input goes to the device
    assert cu.is_device_array(out) and out.shape == (1, 3, 3, 3)
    with pytest.raises(ValueError, match=r"conv2d \(backward\)"):
        conv.backward(cu.zeros((1, 3, 2, 2), F32))


def test_checkpoint_roundtrip_and_backend_switch(cu, tmp_path):
    from scratchcnn.checkpoint import Progress, read_progress, restore, save_checkpoint

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 8, 8), dtype=F32)
    y = rng.integers(0, 5, 2)
    model, loss = tiny_net("cuda", seed=1), sc.SoftmaxCrossEntropy(backend="cuda")
    opt = sc.Adam(model.parameters(), backend="cuda")
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    opt.step()
    save_checkpoint(tmp_path / "c.npz", model, opt, Progress(epoch=1))
    arrays, progress = read_progress(tmp_path / "c.npz")
    assert progress.epoch == 1

    other, other_opt = tiny_net("cuda", seed=2), None
    other_opt = sc.Adam(other.parameters(), backend="cuda")
    restore(arrays, "c.npz", other, other_opt)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert a.tobytes() == b.tobytes()
    for key, a in opt.state_dict().items():
        assert a.tobytes() == other_opt.state_dict()[key].tobytes()
    want = cu.to_host(model.forward(x))
    assert (cu.to_host(other.forward(x)) == want).all()

    other.backend = "serial"  # parameters move to the host ...
    assert isinstance(other.parameters()[0].value, np.ndarray)
    close(other.forward(x), want)
    other.backend = "cuda"  # ... and back
    assert cu.is_device_array(other.parameters()[0].value)
    assert (cu.to_host(other.forward(x)) == want).all()


def test_train_cli_backend_cuda(tmp_path, monkeypatch, capsys):
    """``--backend cuda`` end to end (on a tiny network: the simulator is slow), vs serial."""
    import scratchcnn.model
    from scratchcnn import train as train_mod
    from scratchcnn.checkpoint import read_progress

    def small_cnn(seed=0, backend="parallel", **_):  # (N, 3, 32, 32) -> (N, 10)
        rng = np.random.default_rng(seed)
        kw = dict(backend=backend)
        return sc.Sequential([
            sc.MaxPool2D(4, **kw), sc.Conv2D(3, 2, 3, stride=2, padding=1, rng=rng, **kw),
            sc.ReLU(**kw), sc.Flatten(**kw), sc.Dense(32, 10, rng=rng, **kw),
        ])

    monkeypatch.setattr(scratchcnn.model, "reference_cnn", small_cnn)
    write_fake_cifar_files(tmp_path / "data", n=4, seed=3)  # 20 train, 4 test images
    runs = {}
    for backend in ("serial", "cuda"):
        out = tmp_path / backend
        code = train_mod.main(["--backend", backend, "--data-dir", str(tmp_path / "data"),
                               "--out", str(out), "--epochs", "1", "--batch-size", "8",
                               "--limit-train", "16", "--loader-threads", "0", "--threads", "2",
                               "--no-progress"])
        assert code == 0
        runs[backend] = read_progress(out / "checkpoint.npz")[0]
    assert "backend cuda" in capsys.readouterr().out
    assert runs["cuda"].keys() == runs["serial"].keys()
    for key, want in runs["serial"].items():
        if key != "meta":
            close(runs["cuda"][key], want, tol=1e-5)
