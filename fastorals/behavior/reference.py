"""The math of BeT / C-BeT written plainly: the oracle of the tests and the fallback backend.

* k-means (Lloyd) on actions: :func:`assign_reference`, :func:`lloyd_reference`.
  Distances are ``sum_d (x_d - c_d)^2`` accumulated in float64 in the order ``d = 0, 1, ...``
  (one subtraction, one product, one addition per dimension); the nearest centre is the one
  with the smallest such distance, ties going to the lowest centre index. Every fast backend
  returns exactly these assignments.
* The BeT head loss: focal loss (Lin et al., gamma = 2) on the action bin plus
  ``offset_weight`` times the mean squared error of the predicted offset of the true bin:
  :func:`bet_loss_reference` (autograd does the backward).
* Sampling: :func:`sample_reference`.

Nothing here is fast: distances materialise ``(chunk, K)`` float64 matrices and the loss is
a chain of PyTorch ops.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "assign_reference",
    "bet_loss_reference",
    "exact_sq_dist",
    "lloyd_reference",
    "reseed_empty",
    "sample_reference",
    "update_reference",
]

_CHUNK = 1 << 15  # rows per distance block


def exact_sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float64 squared distances ``(N, K)`` between rows of ``x`` ``(N, D)`` and ``c`` ``(K, D)``.

    Accumulated dimension by dimension in float64: ``acc = acc + (x_d - c_d) * (x_d - c_d)``.
    This exact order is the definition every backend reproduces bit for bit.
    """
    xd, cd = x.double(), c.double()
    acc = torch.zeros(x.shape[0], c.shape[0], dtype=torch.float64, device=x.device)
    for d in range(x.shape[1]):
        diff = xd[:, d, None] - cd[None, :, d]
        acc = acc + diff * diff
    return acc


