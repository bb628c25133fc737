"""Functional API of SKD: Koopman fit, spectral loss, static/dynamic split, swaps, factor assignment.

Shapes follow the paper's row-vector convention: latent sequences ``z`` (B, T, k) evolve as
``z[:, t + 1] ~= z[:, t] @ C``; with ``C = V diag(lam) V^-1`` the Koopman coordinates of a
sequence are ``phi = z @ V`` and ``z = Re(phi @ V^-1)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Union

import torch

from .. import _ext
from . import ops
from .reference import (
    DYNAMIC_MODES,
    STATIC_MODES,
    fit_koopman_reference,
    spectral_terms_reference,
)

__all__ = [
    "VARIANTS",
    "FactorAssignment",
    "KoopmanDecomposition",
    "KoopmanFit",
    "KoopmanFitWarning",
    "SpectralLoss",
    "StaticSplit",
    "assign_factors",
    "eigenvalue_loss",
    "fit_koopman",
    "koopman_decompose",
    "spectral_loss",
    "static_dynamic_split",
    "swap",
]

#: Published spectral-loss variants: name -> (static_mode, dynamic_mode).
#: "paper": |lam - 1|^2 on the static eigenvalues, Re(lam) > 0.5 penalized on the dynamic ones
#: (the paper and the training script's defaults). "released": (|lam|^2 - 1)^2 on the static ones,
#: 2 - |lam - 1| inside the radius 0.6 on the dynamic ones (the released checkpoint's settings).
VARIANTS: dict[str, tuple[str, str]] = {"paper": ("ball", "real"), "released": ("norm", "ball")}

_FLOATS = (torch.float32, torch.float64)


class KoopmanFitWarning(UserWarning):
    """The normal equations were ill-conditioned and the fit fell back to least squares (lstsq)."""


# ------------------------------------------------------------------------------ validation


def _check_latents(z: torch.Tensor, name: str = "z", *, check_finite: bool = True) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(z).__name__}")
    if not z.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got {z.dtype}")
    if z.dim() < 3:
        raise ValueError(f"{name}: expected shape (..., B, T, k) with at least 3 dimensions, got {tuple(z.shape)}")
    b, t, k = z.shape[-3:]
    if t < 2:
        raise ValueError(f"{name}: sequences must have at least 2 time steps (T >= 2), got shape {tuple(z.shape)}")
    if b < 1 or k < 1:
        raise ValueError(f"{name}: expected B >= 1 and k >= 1, got shape {tuple(z.shape)}")
    if check_finite:
        _check_finite_latents(z, name)


def _check_finite_latents(z: torch.Tensor, name: str = "z") -> None:
    if z.numel() and not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name}: latents contain non-finite values (NaN or inf)")


def _check_square(C: torch.Tensor, name: str = "C") -> None:
    if not isinstance(C, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(C).__name__}")
    if not C.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a real floating-point tensor, got {C.dtype}")
    if C.dim() < 2 or C.shape[-1] != C.shape[-2] or C.shape[-1] < 1:
        raise ValueError(f"{name}: expected square matrices of shape (..., k, k), got {tuple(C.shape)}")
    if C.numel() and not bool(torch.isfinite(C).all()):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf)")


def _modes(variant: str, static_mode: Optional[str], dynamic_mode: Optional[str]) -> tuple[str, str]:
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
    s, d = VARIANTS[variant]
    s = static_mode if static_mode is not None else s
    d = dynamic_mode if dynamic_mode is not None else d
    if s not in STATIC_MODES:
        raise ValueError(f"static_mode: expected one of {STATIC_MODES}, got {s!r}")
    if d not in DYNAMIC_MODES:
        raise ValueError(f"dynamic_mode: expected one of {DYNAMIC_MODES}, got {d!r}")
    return s, d


def _check_num_static(num_static: int) -> None:
    if isinstance(num_static, bool) or not isinstance(num_static, int) or num_static < 0:
        raise ValueError(f"num_static: expected an int >= 0 (number of static components), got {num_static!r}")


# ------------------------------------------------------------------------------ Koopman fit


class KoopmanFit(NamedTuple):
    """Result of :func:`fit_koopman`.

    Attributes:
        C: (..., k, k) Koopman matrix, ``z[..., t + 1, :] ~= z[..., t, :] @ C``.
        z_pred: (..., B, T, k) prediction: frame 0 copied, frames 1.. = ``z[..., :-1, :] @ C``.
        ill_conditioned: (...,) bool tensor on the input's device: the Cholesky path failed or its
            condition estimate exceeded ``cond_limit``. Never read on the host unless the fallback ran.
        used_lstsq: True when the returned C comes from the lstsq fallback (for any group).
        cond: (...,) condition estimate of the regularized Gram matrix (a lower bound).
    """

    C: torch.Tensor
    z_pred: torch.Tensor
    ill_conditioned: torch.Tensor
    used_lstsq: bool
    cond: torch.Tensor


def _lstsq(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":
        return torch.linalg.lstsq(x, y, driver="gelsd").solution  # SVD: rank-deficient safe, min-norm
    return torch.linalg.pinv(x) @ y  # CUDA lstsq only has 'gels' (full rank); pinv is SVD-based


def fit_koopman(
    z: torch.Tensor,
    *,
    ridge: Optional[float] = None,
    relative_ridge: bool = True,
    fallback: str = "auto",
    cond_limit: Optional[float] = None,
    check_finite: bool = True,
) -> KoopmanFit:
    """Least-squares Koopman matrix of a batch of latent sequences, and its one-step prediction.

    Solves ``C = argmin ||X C - Y||`` with ``X = z[..., :, :-1, :]`` and ``Y = z[..., :, 1:, :]``
    stacked over the batch (one C per leading index), by the normal equations: ``X^T X + ridge``
    is factored with ``torch.linalg.cholesky_ex`` (no host synchronization on any device) and C
    follows from two triangular solves. The backward pass is closed-form (one more solve).

    When the factorization fails or the condition estimate ``(max diag L / min diag L)^2``
    exceeds ``cond_limit``, ``fallback="lstsq"`` re-solves with an SVD-based least squares and
    emits a :class:`KoopmanFitWarning`. That check reads a flag on the host, so on CUDA the
    default ``fallback="auto"`` skips it (no synchronization) and returns the flag in
    ``ill_conditioned`` instead; on CPU "auto" means "lstsq".

    Args:
        z: (B, T, k) or (..., B, T, k) latent sequences, T >= 2; float32/float64 (float16 and
            bfloat16 are computed in float32).
        ridge: ridge added to the diagonal of ``X^T X``; with ``relative_ridge`` it is relative to
            ``trace(X^T X) / k``. Default: ``10 * eps`` of the dtype (relative).
        relative_ridge: interpret ``ridge`` relative to the mean diagonal of ``X^T X``.
        fallback: "auto", "lstsq" (check, and re-solve when ill-conditioned) or "none".
        cond_limit: condition estimate above which the normal equations are deemed inaccurate.
            Default: ``0.01 / eps`` (about 8e4 in float32, 4.5e13 in float64).
        check_finite: raise on NaN/inf latents (a host synchronization on CUDA).

    Returns:
        :class:`KoopmanFit` ``(C, z_pred, ill_conditioned, used_lstsq, cond)``.

    Raises:
        ValueError: fewer than 2 time steps, fewer than 3 dimensions, non-finite latents, bad options.
        TypeError: non-floating latents.

    Example:
        >>> z = torch.randn(32, 8, 40)
        >>> fit = fit_koopman(z)
        >>> fit.C.shape, fit.z_pred.shape
        (torch.Size([40, 40]), torch.Size([32, 8, 40]))
    """
    _check_latents(z, check_finite=False)
    if fallback not in ("auto", "lstsq", "none"):
        raise ValueError(f"fallback: expected 'auto', 'lstsq' or 'none', got {fallback!r}")
    if ridge is not None and not (ridge >= 0):
        raise ValueError(f"ridge: expected a number >= 0, got {ridge!r}")
    orig_dtype = z.dtype
    zc = z if z.dtype in _FLOATS else z.float()
    eps = torch.finfo(zc.dtype).eps
    ridge_v = 10 * eps if ridge is None else float(ridge)
    limit = 0.01 / eps if cond_limit is None else float(cond_limit)
    *lead, b, t, k = zc.shape
    backend = _ext.select_backend("fit_koopman", zc.device, ("cpp", "torch", "reference"))
    if backend == "cpp" and k > ops.CPP_FIT_MAX_K and _ext.requested_backend() == "auto":
        backend = "torch"  # above this size LAPACK's blocked kernels win
    if check_finite and backend != "cpp":
        _check_finite_latents(z)
    z4 = zc.reshape(-1, b, t, k)
    if backend == "reference":
        c4, _ = fit_koopman_reference(z4)
        cond = torch.ones(z4.shape[0], dtype=zc.dtype, device=zc.device)
        bad = ~torch.isfinite(c4).all(-1).all(-1)
        used = True
    else:
        c4, _, cond, info = ops.koopman_fit(z4, ridge_v, relative_ridge, cpp=backend == "cpp")
        if backend == "cpp":  # its condition estimate is +inf for a failed or non-finite fit
            bad = ~(cond <= limit)
        else:
            bad = (info != 0) | ~(cond <= limit) | ~torch.isfinite(c4).all(-1).all(-1)
        used = False
        mode = fallback if fallback != "auto" else ("lstsq" if zc.device.type == "cpu" else "none")
        any_bad = bool(bad.any()) if backend == "cpp" or mode == "lstsq" else False
        if backend == "cpp" and check_finite and any_bad:
            # non-finite latents always make a C++ fit bad (NaN/inf reach the Gram or C), so the
            # check only runs here: the same error as the other backends, found later
            _check_finite_latents(z)
        if mode == "lstsq" and any_bad:
            x = z4[:, :, :-1].reshape(z4.shape[0], -1, k)
            y = z4[:, :, 1:].reshape(z4.shape[0], -1, k)
            c_ls = _lstsq(x, y)
            c4 = torch.where(bad[:, None, None], c_ls, c4)
            used = True
            warnings.warn(
                KoopmanFitWarning(
                    f"fit_koopman: normal equations ill-conditioned for {int(bad.sum())} of {bad.numel()} "
                    f"fit(s) (condition estimate {float(cond.max()):.3g} > cond_limit {limit:.3g}, or Cholesky "
                    f"failed; {b * (t - 1)} rows for k={k}); fell back to SVD least squares"),
                stacklevel=2)
    pred = torch.cat([z4[:, :, :1], z4[:, :, :-1] @ c4[:, None]], dim=2)
    C = c4.reshape(*lead, k, k)
    z_pred = pred.reshape(*lead, b, t, k)
    if orig_dtype not in _FLOATS:
        z_pred = z_pred.to(orig_dtype)
    return KoopmanFit(C, z_pred, bad.reshape(lead), used, cond.reshape(lead))


# ------------------------------------------------------------------------------ spectral terms


class SpectralLoss(NamedTuple):
    """Detailed result of :func:`spectral_loss` / :func:`eigenvalue_loss`.

    Attributes:
        loss: static + dynamic, reduced (scalar unless ``reduction="none"``).
        static: static term, same reduction.
        dynamic: dynamic term, same reduction.
        eigvals: (..., k) complex eigenvalues.
        static_mask: (..., k) bool, True for static eigenvalues.
        components: (..., k) int64 component id (conjugate pairs share one: the smaller index).
        num_static_eigvals: (...,) int64 number of static eigenvalues (pairs count twice).
    """

    loss: torch.Tensor
    static: torch.Tensor
    dynamic: torch.Tensor
    eigvals: torch.Tensor
    static_mask: torch.Tensor
    components: torch.Tensor
    num_static_eigvals: torch.Tensor


def _spectral_backend(device: torch.device, k: int) -> str:
    # only consider Triton (and import it) for CUDA tensors or when it is asked for explicitly
    wants_triton = device.type == "cuda" or _ext.requested_backend() == "triton"
    impl = ("triton", "cpp", "torch", "reference") if wants_triton else ("cpp", "torch", "reference")
    be = _ext.select_backend("spectral_loss", device, impl)
    if be == "triton" and k > 256:
        if _ext.requested_backend() == "triton":
            raise _ext.BackendUnavailableError(f"spectral_loss: the Triton kernel supports k <= 256, got k={k}")
        be = "torch"
    return be


def _terms(eigvals: torch.Tensor, num_static: int, static_mode: str, dynamic_mode: str, dynamic_threshold: float,
           ball_radius: float, eigs_threshold: float):
    *lead, k = eigvals.shape
    be = _spectral_backend(eigvals.device, k)
    if be == "reference":
        flat = eigvals.reshape(-1, k)
        s, d, mask = spectral_terms_reference(flat, num_static, static_mode, dynamic_mode, dynamic_threshold,
                                              ball_radius, eigs_threshold)
        from .reference import components_reference

        comp = torch.tensor([components_reference(row) for row in flat.detach()], dtype=torch.long,
                            device=eigvals.device).reshape(-1, k)
        ns = mask.sum(-1)
    else:
        ev = torch.view_as_real(eigvals.reshape(-1, k))
        s, d, _, _, mask, comp, ns = ops.spectral_terms(ev, num_static, static_mode, dynamic_mode,
                                                        dynamic_threshold, ball_radius, eigs_threshold, be)
    return (s.reshape(lead), d.reshape(lead), mask.reshape(*lead, k), comp.reshape(*lead, k), ns.reshape(lead))


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def eigenvalue_loss(
    eigvals: torch.Tensor,
    num_static: int = 7,
    variant: str = "paper",
    *,
    static_mode: Optional[str] = None,
    dynamic_mode: Optional[str] = None,
    dynamic_threshold: float = 0.5,
    ball_radius: float = 0.6,
    eigs_threshold: float = 0.5,
    reduction: str = "mean",
    return_details: bool = False,
    check_finite: bool = True,
) -> Union[torch.Tensor, SpectralLoss]:
    """SKD spectral penalty of given eigenvalues (see :func:`spectral_loss`).

    Args:
        eigvals: (..., k) complex eigenvalues of real matrices (conjugates exact, as returned by
            ``torch.linalg.eig``), differentiable.
        check_finite: raise on NaN/inf eigenvalues (reads a flag on the host; pass False on CUDA
            to keep the call free of host synchronization).
        Other arguments: as :func:`spectral_loss`.

    Returns:
        The reduced loss, or a :class:`SpectralLoss` when ``return_details``.
    """
    if not isinstance(eigvals, torch.Tensor) or not eigvals.is_complex():
        raise TypeError(f"eigvals: expected a complex tensor, got {getattr(eigvals, 'dtype', type(eigvals))}")
    if eigvals.dim() < 1 or eigvals.shape[-1] < 1:
        raise ValueError(f"eigvals: expected shape (..., k) with k >= 1, got {tuple(eigvals.shape)}")
    if eigvals.dtype == torch.complex32:  # no kernel reads half complex: computed in complex64 (loss float32)
        eigvals = eigvals.to(torch.complex64)
    if check_finite and not bool(torch.isfinite(torch.view_as_real(eigvals.detach())).all()):
        raise ValueError("eigvals: contains non-finite values (NaN or inf)")
    _check_num_static(num_static)
    sm, dm = _modes(variant, static_mode, dynamic_mode)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    for name, v in (("dynamic_threshold", dynamic_threshold), ("ball_radius", ball_radius),
                    ("eigs_threshold", eigs_threshold)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    s, d, mask, comp, ns = _terms(eigvals, num_static, sm, dm, dynamic_threshold, ball_radius, eigs_threshold)
    loss = _reduce(s + d, reduction)
    if not return_details:
        return loss
    return SpectralLoss(loss, _reduce(s, reduction), _reduce(d, reduction), eigvals, mask, comp, ns)


def spectral_loss(
    C: torch.Tensor,
    num_static: int = 7,
    variant: str = "paper",
    *,
    static_mode: Optional[str] = None,
    dynamic_mode: Optional[str] = None,
    dynamic_threshold: float = 0.5,
    ball_radius: float = 0.6,
    eigs_threshold: float = 0.5,
    reduction: str = "mean",
    return_details: bool = False,
) -> Union[torch.Tensor, SpectralLoss]:
    """SKD spectral loss ``L_eig`` of Koopman matrices: structure the spectrum into static and dynamic parts.

    The eigenvalues of C are split into ``num_static`` static components nearest to 1 (by the
    static criterion; a complex-conjugate pair counts as one component and is never split) and
    the dynamic rest. ``L_eig = static term + dynamic term``:

    ============  ==========================================================================
    static_mode   "ball": mean |lam - 1|^2;  "norm": mean (|lam|^2 - 1)^2;  "real": mean (Re lam - 1)^2
    dynamic_mode  "real": mean of Re lam where Re lam > dynamic_threshold (else 0);
                  "ball": mean of 2 - |lam - 1| where |lam - 1| < ball_radius (else 0);
                  "thresh": mean of |lam|^2 where |lam|^2 > dynamic_threshold;
                  "strict": mean (|lam|^2 - eigs_threshold^2)^2;  "none": 0
    ============  ==========================================================================

    ``variant`` picks the published pair: "paper" = ("ball", "real"), "released" = ("norm", "ball");
    ``static_mode`` / ``dynamic_mode`` override it.

    Gradients flow through ``torch.linalg.eig``: for a loss of the eigenvalues only, the
    gradient is ``Re(V^-H diag(dL/dlam) V^H)``, finite whenever C is diagonalizable, also with
    repeated eigenvalues (no ``1/(lam_i - lam_j)`` terms). At a defective C (Jordan block) the
    eigenvalues are not differentiable and the gradient is unbounded. When the static/dynamic
    boundary falls inside a cluster of exactly equal eigenvalues the loss is not differentiable;
    the gradient is that of the split LAPACK's ordering gives. Where ``|lam - 1| = 0`` the
    "ball" dynamic term uses the subgradient 0.

    Args:
        C: (k, k) or (..., k, k) real Koopman matrices.
        num_static: number of static components (official default 7; a pair counts once).
        variant: "paper" or "released".
        static_mode: override: "ball", "norm" or "real".
        dynamic_mode: override: "real", "ball", "thresh", "strict" or "none".
        dynamic_threshold: threshold of the "real" and "thresh" dynamic terms (0.5).
        ball_radius: radius of the "ball" dynamic term (0.6).
        eigs_threshold: target modulus of the "strict" dynamic term (0.5).
        reduction: "mean" (over matrices), "sum" or "none".
        return_details: return a :class:`SpectralLoss` with the split and both terms.

    Returns:
        The reduced loss (a scalar for "mean"/"sum"), or a :class:`SpectralLoss`.

    Example:
        >>> C = torch.randn(40, 40, requires_grad=True)
        >>> loss = spectral_loss(C, num_static=7)            # paper variant
        >>> loss.backward()
    """
    _check_square(C)
    eigvals = torch.linalg.eigvals(C)
    return eigenvalue_loss(eigvals, num_static, variant, static_mode=static_mode, dynamic_mode=dynamic_mode,
                           dynamic_threshold=dynamic_threshold, ball_radius=ball_radius,
                           eigs_threshold=eigs_threshold, reduction=reduction, return_details=return_details)


class StaticSplit(NamedTuple):
    """Conjugate-pair-aware static/dynamic split of eigenvalues.

    Attributes:
        static_mask: (..., k) bool, True for static eigenvalues.
        components: (..., k) int64 component id (smallest member index; conjugates share it).
        num_static_eigvals: (...,) int64 static eigenvalue count.
    """

    static_mask: torch.Tensor
    components: torch.Tensor
    num_static_eigvals: torch.Tensor


def static_dynamic_split(eigvals: torch.Tensor, num_static: int, criterion: str = "ball") -> StaticSplit:
    """Split eigenvalues into ``num_static`` static components (nearest 1) and the dynamic rest.

    Args:
        eigvals: (..., k) complex eigenvalues of real matrices.
        num_static: static components; a complex-conjugate pair counts as one and is never split.
        criterion: "ball" (nearest to 1), "norm" (largest modulus) or "real" (largest real part).

    Returns:
        :class:`StaticSplit`.

    Example:
        >>> lam = torch.linalg.eigvals(torch.randn(40, 40))
        >>> split = static_dynamic_split(lam, 7)
    """
    if not isinstance(eigvals, torch.Tensor) or not eigvals.is_complex():
        raise TypeError(f"eigvals: expected a complex tensor, got {getattr(eigvals, 'dtype', type(eigvals))}")
    if eigvals.dim() < 1 or eigvals.shape[-1] < 1:
        raise ValueError(f"eigvals: expected shape (..., k) with k >= 1, got {tuple(eigvals.shape)}")
    _check_num_static(num_static)
    if criterion not in STATIC_MODES:
        raise ValueError(f"criterion: expected one of {STATIC_MODES}, got {criterion!r}")
    with torch.no_grad():
        _, _, mask, comp, ns = _terms(eigvals.detach(), num_static, criterion, "none", 0.0, 0.0, 0.0)
    return StaticSplit(mask, comp, ns)


# ------------------------------------------------------------------------------ decomposition, swaps

Which = Union[str, Sequence[Union[str, int]], torch.Tensor]


@dataclass
class KoopmanDecomposition:
    """Eigendecomposition of a Koopman matrix with its static/dynamic split, for swaps.

    Attributes:
        C: (k, k) real Koopman matrix.
        eigvals: (k,) complex eigenvalues.
        V: (k, k) complex right eigenvectors (columns): ``C = V diag(eigvals) V^-1``.
        V_inv: (k, k) complex inverse of V.
        static_mask: (k,) bool.
        components: (k,) int64 component id (conjugate pairs share one).
        factors: factor name -> (n,) int64 eigen-indices (closed under conjugation); filled by
            :func:`assign_factors` or by hand.
        eigvec_condition: 2-norm condition number of V (large: C is close to defective and
            swaps become unreliable).
    """

    C: torch.Tensor
    eigvals: torch.Tensor
    V: torch.Tensor
    V_inv: torch.Tensor
    static_mask: torch.Tensor
    components: torch.Tensor
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    eigvec_condition: float = float("nan")

    @property
    def k(self) -> int:
        return int(self.C.shape[-1])

    @property
    def static_indices(self) -> torch.Tensor:
        return torch.nonzero(self.static_mask).flatten()

    @property
    def dynamic_indices(self) -> torch.Tensor:
        return torch.nonzero(~self.static_mask).flatten()

    def component_members(self, subset: str = "static") -> list[torch.Tensor]:
        """Members of each component in ``subset`` ("static", "dynamic" or "all"), ordered by id."""
        if subset not in ("static", "dynamic", "all"):
            raise ValueError(f"subset: expected 'static', 'dynamic' or 'all', got {subset!r}")
        keep = {"static": self.static_mask, "dynamic": ~self.static_mask,
                "all": torch.ones_like(self.static_mask)}[subset]
        ids = sorted({int(c) for c, m in zip(self.components.tolist(), keep.tolist()) if m})
        comp = self.components
        return [torch.nonzero(comp == c).flatten() for c in ids]

    def indices(self, which: Which) -> torch.Tensor:
        """Eigen-indices selected by ``which``, closed under conjugation (sorted, unique).

        ``which``: "static", "dynamic", a factor name, or a sequence of factor names and/or
        eigen-indices (an incremental multifactor swap), or an index tensor.
        """
        k = self.k
        if isinstance(which, str):
            items: list[Union[str, int]] = [which]
        elif isinstance(which, torch.Tensor):
            if which.dtype == torch.bool:
                if which.shape != (k,):
                    raise ValueError(f"which: a boolean mask must have shape ({k},), got {tuple(which.shape)}")
                which = torch.nonzero(which).flatten()
            items = [int(i) for i in which.flatten().tolist()]
        elif isinstance(which, Iterable):
            items = list(which)
        else:
            raise TypeError(f"which: expected 'static', 'dynamic', a factor name, indices or a list of them, got {which!r}")
        sel = torch.zeros(k, dtype=torch.bool)
        for it in items:
            if isinstance(it, str):
                if it == "static":
                    sel |= self.static_mask.cpu()
                elif it == "dynamic":
                    sel |= ~self.static_mask.cpu()
                elif it in self.factors:
                    sel[self.factors[it].cpu()] = True
                else:
                    known = ["static", "dynamic", *self.factors]
                    raise ValueError(f"which: unknown factor {it!r}; known: {known}")
            elif isinstance(it, (int,)) and not isinstance(it, bool):
                if not -k <= it < k:
                    raise ValueError(f"which: eigen-index {it} out of range for k={k}")
                sel[it % k] = True
            else:
                raise TypeError(f"which: expected factor names or ints, got {it!r}")
        comp = self.components.cpu()
        closed = torch.isin(comp, comp[sel])
        return torch.nonzero(closed).flatten().to(self.C.device)

    def coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """Koopman coordinates ``phi = z @ V``: (..., T, k) complex."""
        self._check_z(z, "z")
        return z.to(self.V.dtype) @ self.V

    def reconstruct(self, phi: torch.Tensor, indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``Re(phi[..., I] @ V^-1[I])`` (all coordinates when ``indices`` is None): (..., T, k) real."""
        if indices is None:
            out = phi @ self.V_inv
        else:
            out = phi[..., indices] @ self.V_inv[indices]
        return out.real.to(self.C.dtype)

    def part(self, z: torch.Tensor, which: Which = "static") -> torch.Tensor:
        """The component of ``z`` spanned by the eigenvectors ``which`` (e.g. the static part)."""
        return self.reconstruct(self.coordinates(z), self.indices(which))

    def _check_z(self, z: torch.Tensor, name: str) -> None:
        if not isinstance(z, torch.Tensor) or not z.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor")
        if z.dim() < 1 or z.shape[-1] != self.k:
            raise ValueError(f"{name}: latent size k mismatch: expected (..., T, {self.k}), got {tuple(z.shape)}")


