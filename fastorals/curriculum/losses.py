"""Long-tailed losses that CUDA is combined with: CE, CE-DRW, LDAM(-DRW), Balanced Softmax.

With ``z`` the logits [B, C], ``y`` the targets [B] and ``n_c`` the training images of class c:

* **CE**: ``-log softmax(z)_y``.
* **Class-balanced weights** (Cui et al. 2019): ``w_c = (1 - beta) / (1 - beta^{n_c})``,
  rescaled to sum to C (beta = 0.9999).
* **DRW** (deferred re-weighting, Cao et al. 2019): plain loss before ``drw_epoch``, the
  class-balanced weighted loss from then on; weighted losses are averaged as
  ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (PyTorch's weighted ``cross_entropy``).
* **LDAM** (Cao et al. 2019): the target logit is lowered by ``m_y``, ``m_c ∝ n_c^{-1/4}`` with
  ``max_c m_c = max_margin`` (0.5), then CE of ``scale * z`` (scale s = 30). LDAM is meant for
  cosine logits in [-1, 1]: use :class:`NormedLinear` as the classifier head.
* **Balanced Softmax** (Ren et al. 2020): CE of ``z + log prior`` (prior = n_c / N); at test
  time the plain logits are used.

All losses are thin compositions of ``F.cross_entropy`` (one fused kernel on every device).
Half-precision logits (float16, bfloat16, as autocast hands them over) are computed in float32,
margins, scale and prior included, and the loss is float32, as under autocast;
:mod:`fastorals.curriculum.reference` holds the written-out definitions they are tested against.
The modules have ``set_epoch(epoch)`` (DRW) and accept ``loss(logits, target, epoch=None)``.

Example:
    >>> from fastorals import data
    >>> counts = data.long_tailed_counts(100, 500, 100)         # 500 ... 5 images per class
    >>> loss_fn = make_loss("ldam_drw", counts, drw_epoch=160)
    >>> loss_fn.set_epoch(170)                                   # training.fit does this every epoch
    >>> loss_fn(torch.rand(8, 100), torch.arange(8)).shape
    torch.Size([])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._args import int_arg

__all__ = [
    "BalancedSoftmaxLoss",
    "CEDRWLoss",
    "CELoss",
    "LDAMLoss",
    "LongTailLoss",
    "NormedLinear",
    "balanced_softmax_loss",
    "class_balanced_weights",
    "ldam_loss",
    "ldam_margins",
    "log_prior",
    "make_loss",
]

CountsLike = Union[torch.Tensor, Sequence[int], Sequence[float]]
_REDUCTIONS = ("mean", "sum", "none")


def _counts(class_counts: CountsLike, name: str = "class_counts") -> torch.Tensor:
    t = class_counts if isinstance(class_counts, torch.Tensor) else torch.as_tensor(class_counts)
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected a numeric tensor of per-class counts, got dtype {t.dtype}")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name}: expected shape [C] with C >= 1, got {list(t.shape)}")
    t = t.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"{name}: expected finite, positive counts (every class needs a training image), got {t.tolist()}")
    return t


def class_balanced_weights(class_counts: CountsLike, beta: float = 0.9999, *,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^{n_c})`` rescaled to sum to C.

    Args:
        class_counts: [C] positive counts n_c.
        beta: in [0, 1); 0 gives all-ones weights, ``beta -> 1`` tends to ``1 / n_c``.
        dtype: output dtype.
    Returns:
        [C] weights (CPU).

    Example:
        >>> class_balanced_weights([500, 50, 5])
        tensor([0.0277, 0.2708, 2.7015])
    """
    n = _counts(class_counts)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"beta: expected a number in [0, 1), got {beta!r}")
    beta = float(beta)
    # 1 - beta^n computed as -expm1(n log beta): accurate for beta close to 1
    eff = -torch.expm1(n * math.log(beta)) if beta > 0 else torch.ones_like(n)
    w = (1.0 - beta) / eff
    return (w / w.sum() * n.numel()).to(dtype)


