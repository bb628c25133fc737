"""Triton kernels of RLEL's hot paths (CUDA; CPU only under ``TRITON_INTERPRET=1``).

Imported lazily (only when a CUDA tensor or an explicit ``backend="triton"`` needs it), so
``import fastorals.label_encoding`` works without Triton.

Fused soft-target cross-entropy + expected-value decoding
    forward   one program per block of rows; the scores s = z D are produced tile by tile
              (``tl.dot`` over bit chunks) and consumed at once by two online softmaxes
              (scores, soft targets): neither s, softmax(s) nor the targets touch memory.
              Writes ce, prediction and the two log-normalizers per row.
    backward  two kernels that recompute s tile by tile: one over row blocks accumulates
              dz = ds D^T, one over level blocks accumulates dD = z^T ds. Deterministic
              (no atomics), nothing of size [B, Q] is stored.

R1 (error correction)
    forward   one program per (row block, column block) with column >= row block (symmetry);
              L1 distances accumulate over bit chunks in registers; per-program partial sums.
    backward  one program per (row block, bit chunk): recomputes the activity mask block by
              block and accumulates sum_j a_ij sign(z_i - z_j); the [B, B, M] tensor never exists.

All arithmetic is float32 (inputs may be float16/bfloat16/float32); ``tl.dot`` runs with
``input_precision="ieee"`` so results match the float32 reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

# ----------------------------------------------------------------------------- block sizes


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _ce_blocks(B: int, M: int, Q: int) -> tuple[int, int, int]:
    return _pow2(B, 16, 64), _pow2(Q, 16, 64), _pow2(M, 16, 64)


# ============================================================================= fused CE


@triton.jit
def _scores_tile(Z, D, rows, rmask, cols, cmask, M, s_zb, s_zm, s_dm, s_dq,
                 BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    s = tl.zeros([BLOCK_B, BLOCK_Q], dtype=tl.float32)
    for k0 in range(0, M, BLOCK_M):
        ks = k0 + tl.arange(0, BLOCK_M)
        kmask = ks < M
        zt = tl.load(Z + rows[:, None] * s_zb + ks[None, :] * s_zm, mask=rmask[:, None] & kmask[None, :], other=0.0)
        dt = tl.load(D + ks[:, None] * s_dm + cols[None, :] * s_dq, mask=kmask[:, None] & cmask[None, :], other=0.0)
        s += tl.dot(zt.to(tl.float32), dt.to(tl.float32), input_precision="ieee")
    return s


@triton.jit
def _ce_fwd_kernel(Z, D, Y, CE, PRED, LSE, LSEA, B, M, Q, s_zb, s_zm, s_dm, s_dq, lo, step, inv_ts,
                   BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    lo = tl.cast(lo, tl.float32)
    step = tl.cast(step, tl.float32)
    inv_ts = tl.cast(inv_ts, tl.float32)
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    y = tl.load(Y + rows, mask=rmask, other=0.0).to(tl.float32)
    m_s = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    l_s = tl.zeros([BLOCK_B], dtype=tl.float32)
    e_s = tl.zeros([BLOCK_B], dtype=tl.float32)
    m_a = tl.full([BLOCK_B], float("-inf"), dtype=tl.float32)
    l_a = tl.zeros([BLOCK_B], dtype=tl.float32)
    c_a = tl.zeros([BLOCK_B], dtype=tl.float32)
    for q0 in range(0, Q, BLOCK_Q):
        cols = q0 + tl.arange(0, BLOCK_Q)
        cmask = cols < Q
        s = _scores_tile(Z, D, rows, rmask, cols, cmask, M, s_zb, s_zm, s_dm, s_dq, BLOCK_B, BLOCK_Q, BLOCK_M)
        lev = lo + step * cols.to(tl.float32)
        s_m = tl.where(cmask[None, :], s, float("-inf"))
        a = tl.where(cmask[None, :], -tl.abs(y[:, None] - lev[None, :]) * inv_ts, float("-inf"))
        # online softmax of the scores: max, sum of weights, weighted sum of levels
        m_new = tl.maximum(m_s, tl.max(s_m, axis=1))
        alpha = tl.exp(m_s - m_new)
        p = tl.exp(s_m - m_new[:, None])
        l_s = l_s * alpha + tl.sum(p, axis=1)
        e_s = e_s * alpha + tl.sum(p * lev[None, :], axis=1)
        m_s = m_new
        # online softmax of the soft targets: max, sum of weights, weighted sum of scores
        ma_new = tl.maximum(m_a, tl.max(a, axis=1))
        beta = tl.exp(m_a - ma_new)
        t = tl.exp(a - ma_new[:, None])
        l_a = l_a * beta + tl.sum(t, axis=1)
        c_a = c_a * beta + tl.sum(t * tl.where(cmask[None, :], s, 0.0), axis=1)
        m_a = ma_new
    lse = m_s + tl.log(l_s)
    lsea = m_a + tl.log(l_a)
    tl.store(CE + rows, lse - c_a / l_a, mask=rmask)
    tl.store(PRED + rows, e_s / l_s, mask=rmask)
    tl.store(LSE + rows, lse, mask=rmask)
    tl.store(LSEA + rows, lsea, mask=rmask)


@triton.jit
def _ce_grad_tile(s, y, lse, lsea, pred, gce, gpred, cols, cmask, rmask, lo, step, inv_ts):
    lev = lo + step * cols.to(tl.float32)
    p = tl.exp(s - lse[:, None])
    t = tl.exp(-tl.abs(y[:, None] - lev[None, :]) * inv_ts - lsea[:, None])
    ds = gce[:, None] * (p - t) + gpred[:, None] * p * (lev[None, :] - pred[:, None])
    return tl.where(rmask[:, None] & cmask[None, :], ds, 0.0)


@triton.jit
def _load_row_stats(Y, LSE, LSEA, PRED, GCE, GPRED, rows, rmask):
    y = tl.load(Y + rows, mask=rmask, other=0.0).to(tl.float32)
    lse = tl.load(LSE + rows, mask=rmask, other=0.0).to(tl.float32)
    lsea = tl.load(LSEA + rows, mask=rmask, other=0.0).to(tl.float32)
    pred = tl.load(PRED + rows, mask=rmask, other=0.0).to(tl.float32)
    gce = tl.load(GCE + rows, mask=rmask, other=0.0).to(tl.float32)
    gpred = tl.load(GPRED + rows, mask=rmask, other=0.0).to(tl.float32)
    return y, lse, lsea, pred, gce, gpred


@triton.jit
def _ce_bwd_dz_kernel(Z, D, Y, LSE, LSEA, PRED, GCE, GPRED, DZ, B, M, Q, s_zb, s_zm, s_dm, s_dq, lo, step,
                      inv_ts, BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    lo = tl.cast(lo, tl.float32)
    step = tl.cast(step, tl.float32)
    inv_ts = tl.cast(inv_ts, tl.float32)
    pid_b = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    mo = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    momask = mo < M
    y, lse, lsea, pred, gce, gpred = _load_row_stats(Y, LSE, LSEA, PRED, GCE, GPRED, rows, rmask)
    acc = tl.zeros([BLOCK_B, BLOCK_M], dtype=tl.float32)
    for q0 in range(0, Q, BLOCK_Q):
        cols = q0 + tl.arange(0, BLOCK_Q)
        cmask = cols < Q
        s = _scores_tile(Z, D, rows, rmask, cols, cmask, M, s_zb, s_zm, s_dm, s_dq, BLOCK_B, BLOCK_Q, BLOCK_M)
        ds = _ce_grad_tile(s, y, lse, lsea, pred, gce, gpred, cols, cmask, rmask, lo, step, inv_ts)
        d_o = tl.load(D + mo[:, None] * s_dm + cols[None, :] * s_dq, mask=momask[:, None] & cmask[None, :],
                      other=0.0).to(tl.float32)
        acc += tl.dot(ds, tl.trans(d_o), input_precision="ieee")
    tl.store(DZ + rows[:, None] * M + mo[None, :], acc, mask=rmask[:, None] & momask[None, :])


@triton.jit
def _ce_bwd_dd_kernel(Z, D, Y, LSE, LSEA, PRED, GCE, GPRED, DD, B, M, Q, s_zb, s_zm, s_dm, s_dq, lo, step,
                      inv_ts, BLOCK_B: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    lo = tl.cast(lo, tl.float32)
    step = tl.cast(step, tl.float32)
    inv_ts = tl.cast(inv_ts, tl.float32)
    pid_q = tl.program_id(0)
    pid_m = tl.program_id(1)
    cols = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cmask = cols < Q
    mo = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    momask = mo < M
    acc = tl.zeros([BLOCK_M, BLOCK_Q], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        rmask = rows < B
        y, lse, lsea, pred, gce, gpred = _load_row_stats(Y, LSE, LSEA, PRED, GCE, GPRED, rows, rmask)
        s = _scores_tile(Z, D, rows, rmask, cols, cmask, M, s_zb, s_zm, s_dm, s_dq, BLOCK_B, BLOCK_Q, BLOCK_M)
        ds = _ce_grad_tile(s, y, lse, lsea, pred, gce, gpred, cols, cmask, rmask, lo, step, inv_ts)
        z_o = tl.load(Z + rows[:, None] * s_zb + mo[None, :] * s_zm, mask=rmask[:, None] & momask[None, :],
                      other=0.0).to(tl.float32)
        acc += tl.dot(tl.trans(z_o), ds, input_precision="ieee")
    tl.store(DD + mo[:, None] * Q + cols[None, :], acc, mask=momask[:, None] & cmask[None, :])


def _check_float(*ts: Tensor) -> None:
    for t in ts:
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"triton backend: expected float32/float16/bfloat16 tensors, got {t.dtype}")


@triton_op("fastorals::label_encoding_ce_triton", mutates_args=())
def ce_triton(z: Tensor, codes: Tensor, labels: Tensor, lo: float, step: float, inv_ts: float
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused soft-target CE + expected value (Triton).  -> ce, prediction, lse, lse_target [B] (float32)."""
    _check_float(z, codes, labels)
    z, codes, labels = z.contiguous(), codes.contiguous(), labels.contiguous()
    B, M = z.shape
    Q = codes.shape[1]
    outs = [torch.empty((B,), dtype=torch.float32, device=z.device) for _ in range(4)]
    if B > 0:
        BB, BQ, BM = _ce_blocks(B, M, Q)
        wrap_triton(_ce_fwd_kernel)[(triton.cdiv(B, BB),)](
            z, codes, labels, *outs, B, M, Q, z.stride(0), z.stride(1), codes.stride(0), codes.stride(1),
            float(lo), float(step), float(inv_ts), BLOCK_B=BB, BLOCK_Q=BQ, BLOCK_M=BM)
    return tuple(outs)