def koopman_decompose(C: torch.Tensor, num_static: int = 7, criterion: str = "ball") -> KoopmanDecomposition:
    """Eigendecomposition + conjugate-pair-aware static/dynamic split of one Koopman matrix.

    Args:
        C: (k, k) real Koopman matrix (e.g. ``fit_koopman(z).C`` of a large batch).
        num_static: static components (a conjugate pair counts once).
        criterion: "ball", "norm" or "real" (as the static term of the loss).

    Returns:
        :class:`KoopmanDecomposition`.

    Example:
        >>> dec = koopman_decompose(fit_koopman(z).C.detach(), num_static=7)
        >>> z_new = swap(z1, z2, dec, "static")    # dynamics of z1, static factors of z2
    """
    _check_square(C)
    if C.dim() != 2:
        raise ValueError(f"C: expected one (k, k) matrix, got shape {tuple(C.shape)}")
    C = C.detach()
    lam, V = torch.linalg.eig(C)
    s = torch.linalg.svdvals(V)
    cond = float(s.max() / s.min()) if float(s.min()) > 0 else float("inf")
    V_inv, info = torch.linalg.inv_ex(V)
    if int(info) != 0 or not math.isfinite(cond) or not bool(torch.isfinite(torch.view_as_real(V_inv)).all()):
        raise ValueError(f"C: is defective (its eigenvectors do not span the latent space; condition of V = {cond:g}), "
                         "so it has no eigendecomposition to split; latents with constant or duplicated channels "
                         "give such a C: fit it on a larger or more varied batch, or add ridge to fit_koopman")
    split = static_dynamic_split(lam, num_static, criterion)
    return KoopmanDecomposition(C, lam, V, V_inv, split.static_mask, split.components, {}, cond)


