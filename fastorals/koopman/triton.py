"""Triton kernel of the fused SKD spectral terms (GPU; CPU under ``TRITON_INTERPRET=1``).

``_spectral_kernel``: one program per Koopman matrix. The k eigenvalues are loaded once; the
conjugate pairing, the component ranks and the static mask come from (k x k) pairwise
comparisons held in registers (no sort, no host synchronization), then both penalties and their
gradients w.r.t. (Re, Im) are reduced in the same program. One launch replaces the ~40 small
kernels of the PyTorch version. Registered as ``fastorals::koopman_spectral_triton``; k <= 256.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .ops import register_triton_autograd

MAX_K = 256


@triton.jit
def _spectral_kernel(
    ev_ptr, sl_ptr, dl_ptr, gs_ptr, gd_ptr, mask_ptr, comp_ptr, ns_ptr,
    k, num_static, dyn_thr, radius, eigs_thr,
    STATIC_MODE: tl.constexpr, DYNAMIC_MODE: tl.constexpr, BLOCK: tl.constexpr,
):
    # float scalars: fp32 as in eager Triton (torch.compile passes Python floats as fp64)
    dyn_thr = tl.cast(dyn_thr, tl.float32)
    radius = tl.cast(radius, tl.float32)
    eigs_thr = tl.cast(eigs_thr, tl.float32)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    valid = offs < k
    base = m * k * 2
    re = tl.load(ev_ptr + base + offs * 2, mask=valid, other=0.0)
    im = tl.load(ev_ptr + base + offs * 2 + 1, mask=valid, other=0.0)
    ii = offs[:, None]
    jj = offs[None, :]
    vj = valid[None, :]
    re_i = re[:, None]
    re_j = re[None, :]
    im_i = im[:, None]
    im_j = im[None, :]
    # occurrence index of each eigenvalue among exact duplicates with a smaller index
    same = (re_j == re_i) & (im_j == im_i) & vj & (jj < ii)
    dup = tl.sum(same.to(tl.int32), axis=1)
    dup_i = dup[:, None]
    dup_j = dup[None, :]
    # the d-th a+ib pairs with the d-th a-ib
    cand = (re_j == re_i) & (im_j == -im_i) & (im_i > 0) & (dup_j == dup_i) & vj
    p_plus = tl.min(tl.where(cand, jj, k), axis=1)
    hit = (p_plus[:, None] == jj) & valid[:, None]
    p_minus = tl.min(tl.where(hit, ii, k), axis=0)
    partner = tl.where(im > 0, p_plus, p_minus)
    comp = tl.minimum(partner, offs)
    if STATIC_MODE == 0:
        key = (re - 1.0) * (re - 1.0) + im * im
    elif STATIC_MODE == 1:
        key = -(re * re + im * im)
    else:
        key = -re
    rep = (comp == offs) & valid
    key_i = key[:, None]
    key_j = key[None, :]
    comp_i = comp[:, None]
    comp_j = comp[None, :]
    before = rep[None, :] & ((key_j < key_i) | ((key_j == key_i) & (comp_j < comp_i)))
    rank = tl.sum(before.to(tl.int32), axis=1)
    smask = (rank < num_static) & valid
    dmask = (rank >= num_static) & valid
    ns = tl.sum(smask.to(tl.int32), axis=0)
    nd = tl.sum(dmask.to(tl.int32), axis=0)
    zero = re * 0.0
    inv_s = tl.where(ns > 0, 1.0 / tl.maximum(ns, 1).to(re.dtype), 0.0)
    inv_d = tl.where(nd > 0, 1.0 / tl.maximum(nd, 1).to(re.dtype), 0.0)
    if STATIC_MODE == 0:
        s_term = (re - 1.0) * (re - 1.0) + im * im
        s_gr = 2.0 * (re - 1.0)
        s_gi = 2.0 * im
    elif STATIC_MODE == 1:
        n1 = re * re + im * im - 1.0
        s_term = n1 * n1
        s_gr = 4.0 * n1 * re
        s_gi = 4.0 * n1 * im
    else:
        s_term = (re - 1.0) * (re - 1.0)
        s_gr = 2.0 * (re - 1.0)
        s_gi = zero
    if DYNAMIC_MODE == 1:
        on = re > dyn_thr
        d_term = tl.where(on, re, zero)
        d_gr = tl.where(on, 1.0, 0.0) + zero
        d_gi = zero
    elif DYNAMIC_MODE == 2:
        dist = tl.sqrt((re - 1.0) * (re - 1.0) + im * im)
        on = dist < radius
        live = on & (dist > 0)
        safe = tl.where(dist > 0, dist, 1.0)
        d_term = tl.where(on, 2.0 - dist, zero)
        d_gr = tl.where(live, -(re - 1.0) / safe, zero)
        d_gi = tl.where(live, -im / safe, zero)
    elif DYNAMIC_MODE == 3:
        n2 = re * re + im * im
        on = n2 > dyn_thr
        d_term = tl.where(on, n2, zero)
        d_gr = tl.where(on, 2.0 * re, zero)
        d_gi = tl.where(on, 2.0 * im, zero)
    elif DYNAMIC_MODE == 4:
        n3 = re * re + im * im - eigs_thr * eigs_thr
        d_term = n3 * n3
        d_gr = 4.0 * n3 * re
        d_gi = 4.0 * n3 * im
    else:
        d_term = zero
        d_gr = zero
        d_gi = zero
    sl = tl.sum(tl.where(smask, s_term, zero), axis=0) * inv_s
    dl = tl.sum(tl.where(dmask, d_term, zero), axis=0) * inv_d
    tl.store(sl_ptr + m, sl)
    tl.store(dl_ptr + m, dl)
    tl.store(gs_ptr + base + offs * 2, tl.where(smask, s_gr, zero) * inv_s, mask=valid)
    tl.store(gs_ptr + base + offs * 2 + 1, tl.where(smask, s_gi, zero) * inv_s, mask=valid)
    tl.store(gd_ptr + base + offs * 2, tl.where(dmask, d_gr, zero) * inv_d, mask=valid)
    tl.store(gd_ptr + base + offs * 2 + 1, tl.where(dmask, d_gi, zero) * inv_d, mask=valid)
    tl.store(mask_ptr + m * k + offs, smask, mask=valid)
    tl.store(comp_ptr + m * k + offs, comp.to(tl.int64), mask=valid)
    tl.store(ns_ptr + m, ns.to(tl.int64))


@triton_op("fastorals::koopman_spectral_triton", mutates_args=())
def spectral_terms_triton(ev: torch.Tensor, num_static: int, static_mode: int, dynamic_mode: int,
                          dynamic_threshold: float, ball_radius: float, eigs_threshold: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                     torch.Tensor, torch.Tensor]:
    """The fused split + penalties of (M, k, 2) eigenvalue views, k <= 256 (see ops.spectral_terms)."""
    ev = ev.contiguous()
    m, k, _ = ev.shape
    if k > MAX_K:
        raise ValueError(f"eigvals: the Triton kernel supports k <= {MAX_K}, got k={k}")
    sl = ev.new_empty(m)
    dl = ev.new_empty(m)
    gs = ev.new_empty(m, k, 2)
    gd = ev.new_empty(m, k, 2)
    mask = ev.new_empty(m, k, dtype=torch.bool)  # bool storage (a view of int8 does not lower in inductor)
    comp = ev.new_empty(m, k, dtype=torch.int64)
    ns = ev.new_empty(m, dtype=torch.int64)
    if m > 0 and k > 0:
        block = max(16, triton.next_power_of_2(k))
        wrap_triton(_spectral_kernel)[(m,)](
            ev, sl, dl, gs, gd, mask, comp, ns, k, num_static, dynamic_threshold, ball_radius, eigs_threshold,
            STATIC_MODE=static_mode, DYNAMIC_MODE=dynamic_mode, BLOCK=block, num_warps=4 if block <= 64 else 8)
    return sl, dl, gs, gd, mask, comp, ns


register_triton_autograd(spectral_terms_triton)
