"""Triton kernels of :mod:`fastorals.transformer` and their ``torch.library`` ops.

Imported lazily (only when a CUDA tensor, ``TRITON_INTERPRET=1`` or an explicit
``backend="triton"`` needs it), so ``import fastorals.transformer`` never imports triton.

Kernels (semantics in :mod:`fastorals.transformer.reference`):

* ``_attn_fwd``: flash attention forward. One program per (query block, batch x head); online
  softmax in base 2 with ``log2(e)`` folded into the scale; the key loop runs in two phases, the
  blocks every row of the query block sees in full (no masking), then the masked blocks up to
  the lower-right causal diagonal / the sequence's key length; stores the log-sum-exp.
* ``_attn_bwd_preprocess``: ``delta = rowsum(O * dO)``.
* ``_attn_bwd_dkdv``: one program per key block; loops over the query blocks that can see it
  (from the diagonal on when causal), recomputing ``P`` from the saved log-sum-exp.
* ``_attn_bwd_dq``: one program per query block; loops over key blocks up to the diagonal.
* ``_attn_decode``: one program per (sequence, head) for a few new query tokens against a KV
  cache with per-sequence lengths (``T <= DECODE_MAX_T``; larger ``T`` uses ``_attn_fwd``).

Attention dropout draws a Philox4x32-10 stream keyed by a 64-bit seed and
counted by ``(row * Lk + col, batch * H + head)``: forward and backward regenerate the same mask,
and :func:`dropout_keep_mask` materialises it for tests.

Every kernel takes all four strides of every tensor, so non-contiguous inputs (e.g. views of a
fused QKV projection, or the stride-0 gradients autograd may hand to backward) need no copy.
"""

from __future__ import annotations

import struct
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

LOG2E = 1.4426950408889634
DECODE_MAX_T = 4

# ----------------------------------------------------------------------------- block sizes

# Tests override these (e.g. 16 x 16 under the interpreter, to cover many blocks on tiny shapes).
_BLOCK_OVERRIDE: dict[str, tuple[int, int]] = {}


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


