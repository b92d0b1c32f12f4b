"""MaxPool2D kernels, NCHW, no padding (Keras "valid"): OH = (H - KH) // sh + 1.

NaN: a window containing NaN pools to NaN, its argmax the first NaN in
row-major window order (IEEE max propagates NaN, as PyTorch's max-pool does).

Ties: when several inputs of a window share the maximum, the *first* one in
row-major order inside the window (smallest row, then smallest column) is the
argmax and receives the whole gradient; the others receive none. This is a
subgradient, like PyTorch's choice. Overlapping windows (stride < window) can
pick the same input: its gradient is then the sum, added in window order.
"""

from __future__ import annotations

from numba import prange

from ._build import helper

__all__ = ["maxpool2d_forward", "maxpool2d_backward"]


def maxpool2d_forward(x, KH, KW, sh, sw, out, argmax):
    N, C, H, W = x.shape
    _, _, OH, OW = out.shape
    # PARALLEL: one (sample, channel) plane per iteration. A window never mixes
    # planes, so plane nc writes only out[n, c] and argmax[n, c]: no sharing.
    for nc in prange(N * C):
        xp = x[nc // C, nc % C]  # this plane's views: cheaper indexing than x[n, c, h, w]
        op = out[nc // C, nc % C]
        ap = argmax[nc // C, nc % C]
        if KH == 2 and KW == 2:
            if sh == 2 and sw == 2:  # literal strides: Numba compiles a copy of the
                window2x2(xp, 2, 2, False, op, ap, False)  # helper specialized to them (20% faster)
            else:
                window2x2(xp, sh, sw, False, op, ap, False)
            continue
        for i in range(OH):
            for j in range(OW):
                h0 = i * sh
                w0 = j * sw
                best = xp[h0, w0]
                best_at = h0 * W + w0
                for ki in range(KH):
                    for kj in range(KW):
                        v = xp[h0 + ki, w0 + kj]
                        # strict: the first maximum wins ties; the first NaN wins over numbers
                        if v > best or (v != v and best == best):
                            best = v
                            best_at = (h0 + ki) * W + (w0 + kj)
                op[i, j] = best
                ap[i, j] = best_at


@helper
def window2x2_nan(xp, sh, sw, relu, op, ap):
    """``window2x2`` for a plane that holds a NaN (or an infinity): every comparison with
    a NaN is false, so each window also asks whether it holds one; the first NaN wins."""
    W = xp.shape[1]
    OH, OW = op.shape
    zero = xp.dtype.type(0)
    for i in range(OH):
        r0 = i * sh
        for j in range(OW):
            c0 = j * sw
            best = xp[r0, c0]
            at = r0 * W + c0
            for k in range(1, 4):
                r, c = r0 + k // 2, c0 + k % 2
                v = xp[r, c]
                if v > best or (v != v and best == best):  # first maximum; first NaN
                    best = v
                    at = r * W + c
            if relu and best <= zero:  # a NaN maximum stays NaN
                best = zero
                at = r0 * W + c0
            op[i, j] = best
            ap[i, j] = at


@helper
def window2x2(xp, sh, sw, relu, op, ap, finite):
    """The 2x2 window (the network's only pool), unrolled.

    ``relu``: pool relu(xp) instead (kernels/convpool.py), applied once per
    window: relu(max) = max(relu). A window whose maximum is <= 0 is all zeros
    after the ReLU, so its first pixel wins the tie; otherwise the argmax is the
    same either way. Callers pass a literal True/False (a specialized copy each).

    Each comparison picks the new maximum and its offset with a conditional
    expression (selects, not branches that mispredict on real activations).

    NaN: a comparison with a NaN is false, so the plain comparisons below would
    hide it. Unless the caller knows the plane is finite (``finite``: the fused
    kernel checks its whole tile at once, a vectorizable pass), a second loop asks
    of every pooled pixel whether x - x != 0 (true only for a NaN or an infinity;
    checks inside the window loop made the pool up to 3x slower); such a plane is
    pooled again by ``window2x2_nan``, where a NaN window pools to NaN at its first
    NaN.
    """
    W = xp.shape[1]
    OH, OW = op.shape
    zero = xp.dtype.type(0)
    for i in range(OH):
        r0 = i * sh
        top, bottom = xp[r0], xp[r0 + 1]
        o, a = op[i], ap[i]
        for j in range(OW):
            c0 = j * sw
            best = top[c0]  # same row-major order as the general loop: ties keep the
            at = 0          # first maximum (a later pixel must be strictly greater)
            v = top[c0 + 1]
            up = v > best
            best = v if up else best
            at = 1 if up else at
            v = bottom[c0]
            up = v > best
            best = v if up else best
            at = W if up else at
            v = bottom[c0 + 1]
            up = v > best
            best = v if up else best
            at = W + 1 if up else at
            if relu:
                dead = best <= zero
                best = zero if dead else best
                at = 0 if dead else at
            o[j] = best
            a[j] = r0 * W + c0 + at
    if finite:
        return
    bad = False  # NaN or inf anywhere pooled: x - x is NaN there, else 0
    for i in range(OH):
        top, bottom = xp[i * sh], xp[i * sh + 1]
        for j in range(OW):
            c0 = j * sw
            bad |= ((top[c0] - top[c0] != zero) | (top[c0 + 1] - top[c0 + 1] != zero)
                    | (bottom[c0] - bottom[c0] != zero)
                    | (bottom[c0 + 1] - bottom[c0 + 1] != zero))
    if bad:
        window2x2_nan(xp, sh, sw, relu, op, ap)


def maxpool2d_backward(dout, argmax, out, relu, dx):
    """dx: each output's gradient goes to its window's maximum (see the module docstring).

    With ``relu`` (the layer before the pool has a fused ReLU), gradients of
    windows whose maximum ``out`` is <= 0 are dropped: there the ReLU's
    derivative is 0. This folds the ReLU's backward pass into this one -- the
    same result as the separate pass, without another sweep over dx.
    """
    N, C, OH, OW = dout.shape
    zero = out.dtype.type(0)
    # PARALLEL: one (sample, channel) plane per iteration. Every argmax of
    # plane nc points inside plane nc, so the `+=` below only ever touches this
    # thread's plane. Splitting over output rows i instead would race when
    # windows overlap (stride < window): two rows' windows share input pixels.
    for nc in prange(N * C):
        dp = dx[nc // C, nc % C].reshape(-1)  # flat view: argmax holds flat indices
        gp = dout[nc // C, nc % C]
        ap = argmax[nc // C, nc % C]
        op = out[nc // C, nc % C]
        for k in range(dp.size):  # a loop: `dp[:] = 0` would be a nested parallel loop
            dp[k] = 0
        for i in range(OH):
            for j in range(OW):
                g = gp[i, j]  # then a select, not a branch (20% faster; adding 0 is harmless)
                dp[ap[i, j]] += zero if relu and op[i, j] <= zero else g
