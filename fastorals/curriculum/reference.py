"""Slow, obviously-correct definitions: the LoL rule, the LoL test and the long-tailed losses.

* :func:`lol_decision` and :func:`lol_update` follow the paper's algorithm class by class and
  level by level, in Python loops: each (class, level) group of the test is augmented one image
  at a time with the per-image PIL pipeline (:mod:`fastorals.augment.reference`) and classified
  in its own forward pass. Given the same :class:`~fastorals.curriculum.lol.LoLPlan` they must
  give exactly what the batched path gives.
* The losses are written out from their definitions (log-sum-exp per row, explicit margins,
  explicit weights), in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Callable, Optional

import torch

from ..augment import reference as aug_ref
from .lol import ClassPool, LoLPlan, accept_fraction

__all__ = [
    "balanced_softmax_loss",
    "class_balanced_weights",
    "cross_entropy",
    "ldam_loss",
    "ldam_margins",
    "lol_decision",
    "lol_update",
]


# ----------------------------------------------------------------------------- LoL


def lol_decision(
    levels: Sequence[int],
    correct: Sequence[Sequence[int]],
    trials: Sequence[Sequence[int]],
    accept_rate: float,
    max_level: int,
    strict: bool = False,
) -> list[int]:
    """The LoL rule, one class at a time: up one level if every level ``l <= L_c`` has
    ``V_l >= gamma * n_l`` (``>`` when ``strict``), else down one; clamp to [0, max_level];
    classes without trials keep their level."""
    gamma = accept_fraction(accept_rate)
    out = []
    for c, lc in enumerate(levels):
        lc = int(lc)
        if any(int(trials[c][l]) == 0 for l in range(lc + 1)):
            out.append(lc)
            continue
        ok = True
        for l in range(lc + 1):
            v, n = Fraction(int(correct[c][l])), int(trials[c][l])
            passed = v > gamma * n if strict else v >= gamma * n
            if not passed:
                ok = False
                break
        out.append(min(max(lc + (1 if ok else -1), 0), max_level))
    return out


def lol_update(
    model: Callable[[torch.Tensor], torch.Tensor],
    pool: ClassPool,
    levels: Sequence[int],
    plan: LoLPlan,
    *,
    accept_rate: float,
    max_level: int,
    num_test: int,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    log_prior: Optional[torch.Tensor] = None,
    tau: float = 0.0,
    strict: bool = False,
) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """The LoL test as the paper states it, on the draws of ``plan``.

    For each class c, for each level l <= L_c: take the plan's T (l + 1) samples of (c, l),
    augment them one by one with PIL, classify them in one forward pass, count the correct ones.

    Returns:
        (new levels [C], correct [C][max_level + 1], trials [C][max_level + 1]).
    """
    num_classes = len(levels)
    correct = [[0] * (max_level + 1) for _ in range(num_classes)]
    trials = [[0] * (max_level + 1) for _ in range(num_classes)]
    mean_t = None if mean is None else torch.tensor(mean, dtype=torch.float32)
    std_t = None if std is None else torch.tensor(std, dtype=torch.float32)
    values = plan.chains.values()
    for c in range(num_classes):
        for l in range(int(levels[c]) + 1):
            sel = ((plan.classes == c) & (plan.levels == l)).nonzero().flatten().tolist()
            if not sel:
                continue
            assert len(sel) == num_test * (l + 1), "plan: wrong number of samples for a (class, level)"
            xs = []
            for i in sel:
                img = pool.images[int(plan.index[i])].cpu()
                xs.append(aug_ref.augment_image(
                    img, plan.chains.ops[i].tolist(), values[i].tolist(),
                    crop=tuple(plan.pipeline.crop[i].tolist()), flip=bool(plan.pipeline.flip[i]),
                    cutout=tuple(plan.pipeline.cutout[i].tolist()), mean=mean_t, std=std_t, float_out=True,
                ))
            with torch.no_grad():
                logits = model(torch.stack(xs))
            if log_prior is not None and tau:
                logits = logits.float() - tau * log_prior.float()
            pred = logits.argmax(1).tolist()
            correct[c][l] = sum(int(p == c) for p in pred)
            trials[c][l] = len(sel)
    return lol_decision(levels, correct, trials, accept_rate, max_level, strict), correct, trials


# ----------------------------------------------------------------------------- losses


def class_balanced_weights(counts: Sequence[float], beta: float) -> list[float]:
    """``w_c = (1 - beta) / (1 - beta^{n_c})``, rescaled so that ``sum_c w_c = C``."""
    w = [(1.0 - beta) / (1.0 - beta ** float(n)) for n in counts]
    s = sum(w)
    return [x * len(w) / s for x in w]


def ldam_margins(counts: Sequence[float], max_margin: float) -> list[float]:
    """``m_c = max_margin * n_c^{-1/4} / max_k n_k^{-1/4}``."""
    m = [float(n) ** -0.25 for n in counts]
    top = max(m)
    return [max_margin * x / top for x in m]


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: Optional[Sequence[float]] = None,
                  reduction: str = "mean") -> torch.Tensor:
    """``l_i = logsumexp(z_i) - z_{i, y_i}``; mean = ``sum w_{y_i} l_i / sum w_{y_i}``."""
    rows = []
    ws = []
    for i in range(logits.shape[0]):
        z = logits[i].double()
        y = int(target[i])
        top = z.max()
        lse = top + torch.log(torch.exp(z - top).sum())
        w = 1.0 if weight is None else float(weight[y])
        rows.append((lse - z[y]) * w)
        ws.append(w)
    per = torch.stack(rows) if rows else logits.new_zeros(0, dtype=torch.float64)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / sum(ws)


def ldam_loss(logits: torch.Tensor, target: torch.Tensor, counts: Sequence[float], max_margin: float = 0.5,
              scale: float = 30.0, weight: Optional[Sequence[float]] = None, reduction: str = "mean") -> torch.Tensor:
    """CE of ``scale * z'`` where ``z'_{i,j} = z_{i,j} - m_{y_i} [j = y_i]``."""
    m = ldam_margins(counts, max_margin)
    rows = []
    for i in range(logits.shape[0]):
        y = int(target[i])
        shift = torch.zeros(logits.shape[1], dtype=torch.float64)
        shift[y] = m[y]
        rows.append((logits[i].double() - shift) * scale)
    z = torch.stack(rows) if rows else logits.double()
    return cross_entropy(z, target, weight, reduction)


def balanced_softmax_loss(logits: torch.Tensor, target: torch.Tensor, counts: Sequence[float],
                          reduction: str = "mean") -> torch.Tensor:
    """``-log( n_y e^{z_y} / sum_j n_j e^{z_j} )`` (CE of ``z + log(n / N)``)."""
    total = float(sum(counts))
    lp = torch.tensor([math.log(float(n) / total) for n in counts], dtype=torch.float64)
    return cross_entropy(logits.double() + lp, target, None, reduction)
