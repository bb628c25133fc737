"""PGD attacks (Madry et al. 2018) in pixel space and the adversarial training step."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def _check_attack_args(x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm: expected 'linf' or 'l2', got {norm!r}")
    if eps < 0 or alpha < 0:
        raise ValueError(f"eps/alpha: expected non-negative values, got eps={eps}, alpha={alpha}")
    if steps < 0:
        raise ValueError(f"steps: expected >= 0, got {steps}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x: expected float inputs in [0, 1], got {x.dtype} (convert uint8 with x.float() / 255)")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y: {y.shape[0]} labels for {x.shape[0]} inputs")


def _l2_normalize(g: torch.Tensor) -> torch.Tensor:
    n = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / n.view(-1, *([1] * (g.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = torch.clamp(eps / n, max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: Optional[float] = None,
    steps: int = 10,
    *,
    norm: str = "linf",
    random_start: bool = True,
    clamp: tuple[float, float] = (0.0, 1.0),
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Projected gradient ascent on the loss within an l_inf or l_2 ball around ``x``.

    Args:
        model: maps x to logits (kept in whatever train/eval mode it is in).
        x: float [N, ...] inputs in [clamp[0], clamp[1]].
        y: int64 [N] labels.
        eps: radius (e.g. 8/255 for l_inf, 0.5 for l_2).
        alpha: step size (default 2.5 * eps / steps).
        steps: iterations.
        norm: "linf" (signed gradient steps) or "l2" (normalized gradient steps).
        random_start: start from a uniform point in the ball (l_inf) / a random direction (l_2).
        clamp: valid input range, enforced at every step.
        loss_fn: default cross-entropy.

    Returns:
        x_adv with ``||x_adv - x|| <= eps`` (up to float rounding) in the chosen norm.

    Example:
        >>> x_adv = pgd_attack(model, x, y, eps=8 / 255, alpha=2 / 255, steps=10)
    """
    alpha = 2.5 * eps / max(steps, 1) if alpha is None else alpha
    _check_attack_args(x, y, eps, alpha, steps, norm)
    loss_fn = loss_fn or F.cross_entropy
    x = x.detach()
    if random_start and eps > 0:
        if norm == "linf":
            delta = (torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1) * eps
        else:
            d = torch.randn(x.shape, generator=generator, device="cpu").to(x)
            r = torch.rand(x.shape[0], generator=generator, device="cpu").to(x)
            delta = _l2_normalize(d) * (eps * r).view(-1, *([1] * (x.dim() - 1)))
    else:
        delta = torch.zeros_like(x)
    delta = (torch.clamp(x + delta, *clamp) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            step = grad.sign() if norm == "linf" else _l2_normalize(grad)
            delta = _project(delta + alpha * step, eps, norm)
            delta = torch.clamp(x + delta, *clamp) - x
        delta = delta.detach()
    return (x + delta).detach()


def adversarial_training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: Optional[float] = None,
    steps: int = 7,
    *,
    norm: str = "linf",
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> tuple[float, torch.Tensor]:
    """One step of PGD adversarial training: attack (model in eval mode), then train on x_adv.

    Returns:
        (loss value, logits on x_adv).
    """
    loss_fn = loss_fn or F.cross_entropy
    was_training = model.training
    model.eval()
    x_adv = pgd_attack(model, x, y, eps, alpha, steps, norm=norm, loss_fn=loss_fn)
    model.train(was_training)
    optimizer.zero_grad(set_to_none=True)
    logits = model(x_adv)
    loss = loss_fn(logits, y)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), logits.detach()
