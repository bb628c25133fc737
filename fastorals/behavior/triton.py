"""Triton kernels of the behavior module (CUDA; CPU under ``TRITON_INTERPRET=1``).

``_kmeans_screen_kernel``: one program per block of points; loops over the centres in chunks,
computing ``|c|^2 - 2 x.c`` in registers (no N x K matrix in memory) and keeping the best value,
its index (lowest among equal values) and the second best. It flags points whose gap is within
the rounding bound of ``csrc/kmeans/lloyd.cpp``; the caller re-decides those with exact float64
distances, so labels equal the reference exactly. Registered as
``fastorals::behavior_kmeans_screen_triton``.

``_bet_loss_kernel``: one program per block of rows; focal loss (any gamma >= 0), offset MSE of
the true bin and both gradients in one pass (one exp per logit); per-program partial sums are
added afterwards in program order (deterministic). Registered as
``fastorals::behavior_bet_loss_triton`` with the same backward as the other backends.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .ops import _backward, _setup_context

# ----------------------------------------------------------------------------- k-means screening


@triton.jit
def _kmeans_screen_kernel(
    x_ptr, c_ptr, cn_ptr, lab_ptr, amb_ptr, prm_ptr,
    N, K, D,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, IS_F64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    ds = tl.arange(0, BLOCK_D)
    if IS_F64:
        xn = tl.zeros((BLOCK_N,), dtype=tl.float64)
    else:
        xn = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dmask = (d0 + ds) < D
        xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + d0 + ds[None, :],
                     mask=rmask[:, None] & dmask[None, :], other=0.0)
        xn += tl.sum(xv * xv, 1)
    inf = float("inf")
    best = xn * 0.0 + inf
    second = xn * 0.0 + inf
    idx = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for c0 in range(0, K, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < K
        dot = tl.zeros((BLOCK_N, BLOCK_C), dtype=xn.dtype)
        for d0 in range(0, D, BLOCK_D):
            dmask = (d0 + ds) < D
            xv = tl.load(x_ptr + rows[:, None].to(tl.int64) * D + d0 + ds[None, :],
                         mask=rmask[:, None] & dmask[None, :], other=0.0)
            cv = tl.load(c_ptr + cs[:, None].to(tl.int64) * D + d0 + ds[None, :],
                         mask=cmask[:, None] & dmask[None, :], other=0.0)
            dot += tl.sum(xv[:, None, :] * cv[None, :, :], 2)
        cn = tl.load(cn_ptr + cs, mask=cmask, other=0.0)
        s = cn[None, :] - 2.0 * dot
        s = tl.where(cmask[None, :], s, inf)
        cmin = tl.min(s, 1)
        big = K + BLOCK_C
        cidx = tl.min(tl.where(s == cmin[:, None], cs[None, :], big), 1)
        csec = tl.min(tl.where(cs[None, :] == cidx[:, None], inf, s), 1)
        upd = cmin < best
        second = tl.minimum(tl.minimum(second, csec), tl.maximum(best, cmin))
        idx = tl.where(upd, cidx.to(tl.int64), idx)
        best = tl.minimum(best, cmin)
    coef = tl.load(prm_ptr)  # scalars in the data's precision (Python floats would be float32)
    cmax = tl.load(prm_ptr + 1)
    floor_abs = tl.load(prm_ptr + 2)
    tol = coef * (xn + cmax) + floor_abs
    amb = (second - best > tol) == 0  # also for NaN gaps
    tl.store(lab_ptr + rows, idx, mask=rmask)
    tl.store(amb_ptr + rows, amb.to(tl.int8), mask=rmask)


@triton_op("fastorals::behavior_kmeans_screen_triton", mutates_args=())
def kmeans_screen_triton(x: torch.Tensor, centers: torch.Tensor, cn: torch.Tensor, cmax: float,
                         unit_roundoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Screened labels ``(N,)`` int64 and ambiguity flags ``(N,)`` int8 of points ``x`` ``(N, D)``
    against ``centers`` ``(K, D)`` with squared norms ``cn`` ``(K,)`` (same dtype), ``cmax = max cn``."""
    x = x.contiguous()
    centers = centers.contiguous()
    cn = cn.contiguous()
    N, D = x.shape
    K = centers.shape[0]
    labels = torch.empty(N, dtype=torch.int64, device=x.device)
    amb = torch.empty(N, dtype=torch.int8, device=x.device)
    BLOCK_D = min(16, triton.next_power_of_2(D))
    BLOCK_C = 16
    BLOCK_N = 64
    coef = (8.0 * D + 16.0) * 1.01 * unit_roundoff
    floor_abs = (8.0 * D + 16.0) * float(torch.finfo(x.dtype).tiny)
    prm = torch.tensor([coef, cmax * (1.0 + 4.0 * unit_roundoff), floor_abs], dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, BLOCK_N),)
    wrap_triton(_kmeans_screen_kernel)[grid](
        x, centers, cn, labels, amb, prm, N, K, D,
        BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, IS_F64=x.dtype == torch.float64, num_warps=4,
    )
    return labels, amb


# ----------------------------------------------------------------------------- BeT loss


