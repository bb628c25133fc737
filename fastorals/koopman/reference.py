"""SKD math, slow and obvious: the oracle of every test and the fallback backend.

Conventions (row vectors, as in the paper): latents ``z`` of shape (B, T, k) evolve as
``z[:, t + 1] ~= z[:, t] @ C``; with ``C = V diag(lam) V^-1`` the Koopman coordinates are
``phi = z @ V`` and ``z = phi @ V^-1``.

* Koopman fit: ``X = z[:, :-1]``, ``Y = z[:, 1:]`` stacked over the batch, C = argmin ||X C - Y||
  (``torch.linalg.lstsq``); the prediction keeps frame 0 and uses ``X @ C`` for the rest.
* Static/dynamic split: eigenvalues are grouped into components (a real eigenvalue, or a
  complex-conjugate pair: the d-th occurrence of ``a+ib``, b > 0, pairs with the d-th
  occurrence of ``a-ib`` in index order; an unmatched complex eigenvalue stands alone). A
  component's id is its smallest index. Components are ordered by (key, id) with key
  ``|lam-1|^2`` ("ball"), ``-|lam|^2`` ("norm") or ``-Re lam`` ("real"); the first
  ``num_static`` components are static, so a conjugate pair is never split.
* Spectral penalty = static term (mean over static eigenvalues) + dynamic term (mean over
  dynamic eigenvalues), each 0 when its set is empty:

  static  "ball": |lam - 1|^2        "norm": (|lam|^2 - 1)^2        "real": (Re lam - 1)^2
  dynamic "real": Re lam if Re lam > threshold else 0
          "ball": 2 - |lam - 1| if |lam - 1| < radius else 0
          "thresh": |lam|^2 if |lam|^2 > threshold else 0
          "strict": (|lam|^2 - eigs_threshold^2)^2
          "none": 0
"""

from __future__ import annotations

from typing import Optional, Union

import torch

STATIC_MODES = ("ball", "norm", "real")
DYNAMIC_MODES = ("none", "real", "ball", "thresh", "strict")