def swap(z: torch.Tensor, z_donor: torch.Tensor, decomposition: KoopmanDecomposition, which: Which = "static"
         ) -> torch.Tensor:
    """Replace the Koopman coordinates ``which`` of ``z`` by those of ``z_donor``.

    ``which="static"`` gives the dynamics of ``z`` with the static factors of ``z_donor``;
    ``"dynamic"`` the reverse; a factor name (after :func:`assign_factors`) or a list of them
    swaps single factors or an incremental set. Index sets are closed under conjugation so the
    result is real.

    Args:
        z: (..., T, k) latent sequences.
        z_donor: latents broadcastable to ``z`` (e.g. (N, T, k), or (N, 1, k) for a static code).
        decomposition: from :func:`koopman_decompose`.
        which: "static", "dynamic", factor name(s), eigen-indices, or a mix (see
            :meth:`KoopmanDecomposition.indices`).

    Returns:
        (..., T, k) real latents; decode them with the model's decoder.

    Example:
        >>> x_new = model.decode(swap(model.encode(x1), model.encode(x2), dec, "static"))
    """
    if not isinstance(decomposition, KoopmanDecomposition):
        raise TypeError(f"decomposition: expected a KoopmanDecomposition, got {type(decomposition).__name__}")
    decomposition._check_z(z, "z")
    decomposition._check_z(z_donor, "z_donor")
    try:
        shape = torch.broadcast_shapes(z.shape, z_donor.shape)
    except RuntimeError:
        shape = None
    if shape != z.shape:
        raise ValueError(f"z_donor: expected a shape broadcastable to z {tuple(z.shape)} (e.g. the same (N, T, k), "
                         f"or (N, 1, k)), got {tuple(z_donor.shape)}")
    for name, t in (("z", z), ("z_donor", z_donor)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: latents contain NaN or inf")
    idx = decomposition.indices(which)
    phi = decomposition.coordinates(z)
    phi_d = decomposition.coordinates(z_donor)
    phi, phi_d = torch.broadcast_tensors(phi, phi_d)
    out = phi.clone()
    out[..., idx] = phi_d[..., idx]
    return decomposition.reconstruct(out).to(z.dtype)


@dataclass
class FactorAssignment:
    """Result of :func:`assign_factors`.

    Attributes:
        groups: factor name -> (n,) int64 eigen-indices (closed under conjugation).
        scores: (num_components, num_factors) correlation ratio (eta^2) of each component's
            time-averaged Koopman coordinate with each factor's labels, in [0, 1].
        components: the candidate components' member indices, in the order of ``scores`` rows.
        factor_names: column names of ``scores``.
    """

    groups: dict[str, torch.Tensor]
    scores: torch.Tensor
    components: list[torch.Tensor]
    factor_names: list[str]


def _eta_squared(feat: torch.Tensor, y: torch.Tensor) -> float:
    """Correlation ratio of features (N, d) with integer labels (N,): between-class SS / total SS."""
    feat = feat - feat.mean(0)
    total = float((feat**2).sum())
    if total <= 0:
        return 0.0
    classes, inv = torch.unique(y, return_inverse=True)
    sums = torch.zeros(len(classes), feat.shape[1], dtype=feat.dtype).index_add_(0, inv, feat)
    counts = torch.bincount(inv, minlength=len(classes)).to(feat.dtype)
    between = float((sums**2 / counts[:, None]).sum())
    return between / total


def assign_factors(
    decomposition: KoopmanDecomposition,
    z: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    *,
    subset: str = "static",
    min_score: float = 0.05,
) -> FactorAssignment:
    """Assign eigenvector subsets to labelled factors (multifactor disentanglement).

    Each candidate component (a real eigenvector, or a conjugate pair) is scored against each
    factor by the correlation ratio eta^2 of its time-averaged Koopman coordinate
    ``mean_t (z @ V)[:, t, i]`` (real and imaginary parts) with the factor's labels; the
    component goes to the factor with the highest score when that score is >= ``min_score``.
    The result is stored in ``decomposition.factors`` and returned.

    Args:
        decomposition: from :func:`koopman_decompose`.
        z: (N, T, k) latents of labelled sequences.
        labels: factor name -> (N,) integer labels (e.g. {"skin": ..., "hair": ...}).
        subset: candidate components: "static" (default), "dynamic" or "all".
        min_score: components whose best eta^2 is below this stay unassigned.

    Returns:
        :class:`FactorAssignment`. A factor that no component explains gets an empty group.

    Example:
        >>> fa = assign_factors(dec, z_test, {"skin": y[:, 0], "hair": y[:, 1]})
        >>> z_new = swap(z1, z2, dec, "hair")
    """
    if not isinstance(decomposition, KoopmanDecomposition):
        raise TypeError(f"decomposition: expected a KoopmanDecomposition, got {type(decomposition).__name__}")
    decomposition._check_z(z, "z")
    if z.dim() != 3:
        raise ValueError(f"z: expected (N, T, k), got {tuple(z.shape)}")
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError("labels: expected a non-empty mapping factor name -> (N,) integer labels")
    n = z.shape[0]
    for name, y in labels.items():
        if name in ("static", "dynamic"):
            raise ValueError(f"labels: factor name {name!r} is reserved")
        if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.shape != (n,):
            raise ValueError(f"labels[{name!r}]: expected an integer tensor of shape ({n},), got "
                             f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    comps = decomposition.component_members(subset)
    with torch.no_grad():
        phi = decomposition.coordinates(z).mean(dim=1).cpu()  # (N, k) complex
    names = list(labels)
    ys = [labels[nm].cpu() for nm in names]
    scores = torch.zeros(len(comps), len(names), dtype=torch.float64)
    for i, members in enumerate(comps):
        lead = int(members[0])
        feat = torch.view_as_real(phi[:, lead]).double()  # (N, 2)
        for j, y in enumerate(ys):
            scores[i, j] = _eta_squared(feat, y)
    groups: dict[str, list[torch.Tensor]] = {nm: [] for nm in names}
    for i, members in enumerate(comps):
        if len(names) and float(scores[i].max()) >= min_score:
            groups[names[int(scores[i].argmax())]].append(members)
    out = {nm: (torch.cat(g).sort().values if g else torch.zeros(0, dtype=torch.long)).to(decomposition.C.device)
           for nm, g in groups.items()}
    decomposition.factors.update(out)
    return FactorAssignment(out, scores, comps, names)