@triton_op("fastorals::label_encoding_ce_triton_backward", mutates_args=())
def ce_triton_backward(gce: Tensor, gpred: Tensor, z: Tensor, codes: Tensor, labels: Tensor, lse: Tensor,
                       lsea: Tensor, pred: Tensor, lo: float, step: float, inv_ts: float
                       ) -> tuple[Tensor, Tensor]:
    z, codes, labels = z.contiguous(), codes.contiguous(), labels.contiguous()
    gce, gpred = gce.contiguous(), gpred.contiguous()
    B, M = z.shape
    Q = codes.shape[1]
    dz = torch.zeros((B, M), dtype=torch.float32, device=z.device)
    dd = torch.zeros((M, Q), dtype=torch.float32, device=z.device)
    if B > 0 and M > 0:
        BB, BQ, BM = _ce_blocks(B, M, Q)
        args = (z, codes, labels, lse, lsea, pred, gce, gpred)
        strides = (z.stride(0), z.stride(1), codes.stride(0), codes.stride(1))
        wrap_triton(_ce_bwd_dz_kernel)[(triton.cdiv(B, BB), triton.cdiv(M, BM))](
            *args, dz, B, M, Q, *strides, float(lo), float(step), float(inv_ts),
            BLOCK_B=BB, BLOCK_Q=BQ, BLOCK_M=BM)
        wrap_triton(_ce_bwd_dd_kernel)[(triton.cdiv(Q, BQ), triton.cdiv(M, BM))](
            *args, dd, B, M, Q, *strides, float(lo), float(step), float(inv_ts),
            BLOCK_B=BB, BLOCK_Q=BQ, BLOCK_M=BM)
    return dz.to(z.dtype), dd.to(codes.dtype)


