"""Patches in window-major order: only the convolution outputs a 2x2 max-pool reads.

A 2x2, stride-2 max-pool of a convolution's OH x OW output reads its top-left
2*PH x 2*PW pixels (PH = OH // 2, PW = OW // 2): with OH odd, as conv2's 13 x 13,
the last row and column are in no window (25 of conv2's 169 pixels, 15% of its
multiplications). The fused conv + ReLU + pool kernels (``convpool.py``) unroll
only those pixels' patches, and in **window-major** order:

    pixel index t = q * PP + w,   PP = PH * PW,
    w = i * PW + j   the window (row-major),
    q = 2 * dy + dx  the pixel's place in its window (row-major),

so that conv output pixel (2*i + dy, 2*j + dx) is t. A window's four pixels are
then PP apart -- four contiguous runs of PP, one per place in the window -- and
the pool is an element-wise maximum of four runs, which the compiler vectorizes,
instead of a walk over every other pixel of short rows.

The four helpers are ``conv_fast``'s ``im2col``/``col2im`` (patches as columns,
G = 1) and ``im2row``/``row2im`` (patches as rows, G > 1) with this pixel order;
each has an unpadded fast path without bounds checks. A pixel covered by several
patches receives their gradients in a fixed order (window-major), so the serial
and parallel builds add them alike.
"""

from __future__ import annotations

from ._build import helper


@helper
def im2col_windows(xn, KH, KW, sh, sw, ph, pw, PH, PW, cols):
    """cols (K+1, 4*PH*PW): column t = q*PP + w holds the patch of conv output pixel
    (2i+dy, 2j+dx) of one sample xn (C, H, W), 0 in the padding; row K is 1 (bias)."""
    C, H, W = xn.shape
    PP = PH * PW
    K = C * KH * KW
    zero = xn.dtype.type(0)
    for c in range(C):
        for ki in range(KH):
            for kj in range(KW):
                row = cols[(c * KH + ki) * KW + kj]
                for q in range(4):
                    dy, dx = q // 2, q % 2
                    for i in range(PH):
                        hi = (2 * i + dy) * sh - ph + ki
                        base = q * PP + i * PW
                        if ph == 0 and pw == 0:  # no padding: no bounds to check
                            src = xn[c, hi]
                            off = dx * sw + kj
                            for j in range(PW):
                                row[base + j] = src[2 * j * sw + off]
                            continue
                        if hi < 0 or hi >= H:
                            for j in range(PW):
                                row[base + j] = zero
                            continue
                        src = xn[c, hi]
                        for j in range(PW):
                            wj = (2 * j + dx) * sw - pw + kj
                            inside = wj >= 0 and wj < W
                            row[base + j] = src[wj] if inside else zero
    one = xn.dtype.type(1)
    for t in range(4 * PP):
        cols[K, t] = one


@helper
def col2im_windows(dcols, KH, KW, sh, sw, ph, pw, PH, PW, dxn):
    """The adjoint of ``im2col_windows``: dxn (C, H, W) = the patch gradients dcols
    (K, 4*PH*PW) added back, overwriting dxn (row by row of dcols, window-major)."""
    C, H, W = dxn.shape
    PP = PH * PW
    dxn[:] = 0
    for c in range(C):
        for ki in range(KH):
            for kj in range(KW):
                row = dcols[(c * KH + ki) * KW + kj]
                for q in range(4):
                    dy, dx = q // 2, q % 2
                    for i in range(PH):
                        hi = (2 * i + dy) * sh - ph + ki
                        base = q * PP + i * PW
                        if ph == 0 and pw == 0:  # no padding: no bounds to check
                            dst = dxn[c, hi]
                            off = dx * sw + kj
                            for j in range(PW):
                                dst[2 * j * sw + off] += row[base + j]
                            continue
                        if hi < 0 or hi >= H:
                            continue
                        for j in range(PW):
                            wj = (2 * j + dx) * sw - pw + kj
                            if wj >= 0 and wj < W:
                                dxn[c, hi, wj] += row[base + j]


@helper
def im2row_windows(xn, KH, KW, sh, sw, ph, pw, PH, PW, rows, row0):
    """rows[row0 + t] = the patch of conv output pixel t (window-major) of one sample
    xn (C, H, W), 0 in the padding, and 1 in its last column (bias)."""
    C, H, W = xn.shape
    PP = PH * PW
    K = C * KH * KW
    zero = xn.dtype.type(0)
    for q in range(4):
        dy, dx = q // 2, q % 2
        for i in range(PH):
            for j in range(PW):
                dst = rows[row0 + q * PP + i * PW + j]
                oy, ox = (2 * i + dy) * sh - ph, (2 * j + dx) * sw - pw
                if ph == 0 and pw == 0:  # no padding: no bounds to check
                    for c in range(C):
                        for ki in range(KH):
                            for kj in range(KW):
                                dst[(c * KH + ki) * KW + kj] = xn[c, oy + ki, ox + kj]
                else:
                    for c in range(C):
                        for ki in range(KH):
                            hi = oy + ki
                            for kj in range(KW):
                                wj = ox + kj
                                inside = hi >= 0 and hi < H and wj >= 0 and wj < W
                                dst[(c * KH + ki) * KW + kj] = xn[c, hi, wj] if inside else zero
                dst[K] = 1


@helper
def row2im_windows(drows, row0, KH, KW, sh, sw, ph, pw, PH, PW, dxn):
    """The adjoint of ``im2row_windows``: dxn (C, H, W) = the patch gradients drows[row0 +
    t] added back, overwriting dxn (patch by patch, window-major)."""
    C, H, W = dxn.shape
    PP = PH * PW
    dxn[:] = 0
    for q in range(4):
        dy, dx = q // 2, q % 2
        for i in range(PH):
            for j in range(PW):
                src = drows[row0 + q * PP + i * PW + j]
                oy, ox = (2 * i + dy) * sh - ph, (2 * j + dx) * sw - pw
                if ph == 0 and pw == 0:  # no padding: no bounds to check
                    for c in range(C):
                        for ki in range(KH):
                            for kj in range(KW):
                                dxn[c, oy + ki, ox + kj] += src[(c * KH + ki) * KW + kj]
                    continue
                for c in range(C):
                    for ki in range(KH):
                        hi = oy + ki
                        if hi < 0 or hi >= H:
                            continue
                        for kj in range(KW):
                            wj = ox + kj
                            if wj >= 0 and wj < W:
                                dxn[c, hi, wj] += src[(c * KH + ki) * KW + kj]