@triton.jit
def _bet_loss_kernel(
    z_ptr, o_ptr, b_ptr, r_ptr, w_ptr, gl_ptr, gr_ptr, part_ptr, prm_ptr,
    M, K, A,
    HAS_W: tl.constexpr, NEED_GRAD: tl.constexpr, GAMMA_MODE: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_A: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    r64 = rows.to(tl.int64)
    gamma = tl.load(prm_ptr)  # scalars in the compute precision (Python floats would be float32)
    inv_total = tl.load(prm_ptr + 1)
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    z = tl.load(z_ptr + r64[:, None] * K + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
    if IS_F64:
        z = z.to(tl.float64)
    else:
        z = z.to(tl.float32)
    z = tl.where(kmask[None, :], z, float("-inf"))
    zmax = tl.max(z, 1)
    e = tl.exp(z - zmax[:, None])
    se = tl.sum(e, 1)
    t = tl.load(b_ptr + rows, mask=rmask, other=0).to(tl.int64)
    hit = ks[None, :] == t[:, None]
    zt = tl.sum(tl.where(hit, z, 0.0), 1)
    logp = zt - zmax - tl.log(se)
    p = tl.exp(logp)
    q = 1.0 - p
    if GAMMA_MODE == 0:  # gamma = 0: cross-entropy
        powg = q * 0.0 + 1.0
        dterm = q * 0.0
    elif GAMMA_MODE == 2:  # gamma = 2
        powg = q * q
        dterm = 2.0 * p * q * logp
    else:
        pos = q > 0
        lq = tl.log(tl.where(pos, q, 1.0))
        powg = tl.where(pos, tl.exp(gamma * lq), 0.0)
        dterm = tl.where(pos, gamma * p * tl.exp((gamma - 1.0) * lq) * logp, 0.0)
    if HAS_W:
        w = tl.load(w_ptr + rows, mask=rmask, other=0.0).to(z.dtype)
    else:
        w = tl.where(rmask, 1.0, 0.0).to(z.dtype)
    focal = -powg * logp * w
    a_s = tl.arange(0, BLOCK_A)
    amask = rmask[:, None] & (a_s[None, :] < A)
    ot = tl.load(o_ptr + (r64[:, None] * K + t[:, None]) * A + a_s[None, :], mask=amask, other=0.0).to(z.dtype)
    rr = tl.load(r_ptr + r64[:, None] * A + a_s[None, :], mask=amask, other=0.0).to(z.dtype)
    diff = ot - rr
    mse = tl.sum(diff * diff, 1) / A * w
    tl.store(part_ptr + 2 * pid, tl.sum(tl.where(rmask, focal, 0.0), 0))
    tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.where(rmask, mse, 0.0), 0))
    if NEED_GRAD:
        scale = w * inv_total
        G = (dterm - powg) * scale
        g = -(e / se[:, None]) * G[:, None] + tl.where(hit, G[:, None], 0.0)
        tl.store(gl_ptr + r64[:, None] * K + ks[None, :], g.to(gl_ptr.dtype.element_ty),
                 mask=rmask[:, None] & kmask[None, :])
        gr = diff * 2.0 * scale[:, None] / A
        tl.store(gr_ptr + r64[:, None] * A + a_s[None, :], gr.to(gr_ptr.dtype.element_ty), mask=amask)


MAX_BINS = 4096  # one tile of logits per row block; more bins use the PyTorch path


@triton_op("fastorals::behavior_bet_loss_triton", mutates_args=())
def bet_loss_triton(logits: torch.Tensor, offsets: torch.Tensor, bins: torch.Tensor, residuals: torch.Tensor,
                    weight: Optional[torch.Tensor], gamma: float, inv_total: float, need_grad: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused BeT loss (same contract as ``ops.bet_loss_cpp``)."""
    logits, offsets, residuals = logits.contiguous(), offsets.contiguous(), residuals.contiguous()
    bins = bins.contiguous()
    M, K = logits.shape
    A = offsets.shape[2]
    BLOCK_K = max(16, triton.next_power_of_2(K))
    BLOCK_A = max(2, triton.next_power_of_2(A))
    BLOCK_M = max(1, min(64, 4096 // BLOCK_K))
    grid = (triton.cdiv(M, BLOCK_M),)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    part = torch.empty(grid[0], 2, dtype=acc, device=logits.device)
    gl = torch.empty(M if need_grad else 0, K, dtype=logits.dtype, device=logits.device)
    gr = torch.empty(M if need_grad else 0, A, dtype=logits.dtype, device=logits.device)
    w = weight.contiguous() if weight is not None else logits  # dummy pointer when absent
    mode = 0 if gamma == 0.0 else (2 if gamma == 2.0 else 1)
    prm = torch.tensor([gamma, inv_total], dtype=acc, device=logits.device)
    wrap_triton(_bet_loss_kernel)[grid](
        logits, offsets, bins, residuals, w, gl if need_grad else logits, gr if need_grad else logits, part, prm,
        M, K, A,
        HAS_W=weight is not None, NEED_GRAD=need_grad, GAMMA_MODE=mode, IS_F64=acc == torch.float64,
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_A=BLOCK_A, num_warps=4,
    )
    parts = part.sum(0) * prm[1]
    return parts.to(logits.dtype), gl, gr


bet_loss_triton.register_autograd(_backward, setup_context=_setup_context)