def _ce_setup(ctx, inputs, output):
    z, codes, labels, lo, step, inv_ts = inputs
    _, pred, lse, lsea = output
    ctx.save_for_backward(z, codes, labels, lse, lsea, pred)
    ctx.params = (lo, step, inv_ts)
    ctx.set_materialize_grads(False)


def _ce_bwd(ctx, gce, gpred, _glse, _glsea):
    z, codes, labels, lse, lsea, pred = ctx.saved_tensors
    if gce is None and gpred is None:
        return None, None, None, None, None, None
    gce = torch.zeros_like(lse) if gce is None else gce.float()
    gpred = torch.zeros_like(lse) if gpred is None else gpred.float()
    dz, dd = ce_triton_backward(gce, gpred, z, codes, labels, lse, lsea, pred, *ctx.params)
    return dz, dd, None, None, None, None


ce_triton.register_autograd(_ce_bwd, setup_context=_ce_setup)


# ============================================================================= R1

_R1_BI, _R1_BJ, _R1_BK = 32, 32, 8


@triton.jit
def _r1_fwd_kernel(Z, Y, P, B, M, s_zb, s_zm, scale, n_j,
                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    scale = tl.cast(scale, tl.float32)
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    # symmetry: blocks below the diagonal are skipped, blocks above it count twice
    w = tl.where(pid_j > pid_i, 2.0, tl.where(pid_j == pid_i, 1.0, 0.0))
    k_end = tl.where(pid_j >= pid_i, M, 0)
    ii = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    jj = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    imask = ii < B
    jmask = jj < B
    d = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
    for k0 in range(0, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < M
        zi = tl.load(Z + ii[:, None] * s_zb + ks[None, :] * s_zm, mask=imask[:, None] & kmask[None, :],
                     other=0.0).to(tl.float32)
        zj = tl.load(Z + jj[:, None] * s_zb + ks[None, :] * s_zm, mask=jmask[:, None] & kmask[None, :],
                     other=0.0).to(tl.float32)
        d += tl.sum(tl.abs(zi[:, None, :] - zj[None, :, :]), axis=2)
    yi = tl.load(Y + ii, mask=imask, other=0.0).to(tl.float32)
    yj = tl.load(Y + jj, mask=jmask, other=0.0).to(tl.float32)
    pre = tl.abs(yi[:, None] - yj[None, :]) * scale - d
    v = tl.where(imask[:, None] & jmask[None, :] & (pre > 0), pre, 0.0)
    tl.store(P + pid_i * n_j + pid_j, tl.sum(tl.sum(v, axis=1), axis=0) * w)


@triton.jit
def _r1_bwd_kernel(Z, Y, GOUT, G, B, M, s_zb, s_zm, scale, neg2_over_b,
                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    scale = tl.cast(scale, tl.float32)
    neg2_over_b = tl.cast(neg2_over_b, tl.float32)
    pid_i = tl.program_id(0)
    pid_k = tl.program_id(1)
    ii = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = ii < B
    ko = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    komask = ko < M
    yi = tl.load(Y + ii, mask=imask, other=0.0).to(tl.float32)
    zi_o = tl.load(Z + ii[:, None] * s_zb + ko[None, :] * s_zm, mask=imask[:, None] & komask[None, :],
                   other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_I, BLOCK_K], dtype=tl.float32)
    for j0 in range(0, B, BLOCK_J):
        jj = j0 + tl.arange(0, BLOCK_J)
        jmask = jj < B
        d = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
        for k0 in range(0, M, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < M
            zi = tl.load(Z + ii[:, None] * s_zb + ks[None, :] * s_zm, mask=imask[:, None] & kmask[None, :],
                         other=0.0).to(tl.float32)
            zj = tl.load(Z + jj[:, None] * s_zb + ks[None, :] * s_zm, mask=jmask[:, None] & kmask[None, :],
                         other=0.0).to(tl.float32)
            d += tl.sum(tl.abs(zi[:, None, :] - zj[None, :, :]), axis=2)
        yj = tl.load(Y + jj, mask=jmask, other=0.0).to(tl.float32)
        pre = tl.abs(yi[:, None] - yj[None, :]) * scale - d
        a = tl.where(imask[:, None] & jmask[None, :] & (pre > 0), 1.0, 0.0)
        zj_o = tl.load(Z + jj[:, None] * s_zb + ko[None, :] * s_zm, mask=jmask[:, None] & komask[None, :],
                       other=0.0).to(tl.float32)
        diff = zi_o[:, None, :] - zj_o[None, :, :]
        sgn = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        acc += tl.sum(a[:, :, None] * sgn, axis=1)
    coef = tl.load(GOUT).to(tl.float32) * neg2_over_b  # d R1 / d z_i = -(2/B) sum_j a_ij sign(z_i - z_j)
    tl.store(G + ii[:, None] * M + ko[None, :], acc * coef, mask=imask[:, None] & komask[None, :])


@triton_op("fastorals::label_encoding_r1_triton", mutates_args=())
def r1_triton(z: Tensor, labels: Tensor, scale: float) -> Tensor:
    """R1 (Triton).  z [B, M], labels [B] -> scalar (float32)."""
    _check_float(z, labels)
    z, labels = z.contiguous(), labels.contiguous()
    B, M = z.shape
    if B == 0:
        return torch.zeros((), dtype=torch.float32, device=z.device)
    n_i = triton.cdiv(B, _R1_BI)
    n_j = triton.cdiv(B, _R1_BJ)
    partial = torch.empty((n_i * n_j,), dtype=torch.float32, device=z.device)
    wrap_triton(_r1_fwd_kernel)[(n_i, n_j)](
        z, labels, partial, B, M, z.stride(0), z.stride(1), float(scale), n_j,
        BLOCK_I=_R1_BI, BLOCK_J=_R1_BJ, BLOCK_K=_R1_BK)
    return partial.sum() / B


@triton_op("fastorals::label_encoding_r1_triton_backward", mutates_args=())
def r1_triton_backward(grad: Tensor, z: Tensor, labels: Tensor, scale: float) -> Tensor:
    z, labels = z.contiguous(), labels.contiguous()
    grad = grad.reshape(1).float().contiguous()
    B, M = z.shape
    g = torch.zeros((B, M), dtype=torch.float32, device=z.device)
    if B > 0 and M > 0:
        wrap_triton(_r1_bwd_kernel)[(triton.cdiv(B, _R1_BI), triton.cdiv(M, _R1_BK))](
            z, labels, grad, g, B, M, z.stride(0), z.stride(1), float(scale), -2.0 / B,
            BLOCK_I=_R1_BI, BLOCK_J=_R1_BJ, BLOCK_K=_R1_BK)
    return g.to(z.dtype)


def _r1_setup(ctx, inputs, output):
    z, labels, scale = inputs
    ctx.save_for_backward(z, labels)
    ctx.scale = scale


def _r1_bwd(ctx, grad):
    z, labels = ctx.saved_tensors
    return r1_triton_backward(grad, z, labels, ctx.scale), None, None


r1_triton.register_autograd(_r1_bwd, setup_context=_r1_setup)
