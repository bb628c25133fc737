"""Long-tailed subsets (exponential profile, as CIFAR-10/100-LT) and many/medium/few groups."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .._args import int_arg, real


def long_tailed_counts(num_classes: int, n_max: int, imbalance_ratio: float) -> list[int]:
    """n_c = floor(n_max * rho^(-c / (C - 1))) for c = 0 ... C-1 (class 0 is the head)."""
    num_classes = int_arg(num_classes, "num_classes")
    n_max = int_arg(n_max, "n_max", 0)
    rho = real(imbalance_ratio)
    if rho is None or not 1 <= rho < math.inf:
        raise ValueError(f"imbalance_ratio: expected a finite number >= 1 (n_max / n_min), got {imbalance_ratio!r}")
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / imbalance_ratio) ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def long_tailed_indices(
    labels: torch.Tensor,
    imbalance_ratio: float,
    seed: int = 0,
    *,
    num_classes: Optional[int] = None,
    n_max: Optional[int] = None,
) -> torch.Tensor:
    """Indices of a long-tailed subset of a (roughly balanced) labelled set.

    Class c keeps ``floor(n_max * rho^(-c/(C-1)))`` samples chosen by a seeded shuffle within
    the class (``rho = imbalance_ratio``; ``n_max`` defaults to the smallest class size so
    every class can supply its quota). CIFAR-100 (500 per class) at rho = 100 gives 10,847.

    Args:
        labels: int64 [N] class ids in [0, num_classes).
        imbalance_ratio: n_max / n_min (>= 1).
        seed: seeds the per-class shuffles.
        num_classes: default ``labels.max() + 1``.
        n_max: samples kept for class 0.

    Returns:
        int64 [M] indices into ``labels``, grouped by class in class order.
    """
    labels = torch.as_tensor(labels).cpu()
    if labels.dim() != 1:
        raise ValueError(f"labels: expected a 1-D tensor, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected integer class ids, got {labels.dtype}")
    if labels.numel() == 0 and num_classes is None:
        raise ValueError("labels: empty; pass num_classes (or labels) to build a subset")
    C = int_arg(num_classes if num_classes is not None else int(labels.max()) + 1, "num_classes")
    if labels.numel() and (labels.min() < 0 or labels.max() >= C):
        raise ValueError(f"labels: expected values in [0, {C}), got [{int(labels.min())}, {int(labels.max())}]")
    per_class = [torch.nonzero(labels == c).flatten() for c in range(C)]
    empty = [c for c, p in enumerate(per_class) if p.numel() == 0]
    if empty:
        raise ValueError(f"labels: classes {empty[:10]} of num_classes={C} have no samples; a long-tailed subset "
                         "needs every class")
    avail = min(p.numel() for p in per_class)
    n_max = avail if n_max is None else int(n_max)
    counts = long_tailed_counts(C, n_max, imbalance_ratio)
    out = []
    for c, (idx, k) in enumerate(zip(per_class, counts)):
        if k > idx.numel():
            raise ValueError(f"n_max: class {c} has {idx.numel()} samples, fewer than the {k} requested")
        g = torch.Generator().manual_seed(int(seed) * 100_003 + c)
        out.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def shot_groups(train_counts: torch.Tensor, many: int = 100, few: int = 20) -> dict[str, torch.Tensor]:
    """Class ids in the many-shot (> many), medium-shot (few ... many) and few-shot (< few) groups."""
    counts = torch.as_tensor(train_counts).cpu()
    ids = torch.arange(counts.numel())
    return {
        "many": ids[counts > many],
        "medium": ids[(counts >= few) & (counts <= many)],
        "few": ids[counts < few],
    }


def group_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, groups: dict[str, torch.Tensor], num_classes: int
) -> dict[str, float]:
    """Mean per-class accuracy within each group, plus "all" (mean over classes)."""
    predictions, labels = predictions.cpu(), labels.cpu()
    correct = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, (predictions == labels).double())
    total = torch.bincount(labels, minlength=num_classes).double()
    per_class = correct / total.clamp_min(1)
    present = total > 0
    out = {"all": float(per_class[present].mean()) if present.any() else float("nan")}
    for name, ids in groups.items():
        sel = ids[present[ids]] if ids.numel() else ids
        out[name] = float(per_class[sel].mean()) if sel.numel() else float("nan")
    return out
