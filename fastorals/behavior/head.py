"""The BeT head: bin logits + per-bin offsets, the fused focal + offset loss, sampling."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from .. import _ext
from . import ops
from .reference import bet_loss_reference

__all__ = ["BeTHead", "BeTLoss", "bet_loss", "sample_actions"]

IMPLEMENTED = ("triton", "cpp", "torch", "reference")


class BeTLoss(NamedTuple):
    """``loss = class_loss + offset_weight * offset_loss`` and its two parts (scalars)."""

    loss: torch.Tensor
    class_loss: torch.Tensor
    offset_loss: torch.Tensor


def _check_loss_inputs(logits, offsets, bins, residuals, weight, gamma, offset_weight):
    for name, t in (("logits", logits), ("offsets", offsets), ("bins", bins), ("residuals", residuals)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if logits.dim() < 1 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits: expected a float tensor (..., K), got shape {tuple(logits.shape)} dtype {logits.dtype}")
    lead, K = logits.shape[:-1], logits.shape[-1]
    if K < 1:
        raise ValueError("logits: expected at least one bin (K >= 1)")
    if offsets.dim() != logits.dim() + 1 or offsets.shape[:-1] != logits.shape:
        raise ValueError(f"offsets: expected shape (..., K, A) = {(*lead, K)} + (A,) to match logits {tuple(logits.shape)}, "
                         f"got {tuple(offsets.shape)}")
    A = offsets.shape[-1]
    if A < 1:
        raise ValueError("offsets: expected an action dimension A >= 1")
    if bins.shape != lead:
        raise ValueError(f"bins: expected shape {tuple(lead)} (logits without the bin dim), got {tuple(bins.shape)}")
    if bins.dtype.is_floating_point or bins.dtype == torch.bool or bins.is_complex():
        raise TypeError(f"bins: expected an integer tensor, got {bins.dtype}")
    if residuals.shape != (*lead, A):
        raise ValueError(f"residuals: expected shape {(*lead, A)} (one residual action per bin target), "
                         f"got {tuple(residuals.shape)}")
    for name, t in (("offsets", offsets), ("residuals", residuals)):
        if t.dtype != logits.dtype:
            raise TypeError(f"{name}: expected dtype {logits.dtype} like logits, got {t.dtype}")
    for name, t in (("offsets", offsets), ("bins", bins), ("residuals", residuals)):
        if t.device != logits.device:
            raise ValueError(f"{name}: expected device {logits.device} like logits, got {t.device}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor) or weight.shape != lead:
            raise ValueError(f"weight: expected a tensor of shape {tuple(lead)}, got "
                             f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
        if weight.device != logits.device:
            raise ValueError(f"weight: expected device {logits.device}, got {weight.device}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma: expected a finite number >= 0, got {gamma!r}")
    if not (isinstance(offset_weight, (int, float)) and math.isfinite(offset_weight)):
        raise ValueError(f"offset_weight: expected a finite number, got {offset_weight!r}")
    M = int(math.prod(lead))
    if M == 0:
        raise ValueError("logits: expected at least one row to average the loss over")
    if int(bins.min()) < 0 or int(bins.max()) >= K:
        raise ValueError(f"bins: values must lie in [0, K={K}), got [{int(bins.min())}, {int(bins.max())}]")
    return M, K, A


def bet_loss(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    bins: torch.Tensor,
    residuals: torch.Tensor,
    *,
    gamma: float = 2.0,
    offset_weight: float = 1000.0,
    weight: Optional[torch.Tensor] = None,
) -> BeTLoss:
    """BeT / C-BeT head loss: focal loss on the action bin + ``offset_weight`` x MSE of the true bin's offset.

    ``class_loss = mean_m -(1 - p_m)^gamma log p_m`` with ``p_m = softmax(logits_m)[bins_m]``;
    ``offset_loss = mean_{m, a} (offsets[m, bins_m, a] - residuals[m, a])^2``. The C++ (CPU),
    Triton (CUDA) and PyTorch backends compute both parts and their gradients in one pass
    (one exp per logit); the backward only scales the saved gradients. Weighted means with
    ``weight`` (e.g. a 0/1 padding mask); the weights get no gradient.

    Args:
        logits: ``(..., K)`` bin logits.
        offsets: ``(..., K, A)`` per-bin offsets.
        bins: ``(...)`` int64 true bins (:meth:`KMeansDiscretizer.encode`).
        residuals: ``(..., A)`` true residuals ``action - centre[bin]``.
        gamma: focal loss exponent (2 in BeT / C-BeT; 0 is cross-entropy).
        offset_weight: lambda, the weight of the offset MSE (C-BeT: large, e.g. 1e3).
        weight: optional ``(...)`` non-negative row weights.
    Returns:
        :class:`BeTLoss` (loss, class_loss, offset_loss), differentiable w.r.t. logits, offsets
        and residuals.

    Example:
        >>> out = bet_loss(logits, offsets, bins, residuals, gamma=2.0, offset_weight=1e3)
        >>> out.loss.backward()
    """
    M, K, A = _check_loss_inputs(logits, offsets, bins, residuals, weight, gamma, offset_weight)
    z = logits.reshape(M, K)
    o = offsets.reshape(M, K, A)
    b = bins.reshape(M).long()
    r = residuals.reshape(M, A)
    w = None
    if weight is not None:
        w = weight.reshape(M).to(logits.dtype)
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise ValueError("weight: expected finite non-negative row weights")
        total = float(w.sum())
        if total <= 0:
            raise ValueError("weight: the row weights sum to 0 (no row to average over)")
    else:
        total = float(M)
    gamma = float(gamma)
    backend = _ext.select_backend("bet_loss", logits.device, IMPLEMENTED)
    if logits.dtype not in (torch.float32, torch.float64) and backend == "cpp":
        backend = "torch"  # half precision on the CPU: computed in float32 by the PyTorch path
    if backend == "triton" and K > 4096:
        backend = "torch"  # more bins than one tile of the Triton kernel
    if backend == "reference":
        cls, off = bet_loss_reference(z, o, b, r, gamma, w)
    else:
        need_grad = torch.is_grad_enabled() and (logits.requires_grad or offsets.requires_grad
                                                 or residuals.requires_grad)
        if backend == "cpp":
            fn = ops.bet_loss_cpp
        elif backend == "triton":
            from . import triton as _tri

            fn = _tri.bet_loss_triton
        else:
            fn = ops.bet_loss_torch
        parts, _, _ = fn(z, o, b, r, w, gamma, 1.0 / total, need_grad)
        cls, off = parts[0], parts[1]
    return BeTLoss(cls + offset_weight * off, cls, off)


def sample_actions(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    centers: torch.Tensor,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample actions from the head: ``bin ~ Categorical(softmax(logits / temperature))``, ``action = centre + offset``.

    Gumbel-max sampling in float32/float64 (``temperature = 0``: the most likely bin).

    Args:
        logits: ``(..., K)``; offsets: ``(..., K, A)``; centers: ``(K, A)``.
        temperature: >= 0.
        generator: optional generator on the logits' device.
    Returns:
        actions ``(..., A)`` (offsets' dtype) and bins ``(...)`` int64.

    Example:
        >>> actions, bins = sample_actions(logits[:, -1], offsets[:, -1], model.discretizer.centers)
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if offsets.shape[:-1] != logits.shape:
        raise ValueError(f"offsets: expected shape {tuple(logits.shape)} + (A,), got {tuple(offsets.shape)}")
    K, A = offsets.shape[-2], offsets.shape[-1]
    if centers.shape != (K, A):
        raise ValueError(f"centers: expected shape ({K}, {A}) (num_bins, action_dim), got {tuple(centers.shape)}")
    lead = logits.shape[:-1]
    z = logits.reshape(-1, K)
    if temperature == 0:
        bins = z.argmax(-1)
    else:
        zf = z.float() if z.dtype != torch.float64 else z
        u = torch.rand(zf.shape, dtype=zf.dtype, device=z.device, generator=generator)
        tiny = torch.finfo(zf.dtype).tiny
        gumbel = -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))
        bins = (zf + temperature * gumbel).argmax(-1)  # = argmax(z / T + g); no overflow for tiny T
    o = offsets.reshape(-1, K, A)
    rows = torch.arange(o.shape[0], device=o.device)
    actions = centers.to(o.dtype)[bins] + o[rows, bins]
    return actions.view(*lead, A), bins.view(lead)


class BeTHead(nn.Module):
    """Linear head from features to K bin logits and K x A offsets.

    Args:
        in_features: feature width.
        num_bins: K.
        action_dim: A.

    Shapes: ``(..., in_features)`` -> logits ``(..., K)``, offsets ``(..., K, A)``.
    """

    def __init__(self, in_features: int, num_bins: int, action_dim: int) -> None:
        super().__init__()
        self.num_bins, self.action_dim = num_bins, action_dim
        self.proj = nn.Linear(in_features, num_bins * (1 + action_dim))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.proj(h)
        K, A = self.num_bins, self.action_dim
        return out[..., :K], out[..., K:].unflatten(-1, (K, A))

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, action_dim={self.action_dim}"

