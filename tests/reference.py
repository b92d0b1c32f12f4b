"""Plain NumPy references for every kernel, written independently of kernels/.

Convolution is written as a sum over kernel offsets (ki, kj) of strided slices
of the zero-padded input -- a different algorithm from both the direct loop
nest and im2col in kernels/conv.py.
"""

from __future__ import annotations

import numpy as np


def out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def conv2d_forward(x, w, b, stride, pad):
    (sh, sw), (ph, pw) = stride, pad
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((N, F, OH, OW), dtype=np.float64)
    for ki in range(KH):
        for kj in range(KW):
            patch = xp[:, :, ki:ki + sh * (OH - 1) + 1:sh, kj:kj + sw * (OW - 1) + 1:sw]
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, ki, kj])
    return out + b[None, :, None, None]


def conv2d_backward(x, w, dout, stride, pad):
    """Returns (dx, dw, db) for out = conv2d_forward(x, w, b)."""
    (sh, sw), (ph, pw) = stride, pad
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    _, _, OH, OW = dout.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp, dtype=np.float64)
    dw = np.zeros(w.shape, dtype=np.float64)
    for ki in range(KH):
        for kj in range(KW):
            hs = slice(ki, ki + sh * (OH - 1) + 1, sh)
            ws = slice(kj, kj + sw * (OW - 1) + 1, sw)
            dw[:, :, ki, kj] = np.einsum("nchw,nfhw->fc", xp[:, :, hs, ws], dout)
            dxp[:, :, hs, ws] += np.einsum("nfhw,fc->nchw", dout, w[:, :, ki, kj])
    dx = dxp[:, :, ph:ph + H, pw:pw + W]
    return dx, dw, dout.sum(axis=(0, 2, 3))


def maxpool2d_forward(x, pool, stride):
    """Returns (out, mask) where mask[n, c, i, j] is the flat in-plane index of the winner."""
    (KH, KW), (sh, sw) = pool, stride
    N, C, H, W = x.shape
    OH, OW = (H - KH) // sh + 1, (W - KW) // sw + 1
    out = np.empty((N, C, OH, OW), x.dtype)
    where = np.empty((N, C, OH, OW), np.int64)
    for i in range(OH):
        for j in range(OW):
            win = x[:, :, i * sh:i * sh + KH, j * sw:j * sw + KW].reshape(N, C, KH * KW)
            k = win.argmax(axis=2)  # first maximum in row-major order
            out[:, :, i, j] = win.max(axis=2)
            where[:, :, i, j] = (i * sh + k // KW) * W + (j * sw + k % KW)
    return out, where


def maxpool2d_backward(dout, where, in_shape):
    N, C, H, W = in_shape
    dx = np.zeros((N, C, H * W), np.float64)
    n_idx, c_idx = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            np.add.at(dx, (n_idx, c_idx, where[:, :, i, j]), dout[:, :, i, j])
    return dx.reshape(in_shape)


def dense_forward(x, w, b):
    return x.astype(np.float64) @ w + b


def dense_backward(x, w, dy):
    return dy @ w.T, x.T.astype(np.float64) @ dy, dy.sum(axis=0)


def relu_forward(x):
    return np.where(x > 0, x, 0)


def relu_backward(x, dout):
    return np.where(x > 0, dout, 0)


def softmax_cross_entropy(logits, labels):
    """Returns (per-sample losses, d mean-loss / d logits), in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    losses = -logp[np.arange(n), labels]
    d = np.exp(logp)
    d[np.arange(n), labels] -= 1
    return losses, d / n


def adam_update(p, g, m, v, lr, b1, b2, eps, t):
    """One Keras-style Adam step at step number t (1-based); returns new (p, m, v)."""
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    return p - alpha * m / (np.sqrt(v) + eps), m, v


def sgd_update(p, g, vel, lr, momentum, wd):
    g = g + wd * p
    vel = momentum * vel - lr * g
    return p + vel, vel