def assign_reference(x: torch.Tensor, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row (ties: lowest index) and its float64 squared distance.

    Args:
        x: ``(N, D)`` points.
        centers: ``(K, D)`` centres, same dtype.
    Returns:
        labels ``(N,)`` int64 and distances ``(N,)`` float64.
    """
    labels, dists = [], []
    for i in range(0, x.shape[0], _CHUNK):
        dist = exact_sq_dist(x[i : i + _CHUNK], centers)
        lab = dist.argmin(1)  # first minimum: the lowest index among ties
        labels.append(lab)
        dists.append(dist.gather(1, lab[:, None])[:, 0])
    if not labels:
        return x.new_zeros(0, dtype=torch.int64), x.new_zeros(0, dtype=torch.float64)
    return torch.cat(labels), torch.cat(dists)


def update_reference(x: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 per-cluster sums ``(K, D)`` and int64 counts ``(K,)``."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, labels, x.double())
    counts = torch.bincount(labels, minlength=k)
    return sums, counts


def reseed_empty(
    x: torch.Tensor,
    centers: torch.Tensor,
    counts: torch.Tensor,
    dists: torch.Tensor,
    reseed: str,
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """New centres for empty clusters (in increasing cluster index), in place on ``centers``.

    ``"farthest"``: the points farthest from their assigned centre (largest ``dists``, ties:
    lowest point index), one per empty cluster. ``"random"``: distinct uniformly drawn points
    (``torch.randperm(N, generator=generator)``), the rule of the original BeT code.

    Returns:
        the indices of the empty clusters that were reseeded.
    """
    empty = torch.nonzero(counts == 0).flatten()
    n = empty.numel()
    if n == 0:
        return empty
    if reseed == "farthest":
        pick = torch.argsort(dists, descending=True, stable=True)[:n]
    else:
        pick = torch.randperm(x.shape[0], generator=generator, device="cpu")[:n].to(x.device)
    centers[empty] = x[pick].to(centers.dtype)
    return empty


def lloyd_reference(
    x: torch.Tensor,
    init: torch.Tensor,
    iters: int,
    *,
    reseed: str = "farthest",
    tol: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, float, int, bool]:
    """Lloyd's algorithm from ``init``: the semantics every backend of :func:`~fastorals.behavior.kmeans` follows.

    One iteration = assign every point with the current centres, then move each centre to the
    mean of its points (float64 sums, cast back to ``x.dtype``); empty clusters are reseeded
    (:func:`reseed_empty`). It stops after ``iters`` iterations, or early when an assignment
    equals the previous one (strict convergence, nothing was reseeded), or when ``tol > 0`` and
    the total squared centre shift is at most ``tol`` times the mean per-dimension variance of
    ``x``. The returned labels are those of the returned centres.

    Returns:
        centers ``(K, D)``, labels ``(N,)``, inertia (float64 sum of squared distances),
        number of centre updates, converged flag.
    """
    centers = init.clone()
    k = centers.shape[0]
    labels, dists = assign_reference(x, centers)
    tol_abs = tol * float(x.double().var(0, unbiased=False).mean()) if tol > 0 else 0.0
    n_iter, converged = 0, False
    for _ in range(iters):
        sums, counts = update_reference(x, labels, k)
        new = (sums / counts.clamp_min(1)[:, None].double()).to(x.dtype)
        reseeded = reseed_empty(x, new, counts, dists, reseed, generator)
        shift = float(((new.double() - centers.double()) ** 2).sum())
        centers = new
        n_iter += 1
        new_labels, dists = assign_reference(x, centers)
        same = bool(torch.equal(new_labels, labels)) and reseeded.numel() == 0
        labels = new_labels
        if same or (tol > 0 and shift <= tol_abs):
            converged = True
            break
    return centers, labels, float(dists.sum()), n_iter, converged


def bet_loss_reference(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    bins: torch.Tensor,
    residuals: torch.Tensor,
    gamma: float = 2.0,
    weight: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal loss on the bin and MSE of the true bin's offset, as separate scalars.

    Args:
        logits: ``(M, K)`` bin logits.
        offsets: ``(M, K, A)`` per-bin offsets.
        bins: ``(M,)`` int64 true bins.
        residuals: ``(M, A)`` true residuals ``action - centre[bin]``.
        gamma: focal exponent (0: cross-entropy).
        weight: optional ``(M,)`` non-negative row weights (e.g. a padding mask); the means are
            ``sum_m w_m l_m / sum_m w_m``.
    Returns:
        (class_loss, offset_loss): mean focal loss ``-(1 - p_t)^gamma log p_t`` and mean over rows
        and action dims of ``(offsets[m, bins[m]] - residuals[m])^2``.
    """
    logp = F.log_softmax(logits, dim=-1).gather(1, bins[:, None])[:, 0]
    p = logp.exp()
    focal = -((1 - p) ** gamma) * logp if gamma != 0 else -logp
    picked = offsets[torch.arange(offsets.shape[0], device=offsets.device), bins]
    mse = ((picked - residuals) ** 2).mean(1)
    if weight is None:
        return focal.mean(), mse.mean()
    w = weight.to(focal.dtype)
    total = w.sum()
    return (w * focal).sum() / total, (w * mse).sum() / total


def sample_reference(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    centers: torch.Tensor,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a bin from ``softmax(logits / temperature)`` (argmax at 0) and add its offset.

    Args:
        logits: ``(M, K)``; offsets: ``(M, K, A)``; centers: ``(K, A)``.
    Returns:
        actions ``(M, A)`` and bins ``(M,)``.
    """
    if temperature == 0:
        bins = logits.argmax(-1)
    else:
        probs = torch.softmax(logits.double() / temperature, dim=-1)
        bins = torch.multinomial(probs, 1, generator=generator)[:, 0]
    rows = torch.arange(logits.shape[0], device=logits.device)
    return centers[bins].to(offsets.dtype) + offsets[rows, bins], bins