def ldam_margins(class_counts: CountsLike, max_margin: float = 0.5, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """LDAM margins ``m_c ∝ n_c^{-1/4}``, scaled so the largest (rarest class) is ``max_margin``.

    Args:
        class_counts: [C] positive counts n_c.
        max_margin: the rarest class's margin.
        dtype: output dtype.
    Returns:
        [C] margins (CPU).

    Example:
        >>> ldam_margins([10000, 16, 1])
        tensor([0.0500, 0.2500, 0.5000])
    """
    n = _counts(class_counts)
    if isinstance(max_margin, bool) or not isinstance(max_margin, (int, float)) or not (
        0.0 <= float(max_margin) < math.inf
    ):
        raise ValueError(f"max_margin: expected a finite number >= 0, got {max_margin!r}")
    m = n.pow(-0.25)
    return (m * (float(max_margin) / m.max())).to(dtype)


def log_prior(class_counts: CountsLike, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The log class prior ``log(n_c / sum n)`` [C] (CPU) that Balanced Softmax adds to the logits.

    Example:
        >>> log_prior([3, 1]).exp()
        tensor([0.7500, 0.2500])
    """
    n = _counts(class_counts)
    return torch.log(n / n.sum()).to(dtype)


def _check_logits(logits: torch.Tensor, target: torch.Tensor, num_classes: Optional[int] = None) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"logits: expected a floating-point tensor, got {getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape [B, C], got {list(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"logits: expected {num_classes} classes (from class_counts), got shape {list(logits.shape)}")
    if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"target: expected an integer tensor of class ids, got {getattr(target, 'dtype', type(target).__name__)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(f"target: expected shape [B={logits.shape[0]}], got {list(target.shape)}")
    if target.device.type == "cpu" and target.numel():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(f"target: expected class ids in [0, {logits.shape[1]}), got min {lo}, max {hi}")


def _compute_dtype(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in at least float32: half-precision margins, ``scale *`` and priors lose up to
    0.3 per sample in bfloat16, and their sums overflow float16."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def ldam_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    margins: torch.Tensor,
    scale: float = 30.0,
    weight: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """LDAM: ``cross_entropy(scale * (z - m_y e_y), y, weight)``.

    Args:
        logits: float [B, C] (cosine logits for the intended use).
        target: int [B].
        margins: [C] per-class margins (:func:`ldam_margins`).
        scale: s.
        weight: optional [C] class weights (DRW).
        reduction: "mean" (weighted mean with ``weight``), "sum" or "none".
    Returns:
        scalar, or [B] with ``reduction="none"``.
    """
    _check_logits(logits, target)
    _check_reduction(reduction)
    margins = margins if isinstance(margins, torch.Tensor) else torch.as_tensor(margins, dtype=torch.float64)
    if margins.shape != (logits.shape[1],):
        raise ValueError(f"margins: expected shape [C={logits.shape[1]}], got {list(margins.shape)}")
    t = target.long()
    logits = _compute_dtype(logits)
    m = margins.to(device=logits.device, dtype=logits.dtype).index_select(0, t)
    z = logits.scatter_add(1, t.unsqueeze(1), -m.unsqueeze(1))
    if weight is not None:
        weight = weight if isinstance(weight, torch.Tensor) else torch.as_tensor(weight, dtype=torch.float64)
        if weight.shape != (logits.shape[1],):
            raise ValueError(f"weight: expected shape [C={logits.shape[1]}], got {list(weight.shape)}")
    w = None if weight is None else weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(z * scale, t, weight=w, reduction=reduction)


def balanced_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, log_prior: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Balanced Softmax: ``cross_entropy(z + log prior, y)``.

    Args:
        logits: float [B, C]; target: int [B]; log_prior: [C] (:func:`log_prior`).
    Returns:
        scalar, or [B] with ``reduction="none"``.
    """
    _check_logits(logits, target)
    _check_reduction(reduction)
    log_prior = log_prior if isinstance(log_prior, torch.Tensor) else torch.as_tensor(log_prior, dtype=torch.float64)
    if log_prior.shape != (logits.shape[1],):
        raise ValueError(f"log_prior: expected shape [C={logits.shape[1]}], got {list(log_prior.shape)}")
    logits = _compute_dtype(logits)
    lp = log_prior.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits + lp, target.long(), reduction=reduction)


# ----------------------------------------------------------------------------- modules


class LongTailLoss(nn.Module):
    """Base: ``loss(logits [B, C], target [B], epoch=None)`` with ``set_epoch`` for DRW schedules.

    ``follows_fit_epoch``: :func:`fastorals.training.fit` calls ``set_epoch`` with its own epoch
    before every epoch (set it to False on an instance to keep an epoch you set yourself).
    """

    follows_fit_epoch = True

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.reduction = reduction
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss which epoch is training (DRW switches weights at ``drw_epoch``)."""
        self.epoch = self._epoch(epoch)

    def _epoch(self, epoch: Optional[int]) -> int:
        """A call's ``epoch`` (None: the one set), checked."""
        if epoch is None:
            return self.epoch
        return int_arg(epoch, "epoch", 0)


class _DRWMixin:
    drw_epoch: Optional[int]
    epoch: int

    def _init_drw(self, counts: torch.Tensor, drw_epoch: Optional[int], beta: float) -> None:
        if drw_epoch is not None and (isinstance(drw_epoch, bool) or not isinstance(drw_epoch, int) or drw_epoch < 0):
            raise ValueError(f"drw_epoch: expected an int >= 0 or None, got {drw_epoch!r}")
        self.drw_epoch = drw_epoch
        self.beta = float(beta)
        self.register_buffer("class_weights", class_balanced_weights(counts, beta, dtype=torch.float64),
                             persistent=False)

    def weight_at(self, epoch: int) -> Optional[torch.Tensor]:
        """The class weights in force at ``epoch`` (None: unweighted)."""
        if self.drw_epoch is None or epoch < self.drw_epoch:
            return None
        return self.class_weights


class CELoss(LongTailLoss):
    """Plain cross-entropy (the CE baseline), with the common ``(logits, target, epoch)`` call.

    Args:
        class_counts: optional [C] training images per class; only their number is used, to
            check the logits' width (CE itself ignores the counts).
        reduction: "mean", "sum" or "none".

    Example:
        >>> CELoss()(torch.zeros(2, 3), torch.tensor([0, 2]))
        tensor(1.0986)
    """

    def __init__(self, class_counts: Optional[CountsLike] = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.num_classes = None if class_counts is None else _counts(class_counts).numel()

    def forward(self, logits: torch.Tensor, target: torch.Tensor, epoch: Optional[int] = None) -> torch.Tensor:
        """The loss of ``logits`` (float [B, C]) for ``target`` (int [B]) at ``epoch`` (None: the one set
        with :meth:`set_epoch`); a scalar, or [B] with ``reduction="none"``."""
        _check_logits(logits, target, self.num_classes)
        self._epoch(epoch)  # no schedule; checked like the others'
        return F.cross_entropy(_compute_dtype(logits), target.long(), reduction=self.reduction)


class CEDRWLoss(_DRWMixin, LongTailLoss):
    """CE with deferred re-weighting: class-balanced weights (beta) from epoch ``drw_epoch`` on.

    Args:
        class_counts: [C] training images per class.
        drw_epoch: first re-weighted epoch (160 of 200 in the paper's setup).
        beta: class-balanced beta (0.9999).
        reduction: "mean" (weighted mean once re-weighted), "sum" or "none".

    Example:
        >>> loss = CEDRWLoss([500, 50, 5], drw_epoch=2)
        >>> loss.set_epoch(2)                      # training.fit does this every epoch
        >>> loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 2])).shape
        torch.Size([])
    """

    def __init__(self, class_counts: CountsLike, drw_epoch: int = 160, beta: float = 0.9999,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        counts = _counts(class_counts)
        self.num_classes = counts.numel()
        self._init_drw(counts, drw_epoch, beta)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, epoch: Optional[int] = None) -> torch.Tensor:
        """The loss of ``logits`` (float [B, C]) for ``target`` (int [B]) at ``epoch`` (None: the one set
        with :meth:`set_epoch`); a scalar, or [B] with ``reduction="none"``."""
        _check_logits(logits, target, self.num_classes)
        w = self.weight_at(self._epoch(epoch))
        logits = _compute_dtype(logits)
        w = None if w is None else w.to(device=logits.device, dtype=logits.dtype)
        return F.cross_entropy(logits, target.long(), weight=w, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, drw_epoch={self.drw_epoch}, beta={self.beta}"


class LDAMLoss(_DRWMixin, LongTailLoss):
    """LDAM, with DRW when ``drw_epoch`` is set (LDAM-DRW).

    Args:
        class_counts: [C] training images per class.
        max_margin: the largest margin (0.5).
        scale: s (30), for cosine logits (:class:`NormedLinear`).
        drw_epoch: first re-weighted epoch, or None for plain LDAM.
        beta: class-balanced beta (0.9999).
        reduction: "mean", "sum" or "none".

    Example:
        >>> head = NormedLinear(64, 3)                  # cosine logits in [-1, 1]
        >>> loss = LDAMLoss([500, 50, 5], drw_epoch=None)
        >>> loss(head(torch.randn(4, 64)), torch.tensor([0, 1, 2, 2])).shape
        torch.Size([])
    """

    def __init__(self, class_counts: CountsLike, max_margin: float = 0.5, scale: float = 30.0,
                 drw_epoch: Optional[int] = 160, beta: float = 0.9999, reduction: str = "mean") -> None:
        super().__init__(reduction)
        counts = _counts(class_counts)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < float(scale) < math.inf:
            raise ValueError(f"scale: expected a positive finite number, got {scale!r}")
        self.num_classes = counts.numel()
        self.scale = float(scale)
        self.max_margin = float(max_margin)
        self.register_buffer("margins", ldam_margins(counts, max_margin, dtype=torch.float64), persistent=False)
        self._init_drw(counts, drw_epoch, beta)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, epoch: Optional[int] = None) -> torch.Tensor:
        """The loss of ``logits`` (float [B, C]) for ``target`` (int [B]) at ``epoch`` (None: the one set
        with :meth:`set_epoch`); a scalar, or [B] with ``reduction="none"``."""
        _check_logits(logits, target, self.num_classes)
        w = self.weight_at(self._epoch(epoch))
        return ldam_loss(logits, target, self.margins, self.scale, w, self.reduction)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, max_margin={self.max_margin}, scale={self.scale}, "
                f"drw_epoch={self.drw_epoch}, beta={self.beta}")


class BalancedSoftmaxLoss(LongTailLoss):
    """Balanced Softmax: CE of ``logits + log prior`` (predict with the plain logits).

    Args:
        class_counts: [C] training images per class.
        reduction: "mean", "sum" or "none".

    Example:
        >>> BalancedSoftmaxLoss([3, 1])(torch.zeros(1, 2), torch.tensor([1]))  # -log(1/4)
        tensor(1.3863)
    """

    def __init__(self, class_counts: CountsLike, reduction: str = "mean") -> None:
        super().__init__(reduction)
        lp = log_prior(class_counts, dtype=torch.float64)
        self.num_classes = lp.numel()
        self.register_buffer("log_prior", lp, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, epoch: Optional[int] = None) -> torch.Tensor:
        """The loss of ``logits`` (float [B, C]) for ``target`` (int [B]) at ``epoch`` (None: the one set
        with :meth:`set_epoch`); a scalar, or [B] with ``reduction="none"``."""
        _check_logits(logits, target, self.num_classes)
        self._epoch(epoch)  # no schedule; checked like the others'
        return balanced_softmax_loss(logits, target, self.log_prior, self.reduction)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


class NormedLinear(nn.Module):
    """Cosine classifier head: ``normalize(x) @ normalize(W)^T`` in [-1, 1] (for LDAM).

    Shapes: [B, in_features] -> [B, out_features].

    Example:
        >>> NormedLinear(64, 10)(torch.randn(8, 64)).abs().max() <= 1
        tensor(True)
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


_NAMES = ("ce", "ce_drw", "ldam", "ldam_drw", "bs")


def make_loss(name: str, class_counts: Optional[CountsLike] = None, **kwargs) -> LongTailLoss:
    """A loss by name: "ce", "ce_drw", "ldam", "ldam_drw" or "bs" (Balanced Softmax).

    Args:
        name: the loss.
        class_counts: [C] training images per class (all but "ce"; for "ce" only their number
            is used, to check the logits' width).
        kwargs: passed to the loss class (e.g. ``drw_epoch``, ``beta``, ``max_margin``, ``scale``).
    Returns:
        a :class:`LongTailLoss`: ``loss(logits [B, C], target [B])`` -> scalar.

    Example:
        >>> loss = make_loss("ce_drw", [500, 50, 5], drw_epoch=160)
        >>> loss(torch.zeros(2, 3), torch.tensor([0, 2])).shape
        torch.Size([])
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _NAMES:
        raise ValueError(f"name: expected one of {_NAMES}, got {name!r}")
    cls = {"ce": CELoss, "ce_drw": CEDRWLoss, "ldam": LDAMLoss, "ldam_drw": LDAMLoss,
           "bs": BalancedSoftmaxLoss}[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "class_counts")]
    if key == "ldam":
        accepted.remove("drw_epoch")
        accepted.remove("beta")
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        hint = "; use 'ldam_drw' for LDAM-DRW" if key == "ldam" and {"drw_epoch", "beta"} & set(unknown) else ""
        raise TypeError(f"make_loss: loss {name!r} takes no argument {', '.join(unknown)} "
                        f"(it takes {', '.join(accepted)}){hint}")
    if key == "ce":
        return CELoss(class_counts, **kwargs)
    if class_counts is None:
        raise ValueError(f"class_counts: loss {name!r} needs the training images per class")
    if key == "ce_drw":
        return CEDRWLoss(class_counts, **kwargs)
    if key == "ldam":
        return LDAMLoss(class_counts, drw_epoch=None, **kwargs)
    if key == "ldam_drw":
        return LDAMLoss(class_counts, **kwargs)
    return BalancedSoftmaxLoss(class_counts, **kwargs)
