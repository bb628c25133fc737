"""Launchers and ``torch.library`` ops of the behavior module (inputs validated by the public API).

k-means, one Lloyd pass (assignment + per-cluster float64 sums):

``fastorals::behavior_lloyd_pass``       C++ kernel (CPU), labels updated in place
``lloyd_pass_torch``                     PyTorch: GEMM screening + exact recheck (any device)
``lloyd_pass_triton``                    Triton screening kernel (CUDA) + exact recheck, see ``triton.py``
``fastorals::behavior_assigned_dist``    C++: exact float64 distance of each point to its centre

Both passes return exactly the assignment of :func:`reference.assign_reference` (see the
certification argument in ``csrc/kmeans/lloyd.cpp``).

BeT head loss (forward and gradient in one pass, the backward only scales the saved gradient):

``fastorals::behavior_bet_loss``         C++ kernel (CPU)
``fastorals::behavior_bet_loss_torch``   PyTorch ops (any device)
``fastorals::behavior_bet_loss_triton``  Triton kernel (CUDA), see ``triton.py``
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import _ext
from .reference import exact_sq_dist

# ----------------------------------------------------------------------------- k-means


def unit_roundoff(dtype: torch.dtype, device: torch.device, gemm: bool) -> float:
    """Unit roundoff of the screening arithmetic (bounds in lloyd.cpp).

    For the GEMM screening of float32 data the precision PyTorch may use for matmuls counts:
    with ``torch.set_float32_matmul_precision("high"/"medium")`` (TF32 / bfloat16 passes) the
    bound is widened to bfloat16's, so the result stays exact (more points get rechecked).
    """
    if dtype == torch.float64:
        return 2.0**-53
    if gemm and (torch.get_float32_matmul_precision() != "highest"
                 or (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)):
        return 2.0**-8
    return 2.0**-24


def _kmeans_ext():
    mod = _ext.ext_topic("kmeans")
    if mod is None:
        raise _ext.BackendUnavailableError(f"k-means C++ kernels unavailable ({_ext.EXT_ERROR})")
    return mod


@torch.library.custom_op("fastorals::behavior_lloyd_pass", mutates_args=("labels", "upper", "lower"),
                         device_types="cpu")
def lloyd_pass_cpp(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, accumulate: bool,
                   unit_roundoff: float, upper: Optional[torch.Tensor] = None, lower: Optional[torch.Tensor] = None,
                   drift: Optional[torch.Tensor] = None, drift_max: float = 0.0,
                   half_sep: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd pass in C++.

    Args:
        x: ``(N, D)`` float32/float64, contiguous. centers: ``(K, D)`` same dtype.
        labels: ``(N,)`` int64, previous labels in, new labels out (-1: none before).
        accumulate: also compute the per-cluster sums and counts.
        unit_roundoff: of the screening arithmetic.
        upper, lower: optional ``(N,)`` float32 distance bounds (Hamerly), relative to the drift:
            ``|x - c_own| <= upper + drift[own]``, ``|x - c_k| >= lower - drift_max``; the pass
            writes them for the points it screens.
        drift: ``(K,)`` float64 cumulative distance each centre moved (zeros when None);
        drift_max: cumulative sum of the per-update largest move.
        half_sep: ``(K,)`` float64 half the distance from each centre to its nearest other centre;
            with it, points whose bounds prove their centre unchanged are skipped (same labels).
    Returns:
        sums ``(K, D)`` float64, counts ``(K,)`` int64 (empty when not ``accumulate``), and
        stats ``(3,)`` int64 = (labels changed, points rechecked exactly, points screened).
    """
    mod = _kmeans_ext()
    x = x.contiguous()
    centers = centers.contiguous()
    K, D = centers.shape
    sums = torch.zeros(K if accumulate else 0, D, dtype=torch.float64)
    counts = torch.zeros(K if accumulate else 0, dtype=torch.int64)
    fn = mod.lloyd_pass_f32 if x.dtype == torch.float32 else mod.lloyd_pass_f64
    s_np = sums.numpy() if accumulate else torch.zeros(K, D, dtype=torch.float64).numpy()
    c_np = counts.numpy() if accumulate else torch.zeros(K, dtype=torch.int64).numpy()

    def arr(t):
        return None if t is None else t.numpy()

    changed, rechecked, scanned = fn(x.numpy(), centers.numpy(), labels.numpy(), s_np, c_np, accumulate,
                                     unit_roundoff, arr(upper), arr(lower), arr(drift), float(drift_max),
                                     arr(half_sep), torch.get_num_threads())
    return sums, counts, torch.tensor([changed, rechecked, scanned], dtype=torch.int64)


