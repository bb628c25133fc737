"""Triton kernels for per-sample chains (GPU; CPU under ``TRITON_INTERPRET=1``), two paths with
the same op code and the same bytes (:func:`apply_chains`, :func:`tiles_per_image`):

* small images: the whole batch in one launch, one program per image;
* larger images: a ``(B, tiles)`` grid of ``TILED_BLOCK``-pixel programs, one launch per pass of
  each chain position, so a batch smaller than the device's SM count still fills it (see the
  tiled kernels below).

In the one-program path each program loads its image (random crop with zero padding and flip
fused into the load) into a ping-pong pair of global scratch images, runs its chain op by op over
tiles of ``BLOCK`` pixels with a CTA barrier between ops, and writes uint8 or
``(x / 255 - mean) / std`` float32 with its Cutout box. Op families:

* pointwise (Invert, Posterize, Solarize, SolarizeAdd, Brightness, Contrast, Color): in place;
* histogram (AutoContrast, Equalize): ``tl.histogram`` per channel, the 256-entry table built in
  registers, then a table gather in place;
* 3x3 filters (EdgeEnhance, Detail, Smooth, Sharpness): 9 gathers, float32 in Pillow's order;
* GaussianBlur: Pillow's extended box blur, 3 horizontal + 3 vertical window passes;
* ResizeCrop: Lanczos coefficients computed per pixel in float64, horizontal then vertical pass;
* geometric (Flip, Mirror, Rotate, Shear, Translate): an index gather, with Pillow's 16.16 fixed
  point for rotations and shears (the matrices are built on the device before the launch).

Float arithmetic is exact IEEE (``div_rn`` for float32 division, float64 division and sqrt are
correctly rounded, and every product is a ``_mul`` that is never contracted into an FMA, also
under ``torch.compile``, which launches user kernels with contraction on) so results match the C++
kernel and Pillow; see the module README for the remaining differences. In eager mode on CUDA
the launches are replayed from a CUDA graph per input signature (:mod:`fastorals._graphs`).
Registered as ``fastorals::augment_apply_triton``.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.language.extra import libdevice

from .._graphs import GraphCache
from . import opset as O

BLOCK = 1024  # pixels per tile of the one-program path
# pixels per program of the tiled path: on an H200 (64 x 3 x 224 x 224, graph-replayed) the kernels
# take 0.68 / 1.73 / 2.79 ms for chains of 2 / 5 / 10 ops with 512, 0.89 / 2.27 / 3.43 ms with 1024
TILED_BLOCK = 512


def _f32(num: float, den: float) -> float:
    return float(np.float32(num) / np.float32(den))


# Pillow's 3x3 kernels divided by their scale, as float32 (row y+1 first, as ImagingFilter3x3).
_KERNELS = {
    0: [_f32(k, 2) for k in (-1, -1, -1, -1, 10, -1, -1, -1, -1)],   # EDGE_ENHANCE
    1: [_f32(k, 6) for k in (0, -1, 0, -1, 10, -1, 0, -1, 0)],       # DETAIL
    2: [_f32(k, 13) for k in (1, 1, 1, 1, 5, 1, 1, 1, 1)],           # SMOOTH
}


# Under the interpreter a product is one NumPy multiply; compiled, ``mul.rn`` (libdevice), which
# the compiler never contracts into an FMA with a following add, whatever the launch options say
# (torch.compile launches user kernels with FMA contraction on).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _mul(a, b):
    """``a * b`` rounded once to ``a``'s float type and never fused with an add (Pillow's
    builds do not fuse either). ``a`` is a tensor; ``b`` a tensor or a Python float that float32
    represents exactly (Triton makes a float literal a float32 constant: pass any other value as
    ``tl.full([], value, tl.float64)``)."""
    if _INTERPRETED:
        return a * b
    elif a.dtype == tl.float32:  # exact in float64, then one rounding (libdevice's float32 one flushes subnormals)
        return libdevice.mul_rn(a.to(tl.float64), tl.cast(b, tl.float64)).to(tl.float32)
    else:
        return libdevice.mul_rn(a, tl.cast(b, a.dtype))


@triton.jit
def _f32x9(a0, a1, a2, a3, a4, a5, a6, a7, a8):
    return (tl.cast(a0, tl.float32), tl.cast(a1, tl.float32), tl.cast(a2, tl.float32), tl.cast(a3, tl.float32),
            tl.cast(a4, tl.float32), tl.cast(a5, tl.float32), tl.cast(a6, tl.float32), tl.cast(a7, tl.float32),
            tl.cast(a8, tl.float32))


@triton.jit
def _clip8(t):
    """Truncate a float toward zero and clamp to [0, 255] (= Pillow's clip8 / blend clipping)."""
    v = t.to(tl.int32)
    return tl.minimum(tl.maximum(v, 0), 255)


@triton.jit
def _sinc(x):
    px = _mul(x, tl.full([], 3.141592653589793, tl.float64))  # a float literal would be a float32 constant
    safe = tl.where(x == 0.0, 1.0, px)
    return tl.where(x == 0.0, 1.0, tl.sin(safe) / safe)


@triton.jit
def _lanczos(x):
    inside = (x >= -3.0) & (x < 3.0)
    return tl.where(inside, _mul(_sinc(x), _sinc(x / 3.0)), 0.0)


@triton.jit
def _geometric(src, dst, C, H, W, kind, a0, a1, a2, a3, a4, a5, t0, tstep, BLOCK: tl.constexpr):
    HW = H * W
    Wf = W.to(tl.float64)
    Hf = H.to(tl.float64)
    is_scale = (a1 == 0.0) & (a3 == 0.0)
    ok00 = (tl.abs(a2) < 32768.0) & (tl.abs(a5) < 32768.0)
    okWH = ((tl.abs(_mul(Wf, a0) + _mul(Hf, a1) + a2) < 32768.0)
            & (tl.abs(_mul(Wf, a3) + _mul(Hf, a4) + a5) < 32768.0))
    ok0H = ((tl.abs(_mul(a0, 0.0) + _mul(Hf, a1) + a2) < 32768.0)
            & (tl.abs(_mul(a3, 0.0) + _mul(Hf, a4) + a5) < 32768.0))
    okW0 = ((tl.abs(_mul(Wf, a0) + _mul(a1, 0.0) + a2) < 32768.0)
            & (tl.abs(_mul(Wf, a3) + _mul(a4, 0.0) + a5) < 32768.0))
    fixed = ok00 & okWH & ok0H & okW0
    f0 = tl.floor(_mul(a0, 65536.0) + 0.5).to(tl.int32)
    f1 = tl.floor(_mul(a1, 65536.0) + 0.5).to(tl.int32)
    f3 = tl.floor(_mul(a3, 65536.0) + 0.5).to(tl.int32)
    f4 = tl.floor(_mul(a4, 65536.0) + 0.5).to(tl.int32)
    f2 = tl.floor(_mul(a2 + _mul(a0, 0.5) + _mul(a1, 0.5), 65536.0) + 0.5).to(tl.int32)
    f5 = tl.floor(_mul(a5 + _mul(a3, 0.5) + _mul(a4, 0.5), 65536.0) + 0.5).to(tl.int32)
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs - y * W
        if kind == 0:  # Flip (top-bottom)
            sy = H - 1 - y
            sx = x
        elif kind == 1:  # Mirror
            sy = y
            sx = W - 1 - x
        elif kind == 3:  # rotate 180
            sy = H - 1 - y
            sx = W - 1 - x
        elif kind == 4:  # rotate 90 (square)
            sy = x
            sx = W - 1 - y
        elif kind == 5:  # rotate 270 (square)
            sy = H - 1 - x
            sx = y
        else:  # affine, nearest neighbour (ImagingTransformAffine)
            xd = x.to(tl.float64)
            yd = y.to(tl.float64)
            # ImagingScaleAffine
            xs = a2 + _mul(a0, 0.5) + _mul(xd, a0)
            ys = a5 + _mul(a4, 0.5) + _mul(yd, a4)
            # 16.16 fixed point
            xx = f2 + y * f1 + x * f0
            yy = f5 + y * f4 + x * f3
            # floating point fallback
            xg = a2 + _mul(a1, 0.5) + _mul(a0, 0.5) + _mul(yd, a1) + _mul(xd, a0)
            yg = a5 + _mul(a4, 0.5) + _mul(a3, 0.5) + _mul(yd, a4) + _mul(xd, a3)
            xf = tl.where(is_scale, xs, xg)
            yf = tl.where(is_scale, ys, yg)
            cx = tl.where(xf < 0.0, -1, xf.to(tl.int32))
            cy = tl.where(yf < 0.0, -1, yf.to(tl.int32))
            use_fixed = fixed & (is_scale == 0)
            sx = tl.where(use_fixed, xx >> 16, cx)
            sy = tl.where(use_fixed, yy >> 16, cy)
        valid = mask & (sx >= 0) & (sx < W) & (sy >= 0) & (sy < H)
        idx = sy * W + sx
        for c in range(0, C):
            v = tl.load(src + c * HW + idx, mask=valid, other=0)
            tl.store(dst + c * HW + offs, v, mask=mask)


@triton.jit
def _filter3x3(src, dst, C, H, W, alpha,
               k0, k1, k2, k3, k4, k5, k6, k7, k8, t0, tstep, SHARPEN: tl.constexpr, BLOCK: tl.constexpr):
    HW = H * W
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs - y * W
        inner = mask & (y >= 1) & (y < H - 1) & (x >= 1) & (x < W - 1)
        for c in range(0, C):
            base = src + c * HW
            p = base + offs
            v = tl.load(p, mask=mask, other=0)
            a0 = tl.load(p + W - 1, mask=inner, other=0).to(tl.float32)
            a1 = tl.load(p + W, mask=inner, other=0).to(tl.float32)
            a2 = tl.load(p + W + 1, mask=inner, other=0).to(tl.float32)
            b0 = tl.load(p - 1, mask=inner, other=0).to(tl.float32)
            b1 = v.to(tl.float32)
            b2 = tl.load(p + 1, mask=inner, other=0).to(tl.float32)
            c0 = tl.load(p - W - 1, mask=inner, other=0).to(tl.float32)
            c1 = tl.load(p - W, mask=inner, other=0).to(tl.float32)
            c2 = tl.load(p - W + 1, mask=inner, other=0).to(tl.float32)
            ss = 0.5 + ((_mul(a0, k0) + _mul(a1, k1)) + _mul(a2, k2))
            ss = ss + ((_mul(b0, k3) + _mul(b1, k4)) + _mul(b2, k5))
            ss = ss + ((_mul(c0, k6) + _mul(c1, k7)) + _mul(c2, k8))
            d = _clip8(ss)
            if SHARPEN:
                df = d.to(tl.float32)
                d = _clip8(df + _mul(b1 - df, alpha))
            out = tl.where(inner, d.to(tl.uint8), v)
            tl.store(dst + c * HW + offs, out, mask=mask)


@triton.jit
def _box_pass(src, dst, C, H, W, r, ww, fw, t0, tstep, HORIZ: tl.constexpr, BLOCK: tl.constexpr):
    """One extended box blur pass (ImagingLineBoxBlur8) along rows (HORIZ) or columns."""
    HW = H * W
    if HORIZ:
        n = W
        stride = 1
    else:
        n = H
        stride = W
    rr = tl.minimum(r, n - 1)
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs - y * W
        if HORIZ:
            p = x
        else:
            p = y
        line = offs - p * stride
        for c in range(0, C):
            base = src + c * HW + line
            first = tl.load(base, mask=mask, other=0).to(tl.int64)
            last = tl.load(base + (n - 1) * stride, mask=mask, other=0).to(tl.int64)
            acc = (r - rr).to(tl.int64) * (first + last)
            for j in range(0, 2 * rr + 1):
                q = tl.minimum(tl.maximum(p + j - rr, 0), n - 1)
                acc += tl.load(base + q * stride, mask=mask, other=0).to(tl.int64)
            ql = tl.maximum(p - r - 1, 0)
            qr = tl.minimum(p + r + 1, n - 1)
            left = tl.load(base + ql * stride, mask=mask, other=0).to(tl.int64)
            right = tl.load(base + qr * stride, mask=mask, other=0).to(tl.int64)
            bulk = acc * ww + (left + right) * fw
            out = (bulk + 8388608) >> 24
            tl.store(dst + c * HW + offs, out.to(tl.uint8), mask=mask)


@triton.jit
def _resize_pass(src, dst, C, H, W, in_size, out_size, o0, t0, tstep, HORIZ: tl.constexpr,
                 BLOCK: tl.constexpr):
    """One Lanczos pass (Resample.c) producing the crop's pixels along one axis."""
    HW = H * W
    scale = in_size.to(tl.float64) / out_size.to(tl.float64)
    filterscale = tl.maximum(scale, 1.0)
    support = _mul(filterscale, 3.0)
    inv = 1.0 / filterscale
    ks = tl.ceil(support).to(tl.int32) * 2 + 1
    same = in_size == out_size
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs - y * W
        if HORIZ:
            p = x
            stride = 1
        else:
            p = y
            stride = W
        line = offs - p * stride
        o = o0 + p
        center = 0.0 + _mul(o.to(tl.float64) + 0.5, scale)
        xmin = tl.maximum((center - support + 0.5).to(tl.int32), 0)
        xmax = tl.minimum((center + support + 0.5).to(tl.int32), in_size) - xmin
        ww = tl.zeros([BLOCK], dtype=tl.float64)
        for k in range(0, ks):
            w = _lanczos(_mul((k + xmin).to(tl.float64) - center + 0.5, inv))
            ww += tl.where(k < xmax, w, 0.0)
        wsafe = tl.where(ww != 0.0, ww, 1.0)
        valid = mask & (o >= 0) & (o < out_size)
        for c in range(0, C):
            base = src + c * HW + line
            acc = tl.full([BLOCK], 2097152, dtype=tl.int32)
            for k in range(0, ks):
                w = _lanczos(_mul((k + xmin).to(tl.float64) - center + 0.5, inv))
                use = valid & (k < xmax)
                # taps outside the window are 0 before the fixed-point cast (they could overflow it)
                kn = tl.where(use, tl.where(ww != 0.0, w / wsafe, w), 0.0)
                kf = tl.where(kn < 0.0, (-0.5 + _mul(kn, 4194304.0)).to(tl.int32),
                              (0.5 + _mul(kn, 4194304.0)).to(tl.int32))
                pix = tl.load(base + (xmin + k) * stride, mask=use, other=0).to(tl.int32)
                acc += tl.where(use, pix * kf, 0)
            res = tl.minimum(tl.maximum(acc >> 22, 0), 255)
            res = tl.where(valid, res, 0)
            if same:
                res = tl.load(src + c * HW + offs, mask=mask, other=0).to(tl.int32)
            tl.store(dst + c * HW + offs, res.to(tl.uint8), mask=mask)


@triton.jit
def _hist_of(plane, HW, t0, tstep, BLOCK: tl.constexpr):
    """Histogram (int32 [256]) of the pixels of one plane in tiles t0, t0 + tstep, ..."""
    h = tl.zeros([256], dtype=tl.int32)
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        v = tl.load(plane + offs, mask=mask, other=0).to(tl.int32)
        h += tl.histogram(v, 256, mask=mask)
    return h


@triton.jit
def _table(h, EQUALIZE: tl.constexpr):
    """The AutoContrast (cutoff 0) or Equalize lookup table (int32 [256]) of a histogram."""
    idx = tl.arange(0, 256)
    nz = h > 0
    lo = tl.min(tl.where(nz, idx, 256), axis=0)
    hi = tl.max(tl.where(nz, idx, -1), axis=0)
    if EQUALIZE:
        total = tl.sum(h, axis=0)
        h_last = tl.sum(tl.where(idx == hi, h, 0), axis=0)
        count = tl.sum(nz.to(tl.int32), axis=0)
        step = (total - h_last) // 255
        step_safe = tl.maximum(step, 1)
        n = step // 2 + tl.cumsum(h, axis=0) - h
        table = tl.minimum(n // step_safe, 255)
        table = tl.where((count <= 1) | (step == 0), idx, table)
    else:
        span = tl.maximum(hi - lo, 1)
        scale = 255.0 / span.to(tl.float64)
        offset = _mul((-lo).to(tl.float64), scale)
        table = (_mul(idx.to(tl.float64), scale) + offset).to(tl.int32)
        table = tl.minimum(tl.maximum(table, 0), 255)
        table = tl.where(hi <= lo, idx, table)
    return table


@triton.jit
def _hist_lut(buf, lut, C, HW, EQUALIZE: tl.constexpr, BLOCK: tl.constexpr):
    """AutoContrast / Equalize of a whole image: per-channel histogram, table stored to ``lut``."""
    idx = tl.arange(0, 256)
    for c in range(0, C):
        tl.store(lut + c * 256 + idx, _table(_hist_of(buf + c * HW, HW, 0, 1, BLOCK), EQUALIZE))


@triton.jit
def _pointwise(buf, lut, C, HW, op, v, mean_int, t0, tstep, BLOCK: tl.constexpr):
    """In-place per-pixel ops (op ids of opset); ``lut`` for AutoContrast/Equalize."""
    alpha = v.to(tl.float32)
    bits = tl.minimum(tl.maximum(tl.floor(v), 1.0), 8.0).to(tl.int32)
    pmask = (255 - ((1 << (8 - bits)) - 1)) & 255
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        if op == 14:  # Color (C == 3): blend(L(rgb), rgb, alpha)
            r = tl.load(buf + offs, mask=mask, other=0).to(tl.int32)
            g = tl.load(buf + HW + offs, mask=mask, other=0).to(tl.int32)
            b = tl.load(buf + 2 * HW + offs, mask=mask, other=0).to(tl.int32)
            gray = (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16
            lf = gray.to(tl.float32)
            tl.store(buf + offs, _clip8(lf + _mul((r - gray).to(tl.float32), alpha)).to(tl.uint8), mask=mask)
            tl.store(buf + HW + offs, _clip8(lf + _mul((g - gray).to(tl.float32), alpha)).to(tl.uint8), mask=mask)
            tl.store(buf + 2 * HW + offs, _clip8(lf + _mul((b - gray).to(tl.float32), alpha)).to(tl.uint8),
                     mask=mask)
        else:
            for c in range(0, C):
                p = buf + c * HW + offs
                x = tl.load(p, mask=mask, other=0).to(tl.int32)
                if (op == 5) | (op == 6):  # AutoContrast, Equalize: table gather
                    y = tl.load(lut + c * 256 + x, mask=mask, other=0)
                elif op == 7:  # Invert
                    y = 255 - x
                elif op == 11:  # Posterize
                    y = x & pmask
                elif op == 12:  # Solarize
                    y = tl.where(x.to(tl.float64) < v, x, 255 - x)
                elif op == 13:  # SolarizeAdd, then solarize at 128
                    s = tl.minimum(tl.maximum(x.to(tl.float64) + v, 0.0), 255.0).to(tl.int32)
                    y = tl.where(s < 128, s, 255 - s)
                elif op == 15:  # Contrast: blend(mean of L, x, alpha)
                    y = _clip8(mean_int.to(tl.float32) + _mul((x - mean_int).to(tl.float32), alpha))
                else:  # 16 Brightness: blend(0, x, alpha)
                    y = _clip8(0.0 + _mul(x.to(tl.float32), alpha))
                tl.store(p, y.to(tl.uint8), mask=mask)


@triton.jit
def _gray_sum(buf, C, HW, t0, tstep, BLOCK: tl.constexpr):
    """Sum (int64) of the L image (ITU-R 601-2 luma, Pillow's rounding) over tiles t0, t0 + tstep, ..."""
    total = tl.zeros([BLOCK], dtype=tl.int64)
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        r = tl.load(buf + offs, mask=mask, other=0).to(tl.int32)
        if C == 3:
            g = tl.load(buf + HW + offs, mask=mask, other=0).to(tl.int32)
            b = tl.load(buf + 2 * HW + offs, mask=mask, other=0).to(tl.int32)
            r = (r * 19595 + g * 38470 + b * 7471 + 32768) >> 16
        total += tl.where(mask, r, 0).to(tl.int64)
    return tl.sum(total, axis=0)


@triton.jit
def _mean_int(total, HW):
    """int(mean of the L image + 0.5), as ImageEnhance.Contrast."""
    mean = total.to(tl.float64) / HW.to(tl.float64)
    return (mean + 0.5).to(tl.int32)


@triton.jit
def _blur_params(v):
    """Pillow's GaussianBlur radius -> (active, box radius r, 24-bit weights ww and fw) of its box passes."""
    rad = v.to(tl.float32)
    sigma2 = tl.math.div_rn(_mul(rad, rad), 3.0)
    big_l = tl.sqrt(_mul(sigma2.to(tl.float64), 12.0) + 1.0).to(tl.float32)
    small_l = tl.floor((big_l.to(tl.float64) - 1.0) / 2.0).to(tl.float32)
    a = _mul(_mul(small_l, 2.0) + 1.0, _mul(small_l, small_l + 1.0) - _mul(sigma2, 3.0))
    a = tl.math.div_rn(a, _mul(sigma2 - _mul(small_l + 1.0, small_l + 1.0), 6.0))
    rf = small_l + a
    active = (rad != 0.0) & (rf != 0.0)
    r = rf.to(tl.int32)
    ww = tl.math.div_rn(16777216.0, _mul(rf, 2.0) + 1.0).to(tl.int64)
    fw = (16777216 - (2 * r + 1).to(tl.int64) * ww) // 2
    return active, r, ww, fw


@triton.jit
def _resize_sizes(H, W, v):
    """ResizeCrop's intermediate size (h2, w2) and whether it changes the image."""
    w2 = tl.maximum((W.to(tl.float64) * v).to(tl.int32), 1)
    h2 = tl.maximum((H.to(tl.float64) * v).to(tl.int32), 1)
    return h2, w2, (w2 != W) | (h2 != H)


@triton.jit
def _load_tiles(img, buf0, C, H, W, dy, dx, fl, t0, tstep, BLOCK: tl.constexpr):
    """Crop with zero padding, then mirror: ``img`` -> ``buf0`` over tiles t0, t0 + tstep, ..."""
    HW = H * W
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs - y * W
        xs = tl.where(fl != 0, W - 1 - x, x)
        sy = y + dy
        sx = xs + dx
        valid = mask & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
        for c in range(0, C):
            v = tl.load(img + c * HW + sy * W + sx, mask=valid, other=0)
            tl.store(buf0 + c * HW + offs, v, mask=mask)


@triton.jit
def _store_tiles(src, out, mean_ptr, std_ptr, C, H, W, y1, y2, x1, x2, t0, tstep,
                 FLOAT_OUT: tl.constexpr, BLOCK: tl.constexpr):
    """uint8, or ToTensor + Normalize, with the Cutout box: ``src`` -> ``out`` over tiles t0, t0 + tstep, ..."""
    HW = H * W
    for t in range(t0, tl.cdiv(HW, BLOCK), tstep):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HW
        y = offs // W
        x = offs - y * W
        hole = (y >= y1) & (y < y2) & (x >= x1) & (x < x2)
        for c in range(0, C):
            v8 = tl.load(src + c * HW + offs, mask=mask, other=0)
            if FLOAT_OUT:
                mu = tl.load(mean_ptr + c)
                sd = tl.load(std_ptr + c)
                xf = tl.math.div_rn(v8.to(tl.float32), 255.0)
                xf = tl.where(hole, 0.0, xf)
                tl.store(out + c * HW + offs, tl.math.div_rn(xf - mu, sd), mask=mask)
            else:
                tl.store(out + c * HW + offs, tl.where(hole, 0, v8), mask=mask)


@triton.jit
def _single_pass_op(src, dst, lut, C, H, W, op, v, g, mean_int,
                    e0, e1, e2, e3, e4, e5, e6, e7, e8, d0, d1, d2, d3, d4, d5, d6, d7, d8,
                    s0, s1, s2, s3, s4, s5, s6, s7, s8, t0, tstep, BLOCK: tl.constexpr):
    """Every op but GaussianBlur, ResizeCrop (multi-pass) and the table/mean computation of
    AutoContrast, Equalize, Contrast (``lut`` and ``mean_int`` are given): geometric and 3x3 filter
    ops write ``dst``, pointwise ops update ``src`` in place. Returns 1 if the image moved to ``dst``."""
    HW = H * W
    moved = 0
    if (op == 0) | (op == 1) | (op == 10) | (op >= 18):  # Flip, Mirror, Rotate, Shear, Translate
        kind = tl.load(g).to(tl.int32)
        if kind >= 0:
            _geometric(src, dst, C, H, W, kind, tl.load(g + 1), tl.load(g + 2), tl.load(g + 3),
                       tl.load(g + 4), tl.load(g + 5), tl.load(g + 6), t0, tstep, BLOCK)
            moved = 1
    elif (op == 2) | (op == 3) | (op == 4) | (op == 17):  # EdgeEnhance, Detail, Smooth, Sharpness
        if (H >= 3) & (W >= 3):
            if op == 2:
                _filter3x3(src, dst, C, H, W, 0.0, e0, e1, e2, e3, e4, e5, e6, e7, e8, t0, tstep, False, BLOCK)
            elif op == 3:
                _filter3x3(src, dst, C, H, W, 0.0, d0, d1, d2, d3, d4, d5, d6, d7, d8, t0, tstep, False, BLOCK)
            elif op == 4:
                _filter3x3(src, dst, C, H, W, 0.0, s0, s1, s2, s3, s4, s5, s6, s7, s8, t0, tstep, False, BLOCK)
            else:
                _filter3x3(src, dst, C, H, W, v.to(tl.float32), s0, s1, s2, s3, s4, s5, s6, s7, s8, t0, tstep,
                           True, BLOCK)
            moved = 1
    elif op == 14:  # Color
        if C == 3:
            _pointwise(src, lut, C, HW, op, v, mean_int, t0, tstep, BLOCK)
    elif (op >= 5) & (op != 8) & (op != 9):  # AutoContrast, Equalize, Invert, Posterize, Solarize(Add),
        _pointwise(src, lut, C, HW, op, v, mean_int, t0, tstep, BLOCK)  # Contrast, Brightness
    return moved


@triton.jit
def _augment_kernel(
    img_ptr, ops_ptr, val_ptr, geo_ptr, crop_ptr, flip_ptr, cut_ptr, mean_ptr, std_ptr,
    buf_ptr, lut_ptr, out_ptr, K, C, H, W,
    e0, e1, e2, e3, e4, e5, e6, e7, e8,
    d0, d1, d2, d3, d4, d5, d6, d7, d8,
    s0, s1, s2, s3, s4, s5, s6, s7, s8,
    FLOAT_OUT: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per image: load, the whole chain, store (CTA barriers between ops)."""
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    e0, e1, e2, e3, e4, e5, e6, e7, e8 = _f32x9(e0, e1, e2, e3, e4, e5, e6, e7, e8)
    d0, d1, d2, d3, d4, d5, d6, d7, d8 = _f32x9(d0, d1, d2, d3, d4, d5, d6, d7, d8)
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = _f32x9(s0, s1, s2, s3, s4, s5, s6, s7, s8)
    b = tl.program_id(0).to(tl.int64)
    HW = H * W
    CHW = C * HW
    buf0 = buf_ptr + b * 2 * CHW
    lut = lut_ptr + b * C * 256
    _load_tiles(img_ptr + b * CHW, buf0, C, H, W, tl.load(crop_ptr + b * 2), tl.load(crop_ptr + b * 2 + 1),
                tl.load(flip_ptr + b), 0, 1, BLOCK)
    tl.debug_barrier()
    cur = 0
    for k in range(0, K):
        op = tl.load(ops_ptr + b * K + k)
        v = tl.load(val_ptr + b * K + k)
        src = buf0 + cur * CHW
        dst = buf0 + (1 - cur) * CHW
        if op == 8:  # GaussianBlur: 3 horizontal + 3 vertical extended box passes
            active, r, ww, fw = _blur_params(v)
            if active:
                _box_pass(src, dst, C, H, W, r, ww, fw, 0, 1, True, BLOCK)
                tl.debug_barrier()
                _box_pass(dst, src, C, H, W, r, ww, fw, 0, 1, True, BLOCK)
                tl.debug_barrier()
                _box_pass(src, dst, C, H, W, r, ww, fw, 0, 1, True, BLOCK)
                tl.debug_barrier()
                _box_pass(dst, src, C, H, W, r, ww, fw, 0, 1, False, BLOCK)
                tl.debug_barrier()
                _box_pass(src, dst, C, H, W, r, ww, fw, 0, 1, False, BLOCK)
                tl.debug_barrier()
                _box_pass(dst, src, C, H, W, r, ww, fw, 0, 1, False, BLOCK)
        elif op == 9:  # ResizeCrop: horizontal pass into dst, vertical pass back into src
            h2, w2, changes = _resize_sizes(H, W, v)
            if changes:
                _resize_pass(src, dst, C, H, W, W, w2, w2 // 2 - W // 2, 0, 1, True, BLOCK)
                tl.debug_barrier()
                _resize_pass(dst, src, C, H, W, H, h2, h2 // 2 - H // 2, 0, 1, False, BLOCK)
        else:
            mean_int = op * 0
            if op == 5:  # AutoContrast
                _hist_lut(src, lut, C, HW, False, BLOCK)
                tl.debug_barrier()
            elif op == 6:  # Equalize
                _hist_lut(src, lut, C, HW, True, BLOCK)
                tl.debug_barrier()
            elif op == 15:  # Contrast
                mean_int = _mean_int(_gray_sum(src, C, HW, 0, 1, BLOCK), HW)
            moved = _single_pass_op(src, dst, lut, C, H, W, op, v, geo_ptr + (b * K + k) * 8, mean_int,
                                    e0, e1, e2, e3, e4, e5, e6, e7, e8, d0, d1, d2, d3, d4, d5, d6, d7, d8,
                                    s0, s1, s2, s3, s4, s5, s6, s7, s8, 0, 1, BLOCK)
            cur = cur ^ moved
        tl.debug_barrier()
    _store_tiles(buf0 + cur * CHW, out_ptr + b * CHW, mean_ptr, std_ptr, C, H, W, tl.load(cut_ptr + b * 4),
                 tl.load(cut_ptr + b * 4 + 1), tl.load(cut_ptr + b * 4 + 2), tl.load(cut_ptr + b * 4 + 3), 0, 1,
                 FLOAT_OUT, BLOCK)


# ---- the tiled path: several programs per image, one launch per pass of each chain position.
# Within a launch no program reads what another writes: geometric ops, filters and blur/resize
# passes read one scratch image and write the other; pointwise ops update each pixel in the
# program that reads it; histograms and luma sums are accumulated atomically by a separate launch.


@triton.jit
def _load_kernel(img_ptr, crop_ptr, flip_ptr, buf_ptr, C, H, W, TILES, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    CHW = C * H * W
    _load_tiles(img_ptr + b * CHW, buf_ptr + b * 2 * CHW, C, H, W, tl.load(crop_ptr + b * 2),
                tl.load(crop_ptr + b * 2 + 1), tl.load(flip_ptr + b), tl.program_id(1), TILES, BLOCK)


@triton.jit
def _stats_kernel(ops_ptr, cur_ptr, buf_ptr, hist_ptr, gsum_ptr, K, k, C, H, W, TILES, BLOCK: tl.constexpr):
    """Chain position k: channel histograms (AutoContrast, Equalize) or the luma sum (Contrast)."""
    b = tl.program_id(0).to(tl.int64)
    tp = tl.program_id(1)
    op = tl.load(ops_ptr + b * K + k)
    HW = H * W
    src = buf_ptr + (b * 2 + tl.load(cur_ptr + b * K + k)) * C * HW
    if (op == 5) | (op == 6):
        idx = tl.arange(0, 256)
        for c in range(0, C):
            tl.atomic_add(hist_ptr + ((b * K + k) * C + c) * 256 + idx, _hist_of(src + c * HW, HW, tp, TILES, BLOCK))
    elif op == 15:
        tl.atomic_add(gsum_ptr + b * K + k, _gray_sum(src, C, HW, tp, TILES, BLOCK))


@triton.jit
def _stage_kernel(
    ops_ptr, val_ptr, geo_ptr, cur_ptr, buf_ptr, hist_ptr, gsum_ptr, lut_ptr, K, k, p, C, H, W, TILES,
    e0, e1, e2, e3, e4, e5, e6, e7, e8,
    d0, d1, d2, d3, d4, d5, d6, d7, d8,
    s0, s1, s2, s3, s4, s5, s6, s7, s8,
    BLOCK: tl.constexpr,
):
    """Pass p (0..5) of chain position k. Pass 0 is every op (GaussianBlur's and ResizeCrop's
    first); passes 1..5 are GaussianBlur's other box passes and ResizeCrop's vertical pass."""
    e0, e1, e2, e3, e4, e5, e6, e7, e8 = _f32x9(e0, e1, e2, e3, e4, e5, e6, e7, e8)
    d0, d1, d2, d3, d4, d5, d6, d7, d8 = _f32x9(d0, d1, d2, d3, d4, d5, d6, d7, d8)
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = _f32x9(s0, s1, s2, s3, s4, s5, s6, s7, s8)
    b = tl.program_id(0).to(tl.int64)
    tp = tl.program_id(1)
    op = tl.load(ops_ptr + b * K + k)
    v = tl.load(val_ptr + b * K + k)
    HW = H * W
    CHW = C * HW
    cur = tl.load(cur_ptr + b * K + k)
    src = buf_ptr + (b * 2 + cur) * CHW
    dst = buf_ptr + (b * 2 + 1 - cur) * CHW
    if op == 8:
        active, r, ww, fw = _blur_params(v)
        if active:
            # passes alternate src -> dst -> src ...; 0-2 horizontal, 3-5 vertical; ends in src
            a = src
            z = dst
            if (p % 2) == 1:
                a = dst
                z = src
            if p < 3:
                _box_pass(a, z, C, H, W, r, ww, fw, tp, TILES, True, BLOCK)
            else:
                _box_pass(a, z, C, H, W, r, ww, fw, tp, TILES, False, BLOCK)
    elif op == 9:
        h2, w2, changes = _resize_sizes(H, W, v)
        if changes:
            if p == 0:
                _resize_pass(src, dst, C, H, W, W, w2, w2 // 2 - W // 2, tp, TILES, True, BLOCK)
            elif p == 1:
                _resize_pass(dst, src, C, H, W, H, h2, h2 // 2 - H // 2, tp, TILES, False, BLOCK)
    elif p == 0:
        lut = lut_ptr + (b * TILES + tp) * C * 256
        mean_int = op * 0
        if (op == 5) | (op == 6):  # this program's copy of the table, from the image's histogram
            idx = tl.arange(0, 256)
            for c in range(0, C):
                h = tl.load(hist_ptr + ((b * K + k) * C + c) * 256 + idx)
                if op == 5:
                    tl.store(lut + c * 256 + idx, _table(h, False))
                else:
                    tl.store(lut + c * 256 + idx, _table(h, True))
            tl.debug_barrier()
        elif op == 15:
            mean_int = _mean_int(tl.load(gsum_ptr + b * K + k), HW)
        _single_pass_op(src, dst, lut, C, H, W, op, v, geo_ptr + (b * K + k) * 8, mean_int,
                        e0, e1, e2, e3, e4, e5, e6, e7, e8, d0, d1, d2, d3, d4, d5, d6, d7, d8,
                        s0, s1, s2, s3, s4, s5, s6, s7, s8, tp, TILES, BLOCK)


@triton.jit
def _store_kernel(buf_ptr, cur_ptr, cut_ptr, mean_ptr, std_ptr, out_ptr, C, H, W, TILES,
                  FLOAT_OUT: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    CHW = C * H * W
    src = buf_ptr + (b * 2 + tl.load(cur_ptr + b)) * CHW
    _store_tiles(src, out_ptr + b * CHW, mean_ptr, std_ptr, C, H, W, tl.load(cut_ptr + b * 4),
                 tl.load(cut_ptr + b * 4 + 1), tl.load(cut_ptr + b * 4 + 2), tl.load(cut_ptr + b * 4 + 3),
                 tl.program_id(1), TILES, FLOAT_OUT, BLOCK)


def _py_round15(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x, decimals=15)


def geometric_params(ops: torch.Tensor, values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float64 [B, K, 8]: per geometric op its kind and affine matrix (Image.rotate/transform).

    kind: -1 identity, 0 Flip, 1 Mirror, 2 affine (a0..a5 in [1:7]), 3/4/5 rotate 180/90/270.
    """
    b, k = ops.shape
    dev = values.device
    v = values.to(torch.float64)
    geo = torch.zeros(b, k, 8, dtype=torch.float64, device=dev)
    kind = torch.full((b, k), -1.0, dtype=torch.float64, device=dev)
    kind = torch.where(ops == O.FLIP, 0.0, kind)
    kind = torch.where(ops == O.MIRROR, 1.0, kind)
    one = torch.ones_like(v)
    zero = torch.zeros_like(v)
    # Rotate: Python's angle % 360.0, fast paths, then the matrix of Image.rotate
    m = torch.fmod(v, 360.0)
    m = torch.where(m < 0, m + 360.0, m)
    m = torch.where(m == 0, zero, m)
    rad = -(m * (math.pi / 180.0))
    cos, sin = _py_round15(torch.cos(rad)), _py_round15(torch.sin(rad))
    msin = _py_round15(-torch.sin(rad))
    cx, cy = width / 2.0, height / 2.0
    r2 = (cos * (-cx) + sin * (-cy) + 0.0) + cx
    r5 = (msin * (-cx) + cos * (-cy) + 0.0) + cy
    rot_kind = torch.full_like(v, 2.0)
    rot_kind = torch.where(m == 0, -1.0, rot_kind)
    rot_kind = torch.where(m == 180.0, 3.0, rot_kind)
    if height == width:
        rot_kind = torch.where(m == 90.0, 4.0, rot_kind)
        rot_kind = torch.where(m == 270.0, 5.0, rot_kind)
    is_rot = ops == O.ROTATE
    kind = torch.where(is_rot, rot_kind, kind)
    is_aff = (ops == O.SHEAR_X) | (ops == O.SHEAR_Y) | (ops == O.TRANSLATE_X) | (ops == O.TRANSLATE_Y)
    kind = torch.where(is_aff, 2.0, kind)
    a0 = torch.where(is_rot, cos, one)
    a1 = torch.where(is_rot, sin, torch.where(ops == O.SHEAR_X, v, zero))
    a2 = torch.where(is_rot, r2, torch.where(ops == O.TRANSLATE_X, v, zero))
    a3 = torch.where(is_rot, msin, torch.where(ops == O.SHEAR_Y, v, zero))
    a4 = torch.where(is_rot, cos, one)
    a5 = torch.where(is_rot, r5, torch.where(ops == O.TRANSLATE_Y, v, zero))
    geo[..., 0] = kind
    for i, a in enumerate((a0, a1, a2, a3, a4, a5)):
        geo[..., i + 1] = a
    return geo


@torch.library.custom_op("fastorals::augment_geometric_params", mutates_args=())
def _geometric_params_op(ops: torch.Tensor, values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """:func:`geometric_params` as an op ``torch.compile`` calls rather than traces: inductor would
    lower its float64 arithmetic differently (FMA contraction, ``round(x, 15)`` as a multiply by
    1e-15), so compiled rotations could land on other fixed-point pixels than eager ones."""
    return geometric_params(ops, values, height, width).contiguous()


@_geometric_params_op.register_fake
def _(ops: torch.Tensor, values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return values.new_empty((*ops.shape, 8), dtype=torch.float64)


def _launch(kernel, grid, *args, **kwargs):
    launcher = wrap_triton(kernel)[grid]
    try:
        return launcher(*args, enable_fp_fusion=False, **kwargs)
    except TypeError:  # a launcher that does not take compile options
        return launcher(*args, **kwargs)


def chain_buffers(ops: torch.Tensor, geo: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which scratch image (0/1) holds each sample's image before each chain position (int32 [B, K]),
    and after the chain (int32 [B]): geometric ops and 3x3 filters move it to the other one,
    every other op ends where it started (GaussianBlur and ResizeCrop make an even number of passes)."""
    geometric = ((ops == O.FLIP) | (ops == O.MIRROR) | (ops == O.ROTATE) | (ops >= O.SHEAR_X)) & (geo[..., 0] >= 0)
    filt = (ops == O.EDGE_ENHANCE) | (ops == O.DETAIL) | (ops == O.SMOOTH) | (ops == O.SHARPNESS)
    moves = (geometric | (filt & (height >= 3) & (width >= 3))).to(torch.int32)
    before = (moves.cumsum(1, dtype=torch.int32) - moves) % 2
    return before.contiguous(), moves.sum(1, dtype=torch.int32) % 2


def tiles_per_image(batch: int, height: int, width: int, block: int = TILED_BLOCK) -> int:
    """Programs per image: 1 (the fused one-program-per-image kernel) below ``4 * BLOCK`` pixels,
    else enough to fill the device: one per ``block`` pixels, at most ``max(4, 16384 // batch)``."""
    if height * width < 4 * BLOCK:
        return 1
    n = -(-height * width // block)
    return max(1, min(n, max(4, 16384 // max(batch, 1))))


def tile_pixels(tiles: int) -> int:
    """Pixels per tile for ``tiles`` programs per image: ``BLOCK`` for one, ``TILED_BLOCK`` for more."""
    return BLOCK if tiles == 1 else TILED_BLOCK


def apply_chains(
    images: torch.Tensor,
    ops: torch.Tensor,
    values: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    float_out: bool,
    tiles: int,
    block: int = BLOCK,
    warps: Optional[int] = None,
) -> torch.Tensor:
    """The Triton kernels with the canonical arguments of :mod:`.ops`, with ``tiles`` programs per image.

    ``tiles == 1``: one launch, one program per image running its whole chain. ``tiles > 1``: the
    tiled path, ``2 + 7 K`` launches over ``(B, tiles)`` programs (load; per chain position a
    statistics launch and six pass launches, most of whose programs return at once; store), which
    fills a large device when images are big and batches small. Both give the same bytes.
    ``warps``: warps per program (None: 8 for one program per image, 4 for the tiled path).
    """
    if tiles < 1 or block < 16 or block & (block - 1):
        raise ValueError(f"tiles, block: expected tiles >= 1 and a power-of-two block >= 16, got {tiles}, {block}")
    if warps is not None and (warps < 1 or warps > 32 or warps & (warps - 1)):
        raise ValueError(f"warps: expected None or a power of two in 1..32, got {warps}")
    images = images.contiguous()
    b, c, h, w = images.shape
    k = ops.shape[1]
    dev = images.device
    out = torch.empty(images.shape, dtype=torch.float32 if float_out else torch.uint8, device=dev)
    if b == 0:
        return out
    ops = ops.contiguous()
    values = values.contiguous()
    crop, flip, cutout = crop.contiguous(), flip.contiguous(), cutout.contiguous()
    mean, std = mean.contiguous(), std.contiguous()
    geo = torch.ops.fastorals.augment_geometric_params(ops, values, h, w)
    bufs = torch.empty((b, 2, c, h, w), dtype=torch.uint8, device=dev)
    e, d, s = _KERNELS[0], _KERNELS[1], _KERNELS[2]
    if tiles == 1:
        lut = torch.empty((b, c, 256), dtype=torch.int32, device=dev)
        _launch(
            _augment_kernel, (b,),
            images, ops, values, geo, crop, flip, cutout, mean, std, bufs, lut, out, k, c, h, w,
            *e, *d, *s, FLOAT_OUT=bool(float_out), BLOCK=block, num_warps=warps or 8,
        )
        return out
    cur, final = chain_buffers(ops, geo, h, w)
    grid = (b, tiles)
    nw = warps or 4
    _launch(_load_kernel, grid, images, crop, flip, bufs, c, h, w, tiles, BLOCK=block, num_warps=nw)
    if k:
        hist = torch.zeros((b, k, c, 256), dtype=torch.int32, device=dev)
        gsum = torch.zeros((b, k), dtype=torch.int64, device=dev)
        lut = torch.empty((b, tiles, c, 256), dtype=torch.int32, device=dev)
        for j in range(k):
            _launch(_stats_kernel, grid, ops, cur, bufs, hist, gsum, k, j, c, h, w, tiles, BLOCK=block,
                    num_warps=nw)
            for p in range(6):
                _launch(_stage_kernel, grid, ops, values, geo, cur, bufs, hist, gsum, lut, k, j, p, c, h, w, tiles,
                        *e, *d, *s, BLOCK=block, num_warps=nw)
    _launch(_store_kernel, grid, bufs, final, cutout, mean, std, out, c, h, w, tiles,
            FLOAT_OUT=bool(float_out), BLOCK=block, num_warps=nw)
    return out


_GRAPHS = GraphCache(capacity=4)


@triton_op("fastorals::augment_apply_triton", mutates_args=())
def augment_apply_triton(
    images: torch.Tensor,
    ops: torch.Tensor,
    values: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    float_out: bool,
) -> torch.Tensor:
    """The Triton kernels with the canonical arguments of :mod:`.ops` (CUDA, or CPU when interpreted);
    programs per image from :func:`tiles_per_image`. In eager mode on CUDA the launches are replayed
    from a CUDA graph per input signature (:data:`_GRAPHS`, see :mod:`fastorals._graphs`): the tiled
    path's ``2 + 7 K`` launches cost more host time than the GPU needs to run them."""
    b, _, h, w = images.shape
    tiles = tiles_per_image(b, h, w)
    block = tile_pixels(tiles)
    tensors = (images, ops, values, crop, flip, cutout, mean, std)
    if b == 0:
        return apply_chains(*tensors, float_out, tiles, block)
    return _GRAPHS(lambda *t: apply_chains(*t, float_out, tiles, block), tensors, key=_graph_key(images, float_out))


def _graph_key(images: torch.Tensor, float_out: bool) -> tuple:
    b, _, h, w = images.shape
    return ("augment", bool(float_out), tiles_per_image(b, h, w))


def replay_cached(images: torch.Tensor, ops: torch.Tensor, values: torch.Tensor, crop: torch.Tensor,
                  flip: torch.Tensor, cutout: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  float_out: bool) -> Optional[torch.Tensor]:
    """:func:`augment_apply_triton`'s result from its graph when one is captured for these
    arguments (eager CUDA calls only), else None: the public API's calls skip the op's dispatch."""
    if images.shape[0] == 0:
        return None
    return _GRAPHS.replay((images, ops, values, crop, flip, cutout, mean, std), key=_graph_key(images, float_out))