def fit_koopman_reference(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares Koopman matrix shared by a batch of sequences.

    Args:
        z: (..., B, T, k) latent sequences, T >= 2.

    Returns:
        (C, z_pred): C (..., k, k) with ``z[..., t+1, :] ~= z[..., t, :] @ C``; z_pred (..., B, T, k).
    """
    *lead, b, t, k = z.shape
    x = z[..., :-1, :].reshape(*lead, b * (t - 1), k)
    y = z[..., 1:, :].reshape(*lead, b * (t - 1), k)
    c = torch.linalg.lstsq(x, y).solution
    pred = torch.cat([z[..., :1, :], z[..., :-1, :] @ c.unsqueeze(-3)], dim=-2)
    return c, pred


def _key(lam: complex, mode: str) -> float:
    if mode == "ball":
        return (lam.real - 1.0) ** 2 + lam.imag**2
    if mode == "norm":
        return -(lam.real**2 + lam.imag**2)
    return -lam.real


def components_reference(eigvals: torch.Tensor) -> list[int]:
    """Component id (smallest member index) of each eigenvalue of one matrix: list of k ints."""
    vals = [complex(v) for v in eigvals.tolist()]
    k = len(vals)
    comp = list(range(k))
    used = [False] * k
    for i in range(k):
        if vals[i].imag > 0:
            for j in range(k):
                if not used[j] and vals[j].real == vals[i].real and vals[j].imag == -vals[i].imag:
                    used[j] = True
                    comp[i] = comp[j] = min(i, j)
                    break
    return comp


def static_mask_reference(eigvals: torch.Tensor, num_static: int, mode: str = "ball") -> torch.Tensor:
    """(k,) bool static mask of one matrix's eigenvalues (conjugate pairs are never split)."""
    vals = [complex(v) for v in eigvals.tolist()]
    comp = components_reference(eigvals)
    reps = sorted({c for c in comp}, key=lambda c: (_key(vals[c], mode), c))
    static = set(reps[:num_static])
    return torch.tensor([comp[i] in static for i in range(len(vals))], dtype=torch.bool)


def spectral_terms_reference(
    eigvals: torch.Tensor,
    num_static: int,
    static_mode: str = "ball",
    dynamic_mode: str = "real",
    dynamic_threshold: float = 0.5,
    ball_radius: float = 0.6,
    eigs_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Static and dynamic penalties of a batch of spectra (differentiable through autograd).

    Args:
        eigvals: (..., k) complex eigenvalues.
        num_static: number of static components (a conjugate pair counts once).
        static_mode, dynamic_mode, dynamic_threshold, ball_radius, eigs_threshold: see module docstring.

    Returns:
        (static (...,), dynamic (...,), mask (..., k) bool).
    """
    lead = eigvals.shape[:-1]
    flat = eigvals.reshape(-1, eigvals.shape[-1])
    statics, dynamics, masks = [], [], []
    for lam in flat:
        mask = static_mask_reference(lam.detach(), num_static, static_mode).to(lam.device)
        re, im = lam.real, lam.imag
        if static_mode == "ball":
            s_term = (lam - 1).abs() ** 2
        elif static_mode == "norm":
            s_term = (re**2 + im**2 - 1) ** 2
        else:
            s_term = (re - 1) ** 2
        if dynamic_mode == "real":
            d_term = torch.where(re > dynamic_threshold, re, torch.zeros_like(re))
        elif dynamic_mode == "ball":
            dist = (lam - 1).abs()
            d_term = torch.where(dist < ball_radius, 2 - dist, torch.zeros_like(dist))
        elif dynamic_mode == "thresh":
            n = re**2 + im**2
            d_term = torch.where(n > dynamic_threshold, n, torch.zeros_like(n))
        elif dynamic_mode == "strict":
            d_term = (re**2 + im**2 - eigs_threshold**2) ** 2
        else:
            d_term = torch.zeros_like(re)
        statics.append(s_term[mask].mean() if bool(mask.any()) else s_term.sum() * 0)
        dynamics.append(d_term[~mask].mean() if bool((~mask).any()) else d_term.sum() * 0)
        masks.append(mask)
    return (torch.stack(statics).reshape(lead), torch.stack(dynamics).reshape(lead),
            torch.stack(masks).reshape(*lead, -1))


def spectral_loss_reference(
    C: torch.Tensor,
    num_static: int,
    static_mode: str = "ball",
    dynamic_mode: str = "real",
    dynamic_threshold: float = 0.5,
    ball_radius: float = 0.6,
    eigs_threshold: float = 0.5,
) -> torch.Tensor:
    """Mean over matrices of (static + dynamic) penalties of the eigenvalues of C (..., k, k)."""
    lam = torch.linalg.eigvals(C)
    s, d, _ = spectral_terms_reference(lam, num_static, static_mode, dynamic_mode, dynamic_threshold,
                                       ball_radius, eigs_threshold)
    return (s + d).mean()


def swap_reference(
    z: torch.Tensor,
    z_donor: torch.Tensor,
    C: torch.Tensor,
    indices: Union[list[int], torch.Tensor],
    V: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Replace the Koopman coordinates ``indices`` of each sequence of ``z`` by those of ``z_donor``.

    One sequence at a time, as written in the paper: ``phi = z V``, ``phi[:, I] <- phi_donor[:, I]``,
    result ``Re(phi V^-1)``.

    Args:
        z, z_donor: (N, T, k) latent sequences.
        C: (k, k) Koopman matrix (its eigendecomposition is used unless ``V`` is given).
        indices: eigen-indices to take from the donor (include both members of a conjugate pair).
        V: optional (k, k) complex right eigenvectors of C.

    Returns:
        (N, T, k) real tensor.
    """
    if V is None:
        _, V = torch.linalg.eig(C)
    U = torch.linalg.inv(V)
    idx = torch.as_tensor(indices, dtype=torch.long)
    out = []
    for a, b in zip(z, z_donor):
        pa = a.to(V.dtype) @ V
        pb = b.to(V.dtype) @ V
        pa = pa.clone()
        pa[:, idx] = pb[:, idx]
        out.append((pa @ U).real.to(z.dtype))
    return torch.stack(out)