@lloyd_pass_cpp.register_fake
def _(x, centers, labels, accumulate, unit_roundoff, upper=None, lower=None, drift=None, drift_max=0.0,
      half_sep=None):
    K, D = centers.shape
    return (x.new_empty(K if accumulate else 0, D, dtype=torch.float64),
            x.new_empty(K if accumulate else 0, dtype=torch.int64), x.new_empty(3, dtype=torch.int64))


def centre_motion(old: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(K,)`` upper bounds on how far each centre moved and lower bounds on half the
    distance from each new centre to its nearest other centre (exact differences, outward slack)."""
    K = new.shape[0]
    if new.device.type == "cpu":  # NumPy: tiny arrays, no thread pool
        o, n = old.numpy().astype(np.float64), new.numpy().astype(np.float64)
        shift_np = np.sqrt(((n - o) ** 2).sum(1)) * (1 + 1e-9) + 1e-300
        if K == 1:
            return torch.from_numpy(shift_np), torch.full((1,), float("inf"), dtype=torch.float64)
        dist_np = np.sqrt(((n[:, None, :] - n[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(dist_np, np.inf)
        return torch.from_numpy(shift_np), torch.from_numpy(0.5 * dist_np.min(1) * (1 - 1e-9))
    o, n = old.double(), new.double()
    shift = ((n - o) ** 2).sum(1).sqrt() * (1 + 1e-9) + 1e-300
    if K == 1:
        return shift.contiguous(), torch.full((1,), float("inf"), dtype=torch.float64, device=n.device)
    diff = n[:, None, :] - n[None, :, :]
    dist = (diff * diff).sum(-1).sqrt()
    dist.fill_diagonal_(float("inf"))
    half = 0.5 * dist.min(1).values * (1 - 1e-9)
    return shift.contiguous(), half.contiguous()


@torch.library.custom_op("fastorals::behavior_assigned_dist", mutates_args=(), device_types="cpu")
def assigned_dist_cpp(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, per_point: bool) -> torch.Tensor:
    """Exact float64 distance of each point to its centre: ``(N,)`` when ``per_point``, else their sum ``(1,)``."""
    mod = _kmeans_ext()
    x = x.contiguous()
    centers = centers.contiguous()
    labels = labels.contiguous()
    out = torch.empty(x.shape[0] if per_point else 0, dtype=torch.float64)
    fn = mod.assigned_dist_f32 if x.dtype == torch.float32 else mod.assigned_dist_f64
    total = fn(x.numpy(), centers.numpy(), labels.numpy(), out.numpy() if per_point else None,
               torch.get_num_threads())
    return out if per_point else torch.tensor([total], dtype=torch.float64)


@assigned_dist_cpp.register_fake
def _(x, centers, labels, per_point):
    return x.new_empty(x.shape[0] if per_point else 1, dtype=torch.float64)


def assigned_dist_torch(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exact float64 distance ``(N,)`` of each point to its centre (reference order, any device)."""
    xd = x.double()
    cd = centers.double()[labels]
    acc = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for d in range(x.shape[1]):
        diff = xd[:, d] - cd[:, d]
        acc = acc + diff * diff
    return acc


def lloyd_pass_torch(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, accumulate: bool,
                     unit_roundoff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same pass with PyTorch ops (any device): GEMM screening in chunks, exact recheck of near ties.

    Same arguments and results as :func:`lloyd_pass_cpp` (``labels`` updated in place).
    """
    N, D = x.shape
    K = centers.shape[0]
    cd = centers.double()
    cn = (cd * cd).sum(1)
    cmax = float(cn.max())
    cn_t = cn.to(x.dtype)
    ct = centers.t()
    coef = (8.0 * D + 16.0) * 1.01 * unit_roundoff
    floor = (8.0 * D + 16.0) * float(torch.finfo(x.dtype).tiny) * 2.0**-23
    new = torch.empty(N, dtype=torch.int64, device=x.device)
    chunk = max(1, min(N, (1 << 22) // max(K, 1)))
    rechecked = 0
    for i in range(0, N, chunk):
        xc = x[i : i + chunk]
        s = torch.addmm(cn_t, xc, ct, beta=1, alpha=-2)
        lab = s.argmin(1)
        if K >= 2:
            top2 = torch.topk(s, 2, dim=1, largest=False).values
            gap = (top2[:, 1] - top2[:, 0]).double()
            xd = xc.double()
            tol = coef * ((xd * xd).sum(1) + cmax) + floor
            amb = ~(gap > tol)  # NaN gaps are rechecked too
            rows = torch.nonzero(amb).flatten()
            if rows.numel():
                rechecked += rows.numel()
                lab[rows] = _exact_argmin(xc[rows], centers)
        new[i : i + chunk] = lab
    return _finish_pass(x, labels, new, K, accumulate, rechecked)


def _exact_argmin(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Reference nearest centres of (few) rows, in chunks."""
    out = [exact_sq_dist(x[i : i + 32768], centers).argmin(1) for i in range(0, x.shape[0], 32768)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


def _finish_pass(x: torch.Tensor, labels: torch.Tensor, new: torch.Tensor, K: int, accumulate: bool,
                 rechecked: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    D = x.shape[1]
    changed = int((new != labels).sum())
    labels.copy_(new)
    if accumulate:
        sums = torch.zeros(K, D, dtype=torch.float64, device=x.device).index_add_(0, labels, x.double())
        counts = torch.bincount(labels, minlength=K)
    else:
        sums = x.new_zeros(0, D, dtype=torch.float64)
        counts = x.new_zeros(0, dtype=torch.int64)
    return sums, counts, torch.tensor([changed, rechecked, x.shape[0]], dtype=torch.int64)


def lloyd_pass_triton(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, accumulate: bool,
                      unit_roundoff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pass with the Triton screening kernel (CUDA), exact recheck and sums in PyTorch.

    Same arguments and results as :func:`lloyd_pass_cpp`. On CUDA the float64 sums use atomic
    adds, so their last bits may vary between runs (the labels never do).
    """
    from . import triton as _tri

    cd = centers.double()
    cn = (cd * cd).sum(1)
    new, amb = _tri.kmeans_screen_triton(x, centers, cn.to(x.dtype), float(cn.max()), unit_roundoff)
    rows = torch.nonzero(amb).flatten()
    if rows.numel():
        new[rows] = _exact_argmin(x[rows], centers)
    return _finish_pass(x, labels, new, centers.shape[0], accumulate, int(rows.numel()))


# ----------------------------------------------------------------------------- BeT loss


def _behavior_ext():
    mod = _ext.ext_topic("behavior")
    if mod is None:
        raise _ext.BackendUnavailableError(f"behavior C++ kernels unavailable ({_ext.EXT_ERROR})")
    return mod


@torch.library.custom_op("fastorals::behavior_bet_loss", mutates_args=(), device_types="cpu")
def bet_loss_cpp(logits: torch.Tensor, offsets: torch.Tensor, bins: torch.Tensor, residuals: torch.Tensor,
                 weight: Optional[torch.Tensor], gamma: float, inv_total: float, need_grad: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused BeT loss in C++.

    Args:
        logits ``(M, K)``, offsets ``(M, K, A)``, bins ``(M,)`` int64, residuals ``(M, A)``, weight
        ``(M,)`` or None (all float32 or all float64), gamma, inv_total = 1 / sum of weights,
        need_grad: also return the gradients.
    Returns:
        parts ``(2,)`` = (class_loss, offset_loss) in the input dtype; d class_loss / d logits
        ``(M, K)`` and d offset_loss / d offsets[m, bins[m]] ``(M, A)`` (empty when not ``need_grad``).
    """
    mod = _behavior_ext()
    logits, offsets, residuals = logits.contiguous(), offsets.contiguous(), residuals.contiguous()
    bins = bins.contiguous()
    M, K = logits.shape
    A = offsets.shape[2]
    gl = torch.empty(M if need_grad else 0, K, dtype=logits.dtype)
    gr = torch.empty(M if need_grad else 0, A, dtype=logits.dtype)
    fn = mod.bet_loss_f32 if logits.dtype == torch.float32 else mod.bet_loss_f64
    w = weight.contiguous().numpy() if weight is not None else None
    f, m = fn(logits.numpy(), offsets.numpy(), bins.numpy(), residuals.numpy(), w, gamma, inv_total,
              gl.numpy() if need_grad else None, gr.numpy() if need_grad else None, torch.get_num_threads())
    return torch.tensor([f, m], dtype=logits.dtype), gl, gr


@bet_loss_cpp.register_fake
def _(logits, offsets, bins, residuals, weight, gamma, inv_total, need_grad):
    M, K = logits.shape
    A = offsets.shape[2]
    return (logits.new_empty(2), logits.new_empty(M if need_grad else 0, K),
            logits.new_empty(M if need_grad else 0, A))


def focal_terms_torch(p: torch.Tensor, logp: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 - p)^gamma`` and ``gamma p (1 - p)^(gamma - 1) log p`` (0 at p = 1), elementwise."""
    q = 1 - p
    if gamma == 0:
        return torch.ones_like(p), torch.zeros_like(p)
    if gamma == 1:
        return q, p * logp
    if gamma == 2:
        return q * q, 2 * p * q * logp
    pos = q > 0
    qs = torch.where(pos, q, torch.ones_like(q))
    return torch.where(pos, qs**gamma, torch.zeros_like(q)), torch.where(
        pos, gamma * p * qs ** (gamma - 1) * logp, torch.zeros_like(q))


@torch.library.custom_op("fastorals::behavior_bet_loss_torch", mutates_args=())
def bet_loss_torch(logits: torch.Tensor, offsets: torch.Tensor, bins: torch.Tensor, residuals: torch.Tensor,
                   weight: Optional[torch.Tensor], gamma: float, inv_total: float, need_grad: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused loss with PyTorch ops (any device); same contract as :func:`bet_loss_cpp`."""
    M, K = logits.shape
    A = offsets.shape[2]
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    rows = torch.arange(M, device=logits.device)
    lse = torch.logsumexp(z, dim=1)
    logp = z[rows, bins] - lse
    p = logp.exp()
    pow_g, dterm = focal_terms_torch(p, logp, gamma)
    w = weight.to(acc) if weight is not None else None
    focal = -pow_g * logp
    diff = offsets[rows, bins].to(acc) - residuals.to(acc)
    mse = (diff * diff).mean(1)
    if w is not None:
        focal, mse = focal * w, mse * w
    parts = torch.stack([focal.sum(), mse.sum()]) * inv_total
    if not need_grad:
        e = logits.new_empty(0, K)
        return parts.to(logits.dtype), e, logits.new_empty(0, A)
    scale = torch.full((M,), inv_total, dtype=acc, device=logits.device) if w is None else w * inv_total
    G = (dterm - pow_g) * scale
    g = torch.exp(z - lse[:, None]) * (-G)[:, None]
    g[rows, bins] += G
    gr = diff * (2.0 / A) * scale[:, None]
    return parts.to(logits.dtype), g.to(logits.dtype), gr.to(logits.dtype)


@bet_loss_torch.register_fake
def _(logits, offsets, bins, residuals, weight, gamma, inv_total, need_grad):
    M, K = logits.shape
    A = offsets.shape[2]
    return (logits.new_empty(2), logits.new_empty(M if need_grad else 0, K),
            logits.new_empty(M if need_grad else 0, A))


def _setup_context(ctx, inputs, output):
    _, offsets, bins, _, _, _, _, need_grad = inputs
    _, gl, gr = output
    ctx.need_grad = need_grad
    ctx.offsets_shape = offsets.shape
    ctx.save_for_backward(bins, gl, gr)


def _backward(ctx, grad_parts, _g_gl, _g_gr):
    bins, gl, gr = ctx.saved_tensors
    if not ctx.need_grad:
        raise RuntimeError("bet_loss: the gradient was not computed in the forward pass (need_grad=False)")
    g_class, g_off = grad_parts[0], grad_parts[1]
    M, K, A = ctx.offsets_shape
    grad_logits = gl * g_class
    rows_grad = gr * g_off
    grad_offsets = gl.new_zeros(M * K, A)
    grad_offsets.index_copy_(0, torch.arange(M, device=gl.device) * K + bins, rows_grad)
    grad_offsets = grad_offsets.view(M, K, A)
    return grad_logits, grad_offsets, None, -rows_grad, None, None, None, None


bet_loss_cpp.register_autograd(_backward, setup_context=_setup_context)
bet_loss_torch.register_autograd(_backward, setup_context=_setup_context)