def _fwd_config(dtype: torch.dtype, block_d: int, interpret: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward kernel."""
    if "fwd" in _BLOCK_OVERRIDE:
        return (*_BLOCK_OVERRIDE["fwd"], 4, 1)
    if interpret:
        return 32, 32, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 2
    if block_d <= 64:
        return 128, 64, 4, 3
    return 128, 64, 8, 3


def _bwd_config(dtype: torch.dtype, block_d: int, interpret: bool, which: str) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dk/dv (which="dkdv") or dq kernel."""
    if which in _BLOCK_OVERRIDE:
        return (*_BLOCK_OVERRIDE[which], 4, 1)
    if interpret:
        return 32, 32, 4, 1
    wide = block_d > 64 or dtype == torch.float32
    if which == "dkdv":
        return (32, 64, 8 if wide else 4, 2 if wide else 3)
    return (64, 32, 8 if wide else 4, 2 if wide else 3)


def _precision(dtype: torch.dtype) -> str:
    """fp32 dot products use TF32 only when torch's own matmul setting allows it."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _split(x: float) -> tuple[float, float]:
    """``x = hi + lo`` with ``hi`` exactly a float32: scalar kernel arguments travel as float32.

    Pure Python (no tensor), so it is safe inside a traced ``triton_op``.
    """
    hi = struct.unpack("f", struct.pack("f", float(x)))[0]
    return hi, float(x) - hi


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and log-sum-exp) dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _interpreting(t: torch.Tensor) -> bool:
    return t.device.type == "cpu"


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _keep_mask(seed, bh, rows, cols, Lk, dropout_p, TRANSPOSED: tl.constexpr = False):
    """Dropout keep-mask of one (batch, head) on the (rows x cols) grid (``(cols x rows)`` when
    TRANSPOSED): True with probability 1 - p, a pure function of (seed, bh, row, col)."""
    if TRANSPOSED:
        off = rows.to(tl.int64)[None, :] * Lk + cols.to(tl.int64)[:, None]
    else:
        off = rows.to(tl.int64)[:, None] * Lk + cols.to(tl.int64)[None, :]
    c0 = (off & 0xFFFFFFFF).to(tl.uint32)
    c2 = (off >> 32).to(tl.uint32)
    zero = c0 * 0
    c1 = zero + bh.to(tl.uint32)
    r = _philox(seed, c0, c1, c2, zero)
    u = (r >> 8).to(tl.float32) * (1.0 / 16777216.0)  # 24 random bits: uniform on [0, 1)
    return u >= dropout_p


@triton.jit
def _philox(seed, c0, c1, c2, c3):
    """First output word of Philox4x32-10 (Salmon et al., SC 2011) for the uint32 counters
    (c0, c1, c2, c3) under the 64-bit key ``seed``. Written out (constants inline) rather than
    taken from ``triton.language.random``, whose module-level defaults do not survive the source
    copy that ``torch.compile`` makes of a user kernel."""
    seed = seed.to(tl.uint64)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    m0 = c0 * 0 + 0xD2511F53
    m1 = c0 * 0 + 0xCD9E8D57
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0 = hi1 ^ c1 ^ k0
        c1 = lo1
        c2 = hi0 ^ c3 ^ k1
        c3 = lo0
        k0 = k0 + 0x9E3779B9  # Weyl sequence of the key
        k1 = k1 + 0xBB67AE85
    return c0


@triton.jit
def _dropout_mask_kernel(OUT, SEED, H, Lq, Lk, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    dropout_p = tl.cast(dropout_p, tl.float32)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2)
    seed = tl.load(SEED)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep_mask(seed, bh, rows, cols, Lk, dropout_p)
    ptr = OUT + bh.to(tl.int64) * Lq * Lk + rows[:, None].to(tl.int64) * Lk + cols[None, :]
    tl.store(ptr, keep.to(tl.int8), mask=(rows[:, None] < Lq) & (cols[None, :] < Lk))


@triton.jit
def _fwd_block(acc, l_i, m_i, q, k_base, v_base, skn, skd, svn, svd, start_n, offs_m, offs_d,
               kv_len, shift, qk_scale, seed, bh, Lk, dropout_p, inv_keep,
               D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
               MASKED: tl.constexpr, HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    dmask = offs_d < D
    if MASKED:
        nmask = offs_n < kv_len
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=dmask[:, None] & nmask[None, :], other=0.0)
    else:
        kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd, mask=dmask[:, None], other=0.0)
    s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=acc.dtype) * qk_scale
    if MASKED:
        valid = nmask[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = m_new
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if HAS_DROPOUT:
        keep = _keep_mask(seed, bh, offs_m, offs_n, Lk, dropout_p)
        p = tl.where(keep, p * inv_keep, 0.0)
    if MASKED:
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=nmask[:, None] & dmask[None, :], other=0.0)
    else:
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=dmask[None, :], other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, QLENS, KVLENS, SEED,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
              H, Lq, Lk, sm_scale, sm_scale_lo, dropout_p,
              D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
              HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr, IS_FP64: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    sm_scale = tl.cast(sm_scale, tl.float32)
    sm_scale_lo = tl.cast(sm_scale_lo, tl.float32)
    dropout_p = tl.cast(dropout_p, tl.float32)
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_len = Lq
    kv_len = Lk
    if HAS_QLENS:
        q_len = tl.load(QLENS + b).to(tl.int32)
    if HAS_KVLENS:
        kv_len = tl.load(KVLENS + b).to(tl.int32)
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    inv_keep = 1.0 / (1.0 - dropout_p)
    shift = kv_len - q_len
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Lq) & (offs_d[None, :] < D), other=0.0)
    scale = (tl.zeros([], ACC) + sm_scale) + sm_scale_lo  # float64: exact beyond the fp32 argument
    qk_scale = scale * tl.full([], 1.4426950408889634, ACC)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    if CAUSAL:
        n_end = tl.minimum(kv_len, start_m + BLOCK_M + shift)
        n_clean = tl.minimum(kv_len, start_m + shift + 1)
    else:
        n_end = kv_len
        n_clean = kv_len
    n_end = tl.maximum(n_end, 0)
    n_clean = tl.maximum(n_clean, 0) // BLOCK_N * BLOCK_N
    n_end = tl.where(start_m >= q_len, 0, n_end)
    n_clean = tl.where(start_m >= q_len, 0, n_clean)
    for start_n in range(0, n_clean, BLOCK_N):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_base, v_base, skn, skd, svn, svd, start_n, offs_m,
                                   offs_d, kv_len, shift, qk_scale, seed, bh, Lk, dropout_p, inv_keep,
                                   D, BLOCK_N, BLOCK_D, CAUSAL, False, HAS_DROPOUT, PRECISION)
    for start_n in range(n_clean, n_end, BLOCK_N):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_base, v_base, skn, skd, svn, svd, start_n, offs_m,
                                   offs_d, kv_len, shift, qk_scale, seed, bh, Lk, dropout_p, inv_keep,
                                   D, BLOCK_N, BLOCK_D, CAUSAL, True, HAS_DROPOUT, PRECISION)
    row_ok = (offs_m < q_len) & (l_i > 0.0)
    l_safe = tl.where(row_ok, l_i, 1.0)
    out = tl.where(row_ok[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(row_ok, (m_i + tl.math.log2(l_safe)) * tl.full([], 0.6931471805599453, ACC), float("-inf"))
    o_base = O + b * sob + h * soh
    tl.store(o_base + offs_m[:, None] * som + offs_d[None, :] * sod, out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < Lq) & (offs_d[None, :] < D))
    tl.store(LSE + bh.to(tl.int64) * Lq + offs_m, lse, mask=offs_m < Lq)


@triton.jit
def _attn_bwd_preprocess(O, DO, DELTA, sob, soh, som, sod, sdb, sdh, sdm, sdd, H, Lq,
                         D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, IS_FP64: tl.constexpr):
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < Lq) & (offs_d[None, :] < D)
    o = tl.load(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd, mask=mask, other=0.0)
    delta = tl.sum(o.to(ACC) * do.to(ACC), 1)
    tl.store(DELTA + bh.to(tl.int64) * Lq + offs_m, delta, mask=offs_m < Lq)


@triton.jit
def _bwd_dkdv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sqd, sdm, sdd,
                    start_m, offs_n, offs_d, Lq, kv_len, shift, qk_scale, seed, bh, Lk, dropout_p, inv_keep,
                    D: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                    HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    mrow = offs_m < Lq
    dmask = offs_d < D
    qt = tl.load(q_base + offs_m[None, :] * sqm + offs_d[:, None] * sqd, mask=mrow[None, :] & dmask[:, None],
                 other=0.0)
    do = tl.load(do_base + offs_m[:, None] * sdm + offs_d[None, :] * sdd, mask=mrow[:, None] & dmask[None, :],
                 other=0.0)
    lse = tl.load(lse_base + offs_m, mask=mrow, other=float("-inf"))
    # rows without any visible key (lse = -inf) or past the valid length contribute nothing
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * tl.full([], 1.4426950408889634, lse.dtype))
    delta = tl.load(delta_base + offs_m, mask=mrow, other=0.0)
    st = tl.dot(k, qt, input_precision=PRECISION, out_dtype=dk.dtype) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
    pt = tl.math.exp2(st - lse2[None, :])
    if MASKED:
        valid = offs_n[:, None] < kv_len
        if CAUSAL:
            valid = valid & (offs_n[:, None] <= offs_m[None, :] + shift)
        pt = tl.where(valid, pt, 0.0)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION, out_dtype=dk.dtype)  # (BLOCK_N, BLOCK_M)
    if HAS_DROPOUT:
        keep = _keep_mask(seed, bh, offs_m, offs_n, Lk, dropout_p, True)  # (BLOCK_N, BLOCK_M)
        pdt = tl.where(keep, pt * inv_keep, 0.0)
        dpt = tl.where(keep, dpt * inv_keep, 0.0)
    else:
        pdt = pt
    dv = tl.dot(pdt.to(do.dtype), do, dv, input_precision=PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, QLENS, KVLENS, SEED,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdm, sdd,
                   skgb, skgh, skgn, skgd, svgb, svgh, svgn, svgd,
                   H, Lq, Lk, sm_scale, sm_scale_lo, dropout_p,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
                   HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr, IS_FP64: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    sm_scale = tl.cast(sm_scale, tl.float32)
    sm_scale_lo = tl.cast(sm_scale_lo, tl.float32)
    dropout_p = tl.cast(dropout_p, tl.float32)
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_len = Lq
    kv_len = Lk
    if HAS_QLENS:
        q_len = tl.load(QLENS + b).to(tl.int32)
    if HAS_KVLENS:
        kv_len = tl.load(KVLENS + b).to(tl.int32)
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    inv_keep = 1.0 / (1.0 - dropout_p)
    shift = kv_len - q_len
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kvmask = (offs_n[:, None] < kv_len) & (offs_d[None, :] < D)
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kvmask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kvmask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    scale = (tl.zeros([], ACC) + sm_scale) + sm_scale_lo  # float64: exact beyond the fp32 argument
    qk_scale = scale * tl.full([], 1.4426950408889634, ACC)
    if CAUSAL:
        m_lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
        c = tl.maximum(start_n + BLOCK_N - 1 - shift, 0)
        m_clean = tl.maximum((c + BLOCK_M - 1) // BLOCK_M * BLOCK_M, m_lo)
    else:
        m_lo = 0
        m_clean = 0
    # a partial key block masks every query block; a block past the keys gets no gradient
    m_clean = tl.where(start_n + BLOCK_N > kv_len, (q_len + BLOCK_M - 1) // BLOCK_M * BLOCK_M, m_clean)
    m_end = tl.where(start_n >= kv_len, 0, q_len)
    q_base = Q + b * sqb + h * sqh
    do_base = DO + b * sdb + h * sdh
    lse_base = LSE + bh.to(tl.int64) * Lq
    delta_base = DELTA + bh.to(tl.int64) * Lq
    for start_m in range(m_lo, tl.minimum(m_clean, m_end), BLOCK_M):
        dk, dv = _bwd_dkdv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sqd, sdm, sdd,
                                 start_m, offs_n, offs_d, Lq, kv_len, shift, qk_scale, seed, bh, Lk, dropout_p,
                                 inv_keep, D, BLOCK_M, CAUSAL, True, HAS_DROPOUT, PRECISION)
    for start_m in range(m_clean, m_end, BLOCK_M):
        dk, dv = _bwd_dkdv_block(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sqd, sdm, sdd,
                                 start_m, offs_n, offs_d, Lq, kv_len, shift, qk_scale, seed, bh, Lk, dropout_p,
                                 inv_keep, D, BLOCK_M, CAUSAL, False, HAS_DROPOUT, PRECISION)
    dk = dk * scale
    omask = (offs_n[:, None] < Lk) & (offs_d[None, :] < D)
    tl.store(DK + b * skgb + h * skgh + offs_n[:, None] * skgn + offs_d[None, :] * skgd,
             dk.to(DK.dtype.element_ty), mask=omask)
    tl.store(DV + b * svgb + h * svgh + offs_n[:, None] * svgn + offs_d[None, :] * svgd,
             dv.to(DV.dtype.element_ty), mask=omask)


@triton.jit
def _bwd_dq_block(dq, q, do, lse2, delta, k_base, v_base, skn, skd, svn, svd, start_n, offs_m, offs_d,
                  kv_len, shift, qk_scale, seed, bh, Lk, dropout_p, inv_keep,
                  D: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
                  HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    dmask = offs_d < D
    if MASKED:
        m2 = dmask[:, None] & (offs_n[None, :] < kv_len)
    else:
        m2 = dmask[:, None]
    kt = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None] * skd, mask=m2, other=0.0)
    vt = tl.load(v_base + offs_n[None, :] * svn + offs_d[:, None] * svd, mask=m2, other=0.0)
    s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=dq.dtype) * qk_scale
    p = tl.math.exp2(s - lse2[:, None])
    if MASKED:
        valid = offs_n[None, :] < kv_len
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + shift)
        p = tl.where(valid, p, 0.0)
    dp = tl.dot(do, vt, input_precision=PRECISION, out_dtype=dq.dtype)
    if HAS_DROPOUT:
        keep = _keep_mask(seed, bh, offs_m, offs_n, Lk, dropout_p)
        dp = tl.where(keep, dp * inv_keep, 0.0)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, QLENS, KVLENS, SEED,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdm, sdd,
                 sqgb, sqgh, sqgm, sqgd,
                 H, Lq, Lk, sm_scale, sm_scale_lo, dropout_p,
                 D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_QLENS: tl.constexpr, HAS_KVLENS: tl.constexpr,
                 HAS_DROPOUT: tl.constexpr, PRECISION: tl.constexpr, IS_FP64: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    sm_scale = tl.cast(sm_scale, tl.float32)
    sm_scale_lo = tl.cast(sm_scale_lo, tl.float32)
    dropout_p = tl.cast(dropout_p, tl.float32)
    ACC = tl.float64 if IS_FP64 else tl.float32
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_len = Lq
    kv_len = Lk
    if HAS_QLENS:
        q_len = tl.load(QLENS + b).to(tl.int32)
    if HAS_KVLENS:
        kv_len = tl.load(KVLENS + b).to(tl.int32)
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    inv_keep = 1.0 / (1.0 - dropout_p)
    shift = kv_len - q_len
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mrow = offs_m < Lq
    dmask = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=mrow[:, None] & dmask[None, :], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd,
                 mask=mrow[:, None] & dmask[None, :], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * Lq + offs_m, mask=mrow, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * tl.full([], 1.4426950408889634, lse.dtype))
    delta = tl.load(DELTA + bh.to(tl.int64) * Lq + offs_m, mask=mrow, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    scale = (tl.zeros([], ACC) + sm_scale) + sm_scale_lo  # float64: exact beyond the fp32 argument
    qk_scale = scale * tl.full([], 1.4426950408889634, ACC)
    if CAUSAL:
        n_end = tl.minimum(kv_len, start_m + BLOCK_M + shift)
        n_clean = tl.minimum(kv_len, start_m + shift + 1)
    else:
        n_end = kv_len
        n_clean = kv_len
    n_end = tl.maximum(n_end, 0)
    n_clean = tl.maximum(n_clean, 0) // BLOCK_N * BLOCK_N
    n_end = tl.where(start_m >= q_len, 0, n_end)
    n_clean = tl.where(start_m >= q_len, 0, n_clean)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    for start_n in range(0, n_clean, BLOCK_N):
        dq = _bwd_dq_block(dq, q, do, lse2, delta, k_base, v_base, skn, skd, svn, svd, start_n, offs_m, offs_d,
                           kv_len, shift, qk_scale, seed, bh, Lk, dropout_p, inv_keep,
                           D, BLOCK_N, CAUSAL, False, HAS_DROPOUT, PRECISION)
    for start_n in range(n_clean, n_end, BLOCK_N):
        dq = _bwd_dq_block(dq, q, do, lse2, delta, k_base, v_base, skn, skd, svn, svd, start_n, offs_m, offs_d,
                           kv_len, shift, qk_scale, seed, bh, Lk, dropout_p, inv_keep,
                           D, BLOCK_N, CAUSAL, True, HAS_DROPOUT, PRECISION)
    dq = dq * scale
    tl.store(DQ + b * sqgb + h * sqgh + offs_m[:, None] * sqgm + offs_d[None, :] * sqgd,
             dq.to(DQ.dtype.element_ty), mask=mrow[:, None] & dmask[None, :])


@triton.jit
def _attn_decode(Q, K, V, O, QLENS, KVLENS,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
                 H, T, sm_scale, sm_scale_lo,
                 D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr, HAS_QLENS: tl.constexpr, IS_FP64: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    sm_scale = tl.cast(sm_scale, tl.float32)
    sm_scale_lo = tl.cast(sm_scale_lo, tl.float32)
    ACC = tl.float64 if IS_FP64 else tl.float32
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    kv_len = tl.load(KVLENS + b).to(tl.int32)
    q_len = T
    if HAS_QLENS:
        q_len = tl.load(QLENS + b).to(tl.int32)
    shift = kv_len - q_len
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_t[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_t[:, None] < T) & dmask[None, :], other=0.0).to(ACC)
    scale = (tl.zeros([], ACC) + sm_scale) + sm_scale_lo
    q = q * (scale * tl.full([], 1.4426950408889634, ACC))
    m_i = tl.full([BLOCK_T], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_T], dtype=ACC)
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    n_end = tl.where(q_len <= 0, 0, kv_len)
    for start_n in range(0, n_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        nmask = offs_n < kv_len
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=nmask[:, None] & dmask[None, :], other=0.0).to(ACC)
        s = tl.sum(q[:, None, :] * k[None, :, :], 2)  # (BLOCK_T, BLOCK_N)
        valid = nmask[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_t[:, None] + shift)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=nmask[:, None] & dmask[None, :], other=0.0).to(ACC)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)
        m_i = m_new
    row_ok = (offs_t < q_len) & (l_i > 0.0)
    out = tl.where(row_ok[:, None], acc / tl.where(row_ok, l_i, 1.0)[:, None], 0.0)
    tl.store(O + b * sob + h * soh + offs_t[:, None] * som + offs_d[None, :] * sod, out.to(O.dtype.element_ty),
             mask=(offs_t[:, None] < T) & dmask[None, :])


# ----------------------------------------------------------------------------- launchers


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def _lens_arg(lens: Optional[torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
    return lens if lens is not None else ref  # dummy pointer, never read when the flag is off


@triton_op("fastorals::transformer_flash_attn_fwd_triton", mutates_args=())
def flash_attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens: Optional[torch.Tensor],
    kv_lens: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    causal: bool,
    softmax_scale: float,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention forward: ``(out (B, H, Lq, D) in q's dtype, lse (B, H, Lq) float32/float64)``."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    out = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Lq), dtype=_acc(q.dtype), device=q.device)
    block_d = _pow2(D)
    bm, bn, warps, stages = _fwd_config(q.dtype, block_d, _interpreting(q))
    has_drop = dropout_p > 0.0
    grid = (triton.cdiv(Lq, bm), B * H)
    wrap_triton(_attn_fwd)[grid](
        q, k, v, out, lse, _lens_arg(q_lens, lse), _lens_arg(kv_lens, lse), seed if has_drop else lse,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        H, Lq, Lk, *_split(softmax_scale), dropout_p,
        D=D, BLOCK_D=block_d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal,
        HAS_QLENS=q_lens is not None, HAS_KVLENS=kv_lens is not None, HAS_DROPOUT=has_drop,
        PRECISION=_precision(q.dtype), IS_FP64=q.dtype == torch.float64, num_warps=warps, num_stages=stages,
    )
    return out, lse


@triton_op("fastorals::transformer_flash_attn_bwd_triton", mutates_args=())
def flash_attn_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    q_lens: Optional[torch.Tensor],
    kv_lens: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    causal: bool,
    softmax_scale: float,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flash attention backward: ``(dq, dk, dv)`` shaped like ``(q, k, v)``."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    dq = torch.empty((B, H, Lq, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, Lk, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, H, Lk, D), dtype=v.dtype, device=v.device)
    delta = torch.empty((B, H, Lq), dtype=_acc(q.dtype), device=q.device)
    block_d = _pow2(D)
    interp = _interpreting(q)
    has_drop = dropout_p > 0.0
    prec = _precision(q.dtype)
    pre_m = 64 if not interp else 32
    wrap_triton(_attn_bwd_preprocess)[(triton.cdiv(Lq, pre_m), B * H)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), H, Lq, D=D, BLOCK_D=block_d, BLOCK_M=pre_m,
        IS_FP64=q.dtype == torch.float64,
    )
    seed_arg = seed if has_drop else delta
    ql, kl = _lens_arg(q_lens, delta), _lens_arg(kv_lens, delta)
    flags = dict(D=D, BLOCK_D=block_d, CAUSAL=causal, HAS_QLENS=q_lens is not None,
                 HAS_KVLENS=kv_lens is not None, HAS_DROPOUT=has_drop, PRECISION=prec,
                 IS_FP64=q.dtype == torch.float64)
    bm, bn, warps, stages = _bwd_config(q.dtype, block_d, interp, "dkdv")
    wrap_triton(_attn_bwd_dkdv)[(triton.cdiv(Lk, bn), B * H)](
        q, k, v, grad_out, lse, delta, dk, dv, ql, kl, seed_arg,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dk), *_strides(dv),
        H, Lq, Lk, *_split(softmax_scale), dropout_p, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **flags,
    )
    bm, bn, warps, stages = _bwd_config(q.dtype, block_d, interp, "dq")
    wrap_triton(_attn_bwd_dq)[(triton.cdiv(Lq, bm), B * H)](
        q, k, v, grad_out, lse, delta, dq, ql, kl, seed_arg,
        *_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), *_strides(dq),
        H, Lq, Lk, *_split(softmax_scale), dropout_p, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **flags,
    )
    return dq, dk, dv


def _fwd_setup_context(ctx, inputs, output) -> None:
    q, k, v, q_lens, kv_lens, seed, causal, softmax_scale, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, q_lens, kv_lens, seed)
    ctx.causal = causal
    ctx.softmax_scale = softmax_scale
    ctx.dropout_p = dropout_p


def _fwd_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, q_lens, kv_lens, seed = ctx.saved_tensors
    dq, dk, dv = flash_attn_bwd(grad_out, q, k, v, out, lse, q_lens, kv_lens, seed,
                                ctx.causal, ctx.softmax_scale, ctx.dropout_p)
    return dq, dk, dv, None, None, None, None, None, None


flash_attn_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


@triton_op("fastorals::transformer_decode_attn_triton", mutates_args=())
def decode_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens: Optional[torch.Tensor],
    kv_lens: torch.Tensor,
    causal: bool,
    softmax_scale: float,
) -> torch.Tensor:
    """Few-token decode against a KV cache: one program per (sequence, head); returns ``(B, H, T, D)``."""
    B, H, T, D = q.shape
    out = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    block_d = _pow2(D)
    block_t = _pow2(T, lo=1)
    block_n = 32 if _interpreting(q) else max(16, min(128, 8192 // (block_t * block_d)))
    wrap_triton(_attn_decode)[(B * H,)](
        q, k, v, out, _lens_arg(q_lens, kv_lens), kv_lens,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        H, T, *_split(softmax_scale), D=D, BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_N=block_n, CAUSAL=causal,
        HAS_QLENS=q_lens is not None, IS_FP64=q.dtype == torch.float64, num_warps=4,
    )
    return out


def dropout_keep_mask(seed: torch.Tensor, batch: int, heads: int, q_len: int, k_len: int,
                      dropout_p: float) -> torch.Tensor:
    """The ``(B, H, Lq, Lk)`` bool keep-mask the kernels draw for ``seed`` (for tests and debugging)."""
    out = torch.empty((batch, heads, q_len, k_len), dtype=torch.int8, device=seed.device)
    bm = bn = 32
    _dropout_mask_kernel[(triton.cdiv(q_len, bm), triton.cdiv(k_len, bn), batch * heads)](
        out, seed, heads, q_len, k_len, dropout_p, BLOCK_M=bm, BLOCK_N=bn,
    )
    return out.bool()


__all__ = ["DECODE_MAX_T", "decode_attn", "dropout_keep_mask", "flash_attn_bwd", "flash_attn_fwd"]
