"""CUDA kernels (numba.cuda): the CPU kernels' operations and signatures, on device arrays.

Imported only by ``scratchcnn.kernels.get_backend("cuda")``: importing
``scratchcnn.kernels`` never imports numba.cuda. Under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before numba is imported) the same code runs
on the CPU, one Python thread per GPU thread; the tests in ``tests/cuda/`` use
that where no GPU is present.

Each operation has a ``@cuda.jit`` kernel (name ending in ``_k``) and a Python
launcher with the CPU kernel's name and argument order, which picks the grid.
The launchers are what ``make_cuda_backend()`` puts in the backend namespace.
Layers reach the convolution through a plan, as on the CPU backends:
``CudaConv2DPlan`` owns the one workspace these kernels need, ``cols`` (the
forward's unrolled patches, read by the weight gradient); the CPU kernels'
other workspaces have no CUDA counterpart, and the launchers do not take them.

How the three ways of writing a gradient sum appear here (teaching material):

- **Ownership** (no race, no atomics, deterministic): one thread owns one
  output element and loops over what is summed, e.g. ``_dense_dw_k`` (one
  thread per weight, looping over the batch) or ``_conv_dx_k`` (one thread per
  input pixel, *gathering* from the outputs it influenced).
- **Block reduction** (no race, deterministic): one block owns one output; its
  threads make partial sums, combined in shared memory by a tree reduction,
  e.g. ``_conv_db_k``.
- **Block reduction + one atomic per block** (race resolved by hardware; the
  order of the few atomic additions varies, so the last bits may differ from
  run to run): ``_conv_dw_k`` splits the batch across blocks and each block
  adds its shared-memory total into the weight gradient with
  ``cuda.atomic.add``; ``_maxpool_dx_k`` scatters with atomics because
  overlapping windows may route two gradients to the same input pixel.

float32 throughout (accumulators and shared memory are float32).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from numba import config, cuda, float32

# Block sizes. The simulator runs every GPU thread as a Python thread (idle
# threads of a partly used block cost as much as busy ones) and is very slow at
# ``syncthreads``, so under it the blocks are smaller: same code, same grid
# logic (more blocks, fewer tree levels).
#: Threads per block for the one-thread-per-element kernels.
TPB = 32 if config.ENABLE_CUDASIM else 128
#: Threads per block of the shared-memory reductions (a power of two; it sizes
#: the shared array, so it is a compile-time constant).
RED_TPB = 8 if config.ENABLE_CUDASIM else 128
#: Samples per block in the conv weight gradient: the batch is split into
#: ceil(N / DW_SAMPLES_PER_BLOCK) blocks per weight, each adding one partial sum atomically.
DW_SAMPLES_PER_BLOCK = 8


def _blocks(n: int, tpb: int = TPB) -> int:
    return (n + tpb - 1) // tpb


def _lock_simulator_shared_arrays() -> bool:
    """Under the CUDA simulator: make ``cuda.shared.array`` allocate under a lock.

    The simulator runs each GPU thread as a Python thread, and its shared-array
    allocation is a check-then-act on a dict (numba-cuda 0.30.4,
    ``simulator/kernelapi.py``, ``FakeCUDAShared.array``): look the array up,
    and if it is missing create and store it. A thread preempted between the two
    leaves the next thread to create a second array; the two threads then write
    into different "shared" arrays, and a block reduction returns only part of
    its sum. Seen once in CI as one weight gradient of exactly 0.0: block 0 of
    ``_conv_dw_k`` summed only thread 0's own partial, which was 0 there
    (tests/cuda/test_cuda_sim.py releases many threads at once to show the race). A GPU
    has no such race; this only makes the simulator match it. Returns whether it
    patched (False on a GPU, or if the simulator's internals have moved)."""
    if not config.ENABLE_CUDASIM:
        return False
    import threading

    try:
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
    except ImportError:  # pragma: no cover - another numba-cuda layout
        return False
    unlocked = FakeCUDAShared.array
    if getattr(unlocked, "_scratchcnn_locked", False):
        return True
    import sys
    import traceback

    from numba.core import types
    from numba.np import numpy_support

    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        """The simulator's own ``array``, its lookup and store under one lock. Not a
        wrapper: the simulator keys each array by its caller's file and line, two
        frames up, which a wrapper would shift onto itself for every array."""
        if alignment is not None or shape == 0:  # errors and dynamic shared memory
            return unlocked(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array._scratchcnn_locked = True  # type: ignore[attr-defined]
    array._scratchcnn_unlocked = unlocked  # type: ignore[attr-defined]  (tests/cuda)
    FakeCUDAShared.array = array
    return True


_lock_simulator_shared_arrays()


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
@cuda.jit
def _fill_k(a, value):
    """Grid: one thread per element of the flat array ``a``; thread i writes a[i]."""
    i = cuda.grid(1)
    if i < a.size:
        a[i] = value


def _fill(a, value) -> None:
    flat = a.reshape(-1)
    _fill_k[_blocks(flat.size), TPB](flat, value)


# ----------------------------------------------------------------------------
# Conv2D, NCHW: x (N, C, H, W), w (F, C, KH, KW), b (F,), out (N, F, OH, OW)
# K = C*KH*KW, P = OH*OW; row k of cols is (c, ki, kj), column p is (i, j).
# ----------------------------------------------------------------------------
@cuda.jit
def _conv_direct_k(x, w, b, sh, sw, ph, pw, out):
    """Grid: one thread per output element out[n, f, i, j] (j fastest).

    The thread sums its own C*KH*KW products and writes only its own element:
    no two threads write the same address, so no race and no atomics.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = out.shape
    t = cuda.grid(1)
    if t >= N * F * OH * OW:
        return
    j = t % OW
    i = (t // OW) % OH
    f = (t // (OW * OH)) % F
    n = t // (OW * OH * F)
    acc = b[f]
    for c in range(C):
        for ki in range(KH):
            hi = i * sh - ph + ki
            if hi < 0 or hi >= H:
                continue
            for kj in range(KW):
                wj = j * sw - pw + kj
                if wj >= 0 and wj < W:
                    acc += x[n, c, hi, wj] * w[f, c, ki, kj]
    out[n, f, i, j] = acc


def conv2d_forward_direct(x, w, b, sh, sw, ph, pw, out):
    _conv_direct_k[_blocks(out.size), TPB](x, w, b, sh, sw, ph, pw, out)


@cuda.jit
def _im2col_k(x, KH, KW, sh, sw, ph, pw, cols):
    """Grid: one thread per element cols[n, k, p] (p fastest): a pure copy, no sums.

    cols[n, (c, ki, kj), (i, j)] = x[n, c, i*sh - ph + ki, j*sw - pw + kj], or 0 in the padding.
    """
    N, C, H, W = x.shape
    _, K, P = cols.shape
    OW = (W + 2 * pw - KW) // sw + 1
    t = cuda.grid(1)
    if t >= N * K * P:
        return
    p = t % P
    k = (t // P) % K
    n = t // (P * K)
    kj = k % KW
    ki = (k // KW) % KH
    c = k // (KW * KH)
    hi = (p // OW) * sh - ph + ki
    wj = (p % OW) * sw - pw + kj
    if hi >= 0 and hi < H and wj >= 0 and wj < W:
        cols[n, k, p] = x[n, c, hi, wj]
    else:
        cols[n, k, p] = 0


@cuda.jit
def _conv_gemm_k(w2, b, cols, out3):
    """out3[n, f, p] = b[f] + sum_k w2[f, k] * cols[n, k, p], one thread per (n, f, p).

    Grid: one thread per output element, p fastest, so neighbouring threads read
    neighbouring cols[n, k, p] (coalesced) and the same w2[f, k] (a broadcast).
    Each thread owns its output: no race.
    """
    N, F, P = out3.shape
    K = w2.shape[1]
    t = cuda.grid(1)
    if t >= N * F * P:
        return
    p = t % P
    f = (t // P) % F
    n = t // (P * F)
    acc = float32(0)
    for k in range(K):
        acc += w2[f, k] * cols[n, k, p]
    out3[n, f, p] = acc + b[f]


def conv2d_forward(x, w, b, sh, sw, ph, pw, relu, cols, out):
    """im2col into ``cols`` (N, K, P), kept for the weight gradient, then one product per
    output; ``relu`` applies max(., 0) in place afterwards, one thread per element."""
    N, F, OH, OW = out.shape
    KH, KW = w.shape[2], w.shape[3]
    _im2col_k[_blocks(cols.size), TPB](x, KH, KW, sh, sw, ph, pw, cols)
    w2 = w.reshape(F, w.size // F)
    _conv_gemm_k[_blocks(out.size), TPB](w2, b, cols, out.reshape(N, F, OH * OW))
    if relu:
        flat = out.reshape(out.size)
        _relu_k[_blocks(flat.size), TPB](flat, flat)


@cuda.jit
def _conv_dx_k(dout, w, sh, sw, ph, pw, dx):
    """Grid: one thread per input-gradient element dx[n, c, h, wi] (wi fastest).

    The CPU version scatters (col2im adds each patch gradient into the pixels it
    covers), which on a GPU would make threads add into the same pixel at once.
    Here each thread *gathers* instead: it finds every output (f, i, j) whose
    window covered its pixel (h = i*sh - ph + ki, so i = (h + ph - ki) / sh when
    that divides) and sums dout * w. It writes only its own pixel: no race.
    """
    N, C, H, W = dx.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    t = cuda.grid(1)
    if t >= N * C * H * W:
        return
    wi = t % W
    h = (t // W) % H
    c = (t // (W * H)) % C
    n = t // (W * H * C)
    acc = float32(0)
    for ki in range(KH):
        th = h + ph - ki
        if th < 0 or th % sh != 0:
            continue
        i = th // sh
        if i >= OH:
            continue
        for kj in range(KW):
            tw = wi + pw - kj
            if tw < 0 or tw % sw != 0:
                continue
            j = tw // sw
            if j >= OW:
                continue
            for f in range(F):
                acc += dout[n, f, i, j] * w[f, c, ki, kj]
    dx[n, c, h, wi] = acc


def conv2d_backward_input(dout, w, sh, sw, ph, pw, dx):
    """dx from dout and the weights (the kernel gathers: no workspace)."""
    _conv_dx_k[_blocks(dx.size), TPB](dout, w, sh, sw, ph, pw, dx)


@cuda.jit
def _conv_dw_k(dout3, cols, n_per_block, dw_flat):
    """dw[f, k] += sum over this block's samples n and all p of dout[n, f, p] * cols[n, k, p].

    Grid: (F*K, ceil(N / n_per_block)) blocks of RED_TPB threads. Block
    (f*K + k, b) computes the share of weight (f, k) from samples
    [b*n_per_block, (b+1)*n_per_block): its threads stride over those (n, p)
    pairs, each summing privately (no sharing yet); the RED_TPB partial sums
    go to shared memory and are added pairwise in log2(RED_TPB) rounds, with a
    ``syncthreads`` between rounds so no thread reads a slot before it is
    written. Several blocks hold shares of the same weight, so thread 0 adds
    the block total with ``cuda.atomic.add``: ONE atomic per block instead of
    one per product. A plain ``dw[f, k] += total`` there would race: two blocks
    read the old value, both add, one result is lost. The caller zeroes dw first.
    """
    N, F, P = dout3.shape
    K = cols.shape[1]
    fk = cuda.blockIdx.x
    f = fk // K
    k = fk % K
    n0 = cuda.blockIdx.y * n_per_block
    n1 = min(n0 + n_per_block, N)
    t = cuda.threadIdx.x
    acc = float32(0)
    for e in range(t, (n1 - n0) * P, RED_TPB):
        n = n0 + e // P
        p = e % P
        acc += dout3[n, f, p] * cols[n, k, p]
    partial = cuda.shared.array(RED_TPB, float32)
    partial[t] = acc
    cuda.syncthreads()
    s = RED_TPB // 2
    while s > 0:
        if t < s:
            partial[t] += partial[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        cuda.atomic.add(dw_flat, fk, partial[0])


@cuda.jit
def _conv_db_k(dout3, db):
    """db[f] = sum over n, p of dout[n, f, p]: block f owns db[f].

    Grid: F blocks of RED_TPB threads. The threads of block f stride over the
    N*P values of channel f, sum privately, then reduce in shared memory as in
    ``_conv_dw_k``. One block per output means no other block writes db[f]:
    thread 0 stores the total with a plain write, no atomic needed.
    """
    N, F, P = dout3.shape
    f = cuda.blockIdx.x
    t = cuda.threadIdx.x
    acc = float32(0)
    for e in range(t, N * P, RED_TPB):
        acc += dout3[e // P, f, e % P]
    partial = cuda.shared.array(RED_TPB, float32)
    partial[t] = acc
    cuda.syncthreads()
    s = RED_TPB // 2
    while s > 0:
        if t < s:
            partial[t] += partial[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        db[f] = partial[0]


def conv2d_backward_weight(dout, cols, dw, db, *, samples_per_block: int = DW_SAMPLES_PER_BLOCK):
    """dw and db from dout and the forward pass's ``cols``."""
    N, F, OH, OW = dout.shape
    K = cols.shape[1]
    dout3 = dout.reshape(N, F, OH * OW)
    dw_flat = dw.reshape(-1)
    _fill(dw_flat, float32(0))  # the blocks add into dw
    grid = (F * K, (N + samples_per_block - 1) // samples_per_block)
    _conv_dw_k[grid, RED_TPB](dout3, cols, samples_per_block, dw_flat)
    _conv_db_k[F, RED_TPB](dout3, db)


# ----------------------------------------------------------------------------
# MaxPool2D, NCHW, no padding; argmax holds h*W + w inside the (n, c) plane
# ----------------------------------------------------------------------------
@cuda.jit
def _maxpool_k(x, KH, KW, sh, sw, out, argmax):
    """Grid: one thread per output element (n, c, i, j); it scans its own window
    and writes only out[n, c, i, j] and argmax[n, c, i, j]. Ties: the first
    maximum in row-major window order wins (strict >), as on the CPU."""
    N, C, H, W = x.shape
    _, _, OH, OW = out.shape
    t = cuda.grid(1)
    if t >= N * C * OH * OW:
        return
    j = t % OW
    i = (t // OW) % OH
    c = (t // (OW * OH)) % C
    n = t // (OW * OH * C)
    h0 = i * sh
    w0 = j * sw
    best = x[n, c, h0, w0]
    best_at = h0 * W + w0
    for ki in range(KH):
        for kj in range(KW):
            v = x[n, c, h0 + ki, w0 + kj]
            if v > best or (v != v and best == best):  # the first NaN wins
                best = v
                best_at = (h0 + ki) * W + (w0 + kj)
    out[n, c, i, j] = best
    argmax[n, c, i, j] = best_at


def maxpool2d_forward(x, KH, KW, sh, sw, out, argmax):
    _maxpool_k[_blocks(out.size), TPB](x, KH, KW, sh, sw, out, argmax)


@cuda.jit
def _maxpool_dx_k(dout, argmax, out, relu, HW, dx_flat):
    """Grid: one thread per output gradient dout[n, c, i, j]; it adds that value
    to the input pixel that won its window.

    With overlapping windows (stride < window) two outputs can have the same
    winner, so two threads may add into the same pixel: ``cuda.atomic.add``
    makes each read-add-write indivisible. (A gather, one thread per input
    pixel as in ``_conv_dx_k``, would need the window size, which this
    kernel's CPU signature does not carry.) The caller zeroes dx first. With
    ``relu`` a window whose maximum ``out`` is <= 0 adds nothing (the fused
    ReLU before the pool has derivative 0 there).
    """
    N, C, OH, OW = dout.shape
    t = cuda.grid(1)
    if t >= N * C * OH * OW:
        return
    j = t % OW
    i = (t // OW) % OH
    c = (t // (OW * OH)) % C
    n = t // (OW * OH * C)
    if relu and out[n, c, i, j] <= 0:
        return
    cuda.atomic.add(dx_flat, (n * C + c) * HW + argmax[n, c, i, j], dout[n, c, i, j])


def maxpool2d_backward(dout, argmax, out, relu, dx):
    dx_flat = dx.reshape(-1)
    _fill(dx_flat, float32(0))
    _maxpool_dx_k[_blocks(dout.size), TPB](dout, argmax, out, relu, dx.shape[2] * dx.shape[3],
                                           dx_flat)


# ----------------------------------------------------------------------------
# Dense: y = x @ w + b, x (N, I), w (I, O), b (O,)
# ----------------------------------------------------------------------------
@cuda.jit
def _dense_k(x, w, b, out):
    """Grid: one thread per output element out[n, o] (o fastest); owns it: no race."""
    N, I = x.shape
    O = w.shape[1]
    t = cuda.grid(1)
    if t >= N * O:
        return
    o = t % O
    n = t // O
    acc = float32(0)
    for i in range(I):
        acc += x[n, i] * w[i, o]
    out[n, o] = acc + b[o]


def dense_forward(x, w, b, relu, out):
    _dense_k[_blocks(out.size), TPB](x, w, b, out)
    if relu:
        flat = out.reshape(out.size)
        _relu_k[_blocks(flat.size), TPB](flat, flat)


@cuda.jit
def _dense_dx_k(dy, w, dx):
    """Grid: one thread per input gradient dx[n, i] = sum_o w[i, o] * dy[n, o]; owns it."""
    N, I = dx.shape
    O = w.shape[1]
    t = cuda.grid(1)
    if t >= N * I:
        return
    i = t % I
    n = t // I
    acc = float32(0)
    for o in range(O):
        acc += w[i, o] * dy[n, o]
    dx[n, i] = acc


def dense_backward_input(dy, w, dx):
    _dense_dx_k[_blocks(dx.size), TPB](dy, w, dx)


@cuda.jit
def _dense_dw_k(x, dy, dw):
    """Grid: one thread per weight dw[i, o] (o fastest), looping over the batch
    n = 0..N-1 in order: ownership instead of atomics, deterministic. Cheap here
    because N (the batch) is short; the conv weight gradient sums over N*OH*OW
    and uses a block reduction instead (``_conv_dw_k``)."""
    N, I = x.shape
    O = dy.shape[1]
    t = cuda.grid(1)
    if t >= I * O:
        return
    o = t % O
    i = t // O
    acc = float32(0)
    for n in range(N):
        acc += x[n, i] * dy[n, o]
    dw[i, o] = acc


@cuda.jit
def _dense_db_k(dy, db):
    """Grid: one thread per bias db[o], summing the batch in order; owns it."""
    N, O = dy.shape
    o = cuda.grid(1)
    if o >= O:
        return
    acc = float32(0)
    for n in range(N):
        acc += dy[n, o]
    db[o] = acc


def dense_backward_weight(x, dy, dw, db):
    _dense_dw_k[_blocks(dw.size), TPB](x, dy, dw)
    _dense_db_k[_blocks(db.size), TPB](dy, db)


# ----------------------------------------------------------------------------
# ReLU on flat (1-D) views
# ----------------------------------------------------------------------------
@cuda.jit
def _relu_k(x, out):
    """Grid: one thread per element; thread i reads x[i], writes out[i]."""
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        out[i] = float32(0) if v <= 0 else v  # relu(NaN) = NaN


@cuda.jit
def _relu_dx_k(x, dout, dx):
    """Grid: one thread per element; dx[i] = 0 if x[i] <= 0 else dout[i] (NaN passes)."""
    i = cuda.grid(1)
    if i < x.size:
        dx[i] = float32(0) if x[i] <= 0 else dout[i]


def relu_forward(x, out):
    _relu_k[_blocks(x.size), TPB](x, out)


def relu_backward(x, dout, dx):
    _relu_dx_k[_blocks(x.size), TPB](x, dout, dx)


# ----------------------------------------------------------------------------
# Softmax cross-entropy on logits (N, K), integer labels (N,)
# ----------------------------------------------------------------------------
@cuda.jit
def _softmax_ce_k(logits, labels, inv_n, losses, dlogits):
    """Grid: one thread per sample n; it owns losses[n] and row dlogits[n].

    K (the classes) is small, so one thread per row is enough; the batch mean
    is taken on the host from the N per-sample losses.
    """
    N, K = logits.shape
    n = cuda.grid(1)
    if n >= N:
        return
    m = logits[n, 0]
    for k in range(1, K):
        if logits[n, k] > m:
            m = logits[n, k]
    s = float32(0)
    for k in range(K):
        e = math.exp(logits[n, k] - m)
        dlogits[n, k] = e
        s += e
    y = labels[n]
    losses[n] = math.log(s) - (logits[n, y] - m)
    scale = inv_n / s
    for k in range(K):
        dlogits[n, k] = dlogits[n, k] * scale
    dlogits[n, y] -= inv_n


def softmax_cross_entropy(logits, labels, inv_n, losses, dlogits):
    N = logits.shape[0]
    _softmax_ce_k[_blocks(N), TPB](logits, labels, float32(inv_n), losses, dlogits)


# ----------------------------------------------------------------------------
# Optimizer updates on flat parameter arrays (scalars already float32)
# ----------------------------------------------------------------------------
_TINY = float32(1.1754943508222875e-38)  # the smallest normal float32


@cuda.jit
def _adam_k(p, g, m, v, alpha, beta1, beta2, eps):
    """Grid: one thread per parameter i; it reads and writes only p[i], m[i], v[i]."""
    i = cuda.grid(1)
    if i < p.size:
        gi = g[i]
        mi = m[i] + (gi - m[i]) * (float32(1) - beta1)
        vi = v[i] + (gi * gi - v[i]) * (float32(1) - beta2)
        # subnormals flushed to 0, as in the CPU kernels (kernels/optim.py)
        mi = mi if abs(mi) >= _TINY else float32(0)
        vi = vi if abs(vi) >= _TINY else float32(0)
        m[i] = mi
        v[i] = vi
        p[i] -= alpha * mi / (math.sqrt(vi) + eps)


@cuda.jit
def _sgd_k(p, g, vel, lr, momentum, weight_decay):
    """Grid: one thread per parameter i; it reads and writes only p[i], vel[i]."""
    i = cuda.grid(1)
    if i < p.size:
        gi = g[i] + weight_decay * p[i]
        vi = momentum * vel[i] - lr * gi
        vel[i] = vi if abs(vi) >= _TINY else float32(0)
        p[i] += vel[i]


def adam_update(p, g, m, v, alpha, beta1, beta2, eps):
    _adam_k[_blocks(p.size), TPB](p, g, m, v, alpha, beta1, beta2, eps)


def sgd_update(p, g, vel, lr, momentum, weight_decay):
    _sgd_k[_blocks(p.size), TPB](p, g, vel, lr, momentum, weight_decay)


def conv2d_backward(dout, w, cols, sh, sw, ph, pw, need_dx, dw, db, dx):
    """Both conv gradients (the CPU backends fuse them; here the two kernels run in turn)."""
    conv2d_backward_weight(dout, cols, dw, db)
    if need_dx:
        conv2d_backward_input(dout, w, sh, sw, ph, pw, dx)


class CudaConv2DPlan:
    """The CUDA convolution for one geometry: owns ``cols`` on the device (the same
    methods as the CPU backends' plan, without the conv + ReLU + pool fusion)."""

    def __init__(self, x_shape, w_shape, stride, padding, dtype, group_batch=None) -> None:
        n, c, h, w = (int(v) for v in x_shape)
        f, _, kh, kw = (int(v) for v in w_shape)
        (self.sh, self.sw), (self.ph, self.pw) = (int(v) for v in stride), (int(v) for v in padding)
        oh = (h + 2 * self.ph - kh) // self.sh + 1
        ow = (w + 2 * self.pw - kw) // self.sw + 1
        self.out_shape = (n, f, oh, ow)
        self._cols = _empty((n, c * kh * kw, oh * ow), dtype)

    def forward(self, x, w, b, out, *, relu: bool = False) -> None:
        conv2d_forward(x, w, b, self.sh, self.sw, self.ph, self.pw, relu, self._cols, out)

    def backward(self, dout, w, dw, db, dx=None) -> None:
        conv2d_backward_weight(dout, self._cols, dw, db)
        if dx is not None:
            conv2d_backward_input(dout, w, self.sh, self.sw, self.ph, self.pw, dx)

    def gradient_pieces(self) -> dict:
        raise ValueError("backend 'cuda': the weight gradient is summed on the device (atomic "
                         "adds), its per-group pieces are not kept; use a CPU backend")


# ----------------------------------------------------------------------------
# the backend namespace
# ----------------------------------------------------------------------------
#: The kernels this module implements, by their CPU names.
KERNELS = {
    f.__name__: f
    for f in (
        conv2d_forward_direct, conv2d_forward, conv2d_backward_input, conv2d_backward_weight,
        conv2d_backward,
        maxpool2d_forward, maxpool2d_backward,
        dense_forward, dense_backward_input, dense_backward_weight,
        relu_forward, relu_backward,
        softmax_cross_entropy,
        adam_update, sgd_update,
    )
}


def is_device_array(a) -> bool:
    """True for a numba.cuda device array (also the simulator's)."""
    return hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray)


def _to_device(a):
    return a if is_device_array(a) else cuda.to_device(np.ascontiguousarray(a))


def _to_host(a) -> np.ndarray:
    return a.copy_to_host() if is_device_array(a) else np.asarray(a)


def _empty(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def _zeros(shape, dtype):
    # Set-up time only (parameters, gradients, optimizer state): a host copy is fine.
    return cuda.to_device(np.zeros(shape, dtype=np.dtype(dtype)))


def _copy_into(dst, src) -> None:
    """Copy ``src`` (host or device) into the device array ``dst`` of the same shape."""
    if is_device_array(src):
        dst.copy_to_device(src)
    else:
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype).reshape(dst.shape))


def _not_on_cuda(name: str):
    def missing(*args, **kwargs):
        raise NotImplementedError(f"kernel {name!r} has no CUDA version yet")

    missing.__name__ = name
    return missing


def _probe(a):
    a[0] = 1


def _check_compiler() -> None:
    """A GPU is there; can numba-cuda compile for it? (NVVM and NVRTC come with the CUDA
    toolkit or the ``numba-cuda[cu12]``/``[cu13]`` wheels.) One-line ValueError if not."""
    try:
        cuda.compile_ptx(_probe, "void(float32[::1])", cc=(7, 5))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        if isinstance(e, (AttributeError, ImportError)):  # Python-level: a version mismatch
            from importlib.metadata import version  # (numba-cuda 0.30.4 + numpy 2.5:
            #                                          "numpy has no attribute 'row_stack'")
            raise ValueError(
                f"backend 'cuda': numba-cuda {version('numba-cuda')} does not work with "
                f"numpy {np.__version__} / numba {version('numba')} here "
                f"({type(e).__name__}: {first}); install versions that go together (e.g. "
                f"pip install 'numpy<2.5' for numba-cuda 0.30), or use --backend parallel"
            ) from None
        raise ValueError(f"backend 'cuda': a GPU is present but numba-cuda cannot compile "
                         f"kernels ({type(e).__name__}: {first}); pip install "
                         f"'numba-cuda[cu12]' or 'numba-cuda[cu13]' to match the driver, "
                         f"or use --backend parallel") from None


def make_cuda_backend() -> SimpleNamespace:
    """The ``"cuda"`` backend: every kernel of ``KERNEL_NAMES`` (except the
    ``CPU_ONLY`` fusions, which the layers do without) plus the array helpers.

    A CPU kernel without a CUDA version (added to ``KERNEL_NAMES`` later) gets a
    stub that raises ``NotImplementedError``; ``missing`` lists them.
    """
    from . import CPU_ONLY
    from . import KERNEL_NAMES as ALL_NAMES

    KERNEL_NAMES = tuple(n for n in ALL_NAMES if n not in CPU_ONLY)

    if not config.ENABLE_CUDASIM:
        _check_compiler()

    # Small grids are normal here (biases, tiny test shapes): silence Numba's
    # "grid size will likely result in GPU under-utilization" warning.
    config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    kernels = {name: KERNELS.get(name) or _not_on_cuda(name) for name in KERNEL_NAMES}
    kernels.update(KERNELS)
    return SimpleNamespace(
        name="cuda", parallel=True, device="cuda",
        missing=tuple(n for n in KERNEL_NAMES if n not in KERNELS),
        simulator=bool(config.ENABLE_CUDASIM),
        fuses_conv_relu_pool=False, conv2d_plan=CudaConv2DPlan,
        empty=_empty, zeros=_zeros, to_device=_to_device, to_host=_to_host,
        copy_into=_copy_into, synchronize=cuda.synchronize, is_device_array=is_device_array,
        **kernels,
    )
