"""Launchers and ``torch.library`` ops of the koopman module.

* ``fastorals::koopman_fit``: Koopman matrix by the normal equations (one Gram product, a
  Cholesky factorization with a small ridge, two triangular solves) with a closed-form
  backward; never synchronizes with the host (``cholesky_ex``). Returns the factor, a
  condition estimate and the factorization status so the caller can fall back to lstsq.
* ``fastorals::koopman_spectral`` (C++), ``fastorals::koopman_spectral_torch`` (vectorized
  PyTorch) and ``fastorals::koopman_spectral_triton`` (``triton.py``): the conjugate-pair-aware
  static/dynamic split and both spectral penalties with their gradients w.r.t. the
  eigenvalues, fused in one pass. All three share one autograd formula.
"""

from __future__ import annotations

import torch

from .. import _ext
from .reference import DYNAMIC_MODES, STATIC_MODES

__all__ = ["koopman_fit", "spectral_terms"]

# ------------------------------------------------------------------------------ Koopman fit


# Up to this latent size the C++ solve (one call after the two Gram products: ridge, Cholesky,
# both triangular solves, condition estimate) beats the ~50 small PyTorch ops of _fit_torch;
# above it LAPACK's blocked kernels win.
CPP_FIT_MAX_K = 128
# power iterations of the condition estimate (both paths)
COND_ITERS = 4


def _fit_cpp(z: torch.Tensor, ridge: float, relative: bool):
    mod = _ext.ext_topic("koopman_fit")
    g, b, t, k = z.shape
    # rows [z_t | z_t+1] of every step, and [X^T X | X^T Y] in one product
    xy = z.unfold(2, 2, 1).transpose(-1, -2).reshape(g, b * (t - 1), 2 * k)
    normal = (xy[..., :k].mT @ xy).contiguous()
    c = z.new_empty(g, k, k)
    factor = z.new_empty(g, k, k)
    cond = z.new_empty(g)
    info = torch.empty(g, dtype=torch.int32)
    mod.koopman_solve(normal.numpy(), _probe(k, z.dtype, z.device).numpy(), COND_ITERS, float(ridge), bool(relative),
                      c.numpy(), factor.numpy(), cond.numpy(), info.numpy(), torch.get_num_threads())
    return c, factor, cond, info


@torch.library.custom_op("fastorals::koopman_fit", mutates_args=())
def _koopman_fit(z: torch.Tensor, ridge: float, relative: bool, cpp: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if cpp:
        if z.device.type != "cpu" or _ext.ext_topic("koopman_fit") is None:
            raise _ext.BackendUnavailableError(f"koopman_fit: the C++ fit needs CPU tensors and the extension "
                                               f"(device {z.device}; {_ext.EXT_ERROR or 'extension loaded'})")
        return _fit_cpp(z.contiguous(), ridge, relative)
    return _fit_torch(z, ridge, relative)


def _fit_torch(z: torch.Tensor, ridge: float, relative: bool):
    g, b, t, k = z.shape
    x = z[:, :, :-1].reshape(g, b * (t - 1), k)
    y = z[:, :, 1:].reshape(g, b * (t - 1), k)
    xt = x.mT
    gram = xt @ x
    rhs = xt @ y
    lam = _ridge(gram, ridge, relative)
    gram.diagonal(dim1=-2, dim2=-1).add_(lam.unsqueeze(-1))
    factor, info = torch.linalg.cholesky_ex(gram)
    c = torch.cholesky_solve(rhs, factor)
    return c.contiguous(), factor.contiguous(), _cond_estimate(gram, factor), info


_PROBES: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _probe(k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fixed (k, p) block of start vectors (deterministic: independent of the global RNG)."""
    key = (k, dtype, device)
    if key not in _PROBES:
        g = torch.Generator().manual_seed(20230501 + k)
        _PROBES[key] = torch.randn(k, min(k, 4), generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return _PROBES[key]


def _cond_estimate(gram: torch.Tensor, factor: torch.Tensor, iters: int = COND_ITERS) -> torch.Tensor:
    """Estimate of the 2-norm condition number of the SPD ``gram`` without a host synchronization.

    max(diag ratio of the Cholesky factor squared, power-iteration estimate of
    lambda_max(A) * lambda_max(A^-1)), a few (k x 4) products and solves: a lower bound that is
    typically within a small factor of the truth.
    """
    d = factor.diagonal(dim1=-2, dim2=-1)
    diag_ratio = (d.amax(-1) / d.amin(-1)).square()
    v0 = _probe(gram.shape[-1], gram.dtype, gram.device).expand(*gram.shape[:-2], -1, -1)
    u = v = v0
    for _ in range(iters):
        u = gram @ u
        u = u / u.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
        v = torch.cholesky_solve(v, factor)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(gram.dtype).tiny)
    big = (u * (gram @ u)).sum(-2).amax(-1)
    inv_big = (v * torch.cholesky_solve(v, factor)).sum(-2).amax(-1)
    return torch.maximum(diag_ratio, big * inv_big)


def _ridge(gram: torch.Tensor, ridge: float, relative: bool) -> torch.Tensor:
    k = gram.shape[-1]
    if not relative:
        return torch.full(gram.shape[:-2], ridge, dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(-1) / k
    return ridge * scale.clamp_min(torch.finfo(gram.dtype).tiny)


@_koopman_fit.register_fake
def _(z, ridge, relative, cpp=False):
    g, _, _, k = z.shape
    return (z.new_empty(g, k, k), z.new_empty(g, k, k), z.new_empty(g),
            z.new_empty(g, dtype=torch.int32))


def _fit_setup(ctx, inputs, output):
    z, ridge, relative, _ = inputs
    c, factor, cond, info = output
    ctx.ridge, ctx.relative = ridge, relative
    ctx.save_for_backward(z, factor, c)
    ctx.mark_non_differentiable(factor, cond, info)


def _fit_backward(ctx, g_c, g_factor, g_cond, g_info):
    z, factor, c = ctx.saved_tensors
    g, b, t, k = z.shape
    if g_c is None:
        return None, None, None, None
    g_c = g_c.contiguous()
    x = z[:, :, :-1].reshape(g, b * (t - 1), k)
    y = z[:, :, 1:].reshape(g, b * (t - 1), k)
    s = torch.cholesky_solve(g_c, factor)  # A^-1 gC with A = X^T X + lam I
    # a failed factorization (C replaced by the lstsq fallback, so g_c = 0 there) must not leak NaN
    ok = torch.isfinite(factor).all(-1).all(-1)
    s = torch.where(ok[:, None, None], s, torch.zeros_like(s))
    sct = s @ c.mT
    gx = y @ s.mT - x @ (sct + sct.mT)
    if ctx.relative:  # lam = ridge * tr(X^T X) / k also depends on X
        scale = torch.diagonal(x.mT @ x, dim1=-2, dim2=-1).sum(-1) / k
        live = (scale > torch.finfo(z.dtype).tiny).to(z.dtype)
        coef = -2.0 * ctx.ridge / k * sct.diagonal(dim1=-2, dim2=-1).sum(-1) * live
        gx = gx + coef[:, None, None] * x
    gy = x @ s
    gz = torch.zeros_like(z)
    gz[:, :, :-1] += gx.reshape(g, b, t - 1, k)
    gz[:, :, 1:] += gy.reshape(g, b, t - 1, k)
    return gz, None, None, None


_koopman_fit.register_autograd(_fit_backward, setup_context=_fit_setup)


class _FitCpp(torch.autograd.Function):
    """The C++ fit outside the op registry (eager mode): the same forward and backward as
    ``fastorals::koopman_fit`` with cpp=True, without the registered op's dispatch."""

    @staticmethod
    def forward(ctx, z, ridge, relative):
        out = _fit_cpp(z, ridge, relative)
        _fit_setup(ctx, (z, ridge, relative, True), out)
        return out

    @staticmethod
    def backward(ctx, g_c, g_factor, g_cond, g_info):
        return _fit_backward(ctx, g_c, g_factor, g_cond, g_info)[:3]


def koopman_fit(z: torch.Tensor, ridge: float, relative: bool = True, cpp: bool = False):
    """Launcher: (G, B, T, k) latents -> (C, Cholesky factor, condition estimate, info).

    ``cpp``: the fused C++ fit (CPU, float32/float64) instead of the PyTorch ops; in eager mode it
    is called through a plain autograd function (tens of microseconds less than the registered op),
    under ``torch.compile`` through the op. Its condition estimate is +inf wherever the
    factorization failed or C is not finite.

    ``info`` is 0 where the factorization succeeded (``torch.linalg.cholesky_ex`` convention);
    the condition estimate ``(max diag L / min diag L)^2`` is a lower bound of cond(X^T X + ridge).
    """
    z = z.contiguous()
    if cpp and not torch.compiler.is_compiling() and z.device.type == "cpu" and _ext.ext_topic("koopman_fit"):
        return _FitCpp.apply(z, float(ridge), bool(relative))
    return _koopman_fit(z, float(ridge), bool(relative), bool(cpp))


# ------------------------------------------------------------------------------ spectral terms

_SPECTRAL_OUT = ("static_loss", "dynamic_loss", "grad_static", "grad_dynamic", "mask", "comp", "nstatic")


def _spectral_fake(ev, num_static, static_mode, dynamic_mode, dynamic_threshold, ball_radius, eigs_threshold):
    m, k, _ = ev.shape
    return (ev.new_empty(m), ev.new_empty(m), ev.new_empty(m, k, 2), ev.new_empty(m, k, 2),
            ev.new_empty(m, k, dtype=torch.bool), ev.new_empty(m, k, dtype=torch.int64),
            ev.new_empty(m, dtype=torch.int64))


def _spectral_setup(ctx, inputs, output):
    sl, dl, gs, gd, mask, comp, ns = output
    ctx.save_for_backward(gs, gd)
    ctx.mark_non_differentiable(gs, gd, mask, comp, ns)


def _spectral_backward(ctx, g_sl, g_dl, *unused):
    gs, gd = ctx.saved_tensors
    grad = torch.zeros_like(gs)
    if g_sl is not None:
        grad = grad + g_sl[:, None, None] * gs
    if g_dl is not None:
        grad = grad + g_dl[:, None, None] * gd
    return grad, None, None, None, None, None, None


@torch.library.custom_op("fastorals::koopman_spectral", mutates_args=(), device_types="cpu")
def _spectral_cpp(ev: torch.Tensor, num_static: int, static_mode: int, dynamic_mode: int,
                  dynamic_threshold: float, ball_radius: float, eigs_threshold: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor]:
    mod = _ext.ext_topic("koopman")
    if mod is None:
        raise _ext.BackendUnavailableError(f"spectral_terms: the C++ extension is not available ({_ext.EXT_ERROR})")
    ev = ev.contiguous()
    m, k, _ = ev.shape
    out = _spectral_fake(ev, num_static, static_mode, dynamic_mode, dynamic_threshold, ball_radius, eigs_threshold)
    sl, dl, gs, gd, mask, comp, ns = out
    mod.spectral_terms(ev.numpy(), int(num_static), int(static_mode), int(dynamic_mode), float(dynamic_threshold),
                       float(ball_radius), float(eigs_threshold), sl.numpy(), dl.numpy(), gs.numpy(), gd.numpy(),
                       mask.numpy(), comp.numpy(), ns.numpy(), torch.get_num_threads())
    return out


_spectral_cpp.register_fake(_spectral_fake)
_spectral_cpp.register_autograd(_spectral_backward, setup_context=_spectral_setup)


def spectral_outputs_torch(ev: torch.Tensor, num_static: int, static_mode: int, dynamic_mode: int,
                           dynamic_threshold: float, ball_radius: float, eigs_threshold: float):
    """Vectorized PyTorch version of the fused split + penalties (no host synchronization).

    Pairwise (k x k) comparisons per matrix, the same rules as the C++ and Triton kernels.
    """
    m, k, _ = ev.shape
    re, im = ev[..., 0], ev[..., 1]
    dev = ev.device
    idx = torch.arange(k, device=dev)
    re_i, re_j = re[:, :, None], re[:, None, :]
    im_i, im_j = im[:, :, None], im[:, None, :]
    earlier = idx[None, :] < idx[:, None]  # [i, j]: j < i
    same = (re_j == re_i) & (im_j == im_i)
    dup = (same & earlier).sum(-1)
    cand = (re_j == re_i) & (im_j == -im_i) & (im_i > 0) & (dup[:, None, :] == dup[:, :, None])
    big = torch.full((), k, device=dev, dtype=torch.long)
    p_plus = torch.where(cand, idx, big).amin(-1)  # partner of a positive-imaginary eigenvalue
    hit = p_plus[:, :, None] == idx[None, None, :]  # [i, j]: i's partner is j
    p_minus = torch.where(hit, idx[None, :, None], big).amin(1)  # partner of j (negative imaginary)
    partner = torch.where(im > 0, p_plus, p_minus)
    comp = torch.minimum(partner, idx.expand(m, k))
    if static_mode == 0:
        key = (re - 1) * (re - 1) + im * im
    elif static_mode == 1:
        key = -(re * re + im * im)
    else:
        key = -re
    rep = comp == idx
    key_i, key_j = key[:, :, None], key[:, None, :]
    comp_i, comp_j = comp[:, :, None], comp[:, None, :]
    before = rep[:, None, :] & ((key_j < key_i) | ((key_j == key_i) & (comp_j < comp_i)))
    rank = before.sum(-1)
    mask = rank < num_static
    ns = mask.sum(-1)
    nd = k - ns
    inv_s = torch.where(ns > 0, 1.0 / ns.clamp_min(1).to(ev.dtype), torch.zeros((), dtype=ev.dtype, device=dev))
    inv_d = torch.where(nd > 0, 1.0 / nd.clamp_min(1).to(ev.dtype), torch.zeros((), dtype=ev.dtype, device=dev))
    zero = torch.zeros_like(re)
    if static_mode == 0:
        s_term, s_gr, s_gi = (re - 1) ** 2 + im**2, 2 * (re - 1), 2 * im
    elif static_mode == 1:
        n = re * re + im * im - 1
        s_term, s_gr, s_gi = n * n, 4 * n * re, 4 * n * im
    else:
        s_term, s_gr, s_gi = (re - 1) ** 2, 2 * (re - 1), zero
    if dynamic_mode == 1:
        on = re > dynamic_threshold
        d_term, d_gr, d_gi = torch.where(on, re, zero), on.to(ev.dtype), zero
    elif dynamic_mode == 2:
        dist = torch.sqrt((re - 1) ** 2 + im**2)
        on = dist < ball_radius
        safe = torch.where(dist > 0, dist, torch.ones_like(dist))
        live = on & (dist > 0)
        d_term = torch.where(on, 2 - dist, zero)
        d_gr = torch.where(live, -(re - 1) / safe, zero)
        d_gi = torch.where(live, -im / safe, zero)
    elif dynamic_mode == 3:
        n = re * re + im * im
        on = n > dynamic_threshold
        d_term, d_gr, d_gi = torch.where(on, n, zero), torch.where(on, 2 * re, zero), torch.where(on, 2 * im, zero)
    elif dynamic_mode == 4:
        n = re * re + im * im - eigs_threshold**2
        d_term, d_gr, d_gi = n * n, 4 * n * re, 4 * n * im
    else:
        d_term = d_gr = d_gi = zero
    fm = mask.to(ev.dtype)
    fd = 1 - fm
    sl = (s_term * fm).sum(-1) * inv_s
    dl = (d_term * fd).sum(-1) * inv_d
    gs = torch.stack([s_gr * fm, s_gi * fm], -1) * inv_s[:, None, None]
    gd = torch.stack([d_gr * fd, d_gi * fd], -1) * inv_d[:, None, None]
    return sl, dl, gs, gd, mask, comp, ns


@torch.library.custom_op("fastorals::koopman_spectral_torch", mutates_args=())
def _spectral_torch(ev: torch.Tensor, num_static: int, static_mode: int, dynamic_mode: int,
                    dynamic_threshold: float, ball_radius: float, eigs_threshold: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    return spectral_outputs_torch(ev.contiguous(), num_static, static_mode, dynamic_mode, dynamic_threshold,
                                  ball_radius, eigs_threshold)


_spectral_torch.register_fake(_spectral_fake)
_spectral_torch.register_autograd(_spectral_backward, setup_context=_spectral_setup)


def register_triton_autograd(op) -> None:
    """Give the Triton op (defined lazily in triton.py) the shared autograd formula."""
    op.register_autograd(_spectral_backward, setup_context=_spectral_setup)


def spectral_terms(ev: torch.Tensor, num_static: int, static_mode: str, dynamic_mode: str,
                   dynamic_threshold: float, ball_radius: float, eigs_threshold: float, backend: str):
    """Launcher: real view (M, k, 2) of the eigenvalues -> the 7 fused outputs (see ``_SPECTRAL_OUT``)."""
    args = (int(num_static), STATIC_MODES.index(static_mode), DYNAMIC_MODES.index(dynamic_mode),
            float(dynamic_threshold), float(ball_radius), float(eigs_threshold))
    ev = ev.contiguous()
    if backend == "cpp":
        return _spectral_cpp(ev, *args)
    if backend == "torch":
        return _spectral_torch(ev, *args)
    if backend == "triton":
        from .triton import spectral_terms_triton

        return spectral_terms_triton(ev, *args)
    raise ValueError(f"backend: expected 'cpp', 'torch' or 'triton', got {backend!r}")
