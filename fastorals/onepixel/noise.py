"""Baseline: error-minimizing noise (Huang, Ma, Erfani, Bailey, Wang, ICLR 2021, "Unlearnable
Examples") and the CIFAR-10-S construction of the OPS paper (OPS on top of EM noise)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._args import check_index_range
from ..data.dataset import check_image_batch
from ..training.loop import make_optimizer, to_float_images
from .ops import value_stats
from .pattern import ShortcutPattern
from .search import _check_values, apply_shortcut, search_shortcut


def error_minimizing_noise(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = 8 / 255,
    step_size: float = 0.8 / 255,
    pgd_steps: int = 20,
    train_steps: int = 10,
    batch_size: int = 128,
    stop_accuracy: float = 0.99,
    max_rounds: int = 20,
    lr: float = 0.1,
    sample_wise: bool = True,
    num_classes: Optional[int] = None,
    augment: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Bi-level min-min optimisation of l_inf-bounded noise that MINIMIZES the training loss.

    Alternates (a) ``train_steps`` SGD steps of ``model`` on ``clip(x + noise)`` and (b) for every
    sample, ``pgd_steps`` signed-gradient DESCENT steps on the noise (projected to [-eps, eps]
    and to the valid pixel range), until the model's accuracy on the perturbed data exceeds
    ``stop_accuracy`` or ``max_rounds`` rounds have run. The model is trained in place.

    Args:
        model: classifier on float inputs in [0, 1] (its parameters' device is used).
        images: uint8 [N, C, H, W] or float in [0, 1].
        labels: int64 [N].
        eps: l_inf bound (8/255 as in the paper).
        step_size: noise step (0.8/255).
        pgd_steps: noise steps per round (20).
        train_steps: model steps per round (10).
        sample_wise: one noise per sample (True) or one per class (False).
        augment: optional ``fn(x, y) -> x`` applied to the perturbed float batch before the model
            step (as the original uses standard augmentation).
        seed: seeds batch order and the initial noise.

    Returns:
        float32 noise [N, C, H, W] (class-wise noise is expanded to every sample), on ``images``' device.

    Example:
        >>> noise = error_minimizing_noise(resnet20(), x, y, max_rounds=10)
        >>> x_em = (x.float() / 255 + noise).clamp(0, 1)
    """
    check_image_batch(images)
    if images.shape[0] == 0:
        raise ValueError("images: expected at least one image")
    if images.is_floating_point():  # float data in [0, 255] would be clamped to near-binary images
        _check_values(value_stats(images.detach()))
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels: expected an integer tensor [N], got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels: expected shape [{images.shape[0]}], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor, got {labels.dtype}")
    if eps <= 0 or step_size <= 0:
        raise ValueError(f"eps/step_size: expected positive values, got eps={eps}, step_size={step_size}")
    if min(pgd_steps, train_steps, batch_size, max_rounds) < 1:
        raise ValueError("pgd_steps/train_steps/batch_size/max_rounds: expected >= 1")
    if not 0 < stop_accuracy <= 1:
        raise ValueError(f"stop_accuracy: expected a value in (0, 1], got {stop_accuracy}")
    device = next(model.parameters()).device
    x_all = to_float_images(images.to(device))
    y_all = labels.to(device).long()
    K = int(num_classes if num_classes is not None else int(y_all.max()) + 1)
    check_index_range(y_all, "labels", K, f"[0, num_classes={K})")
    g = torch.Generator().manual_seed(seed)
    N = x_all.shape[0]
    shape = (N, *x_all.shape[1:]) if sample_wise else (K, *x_all.shape[1:])
    noise = ((torch.rand(shape, generator=g) * 2 - 1) * eps).to(device)

    def batch_noise(idx: torch.Tensor) -> torch.Tensor:
        return noise[idx] if sample_wise else noise[y_all[idx]]

    opt = make_optimizer(model, "sgd", lr=lr, weight_decay=5e-4)
    from tqdm.auto import tqdm

    bar = tqdm(range(max_rounds), desc="EM noise", disable=not progress, leave=False)
    cursor = N
    perm = torch.arange(N)
    for _ in bar:
        # (a) a few model steps on perturbed data
        model.train()
        for _ in range(train_steps):
            if cursor + batch_size > N:
                perm, cursor = torch.randperm(N, generator=g), 0
            idx = perm[cursor : cursor + batch_size].to(device)
            cursor += batch_size
            xb = (x_all[idx] + batch_noise(idx)).clamp(0, 1)
            if augment is not None:
                xb = augment(xb, y_all[idx])
            loss = F.cross_entropy(model(xb), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        # (b) noise steps that minimize the loss, for every sample (or every class)
        model.eval()
        if sample_wise:
            for s in range(0, N, batch_size):
                idx = torch.arange(s, min(s + batch_size, N), device=device)
                x0, y0 = x_all[idx], y_all[idx]
                delta = noise[idx].clone()
                for _ in range(pgd_steps):
                    delta.requires_grad_(True)
                    loss = F.cross_entropy(model((x0 + delta).clamp(0, 1)), y0)
                    (grad,) = torch.autograd.grad(loss, delta)
                    with torch.no_grad():
                        delta = (delta - step_size * grad.sign()).clamp(-eps, eps)
                        delta = (x0 + delta).clamp(0, 1) - x0
                noise[idx] = delta.detach()
        else:
            for _ in range(pgd_steps):
                grad_sum = torch.zeros_like(noise)
                for s in range(0, N, batch_size):
                    idx = torch.arange(s, min(s + batch_size, N), device=device)
                    delta = noise[y_all[idx]].clone().requires_grad_(True)
                    loss = F.cross_entropy(model((x_all[idx] + delta).clamp(0, 1)), y_all[idx], reduction="sum")
                    (grad,) = torch.autograd.grad(loss, delta)
                    grad_sum.index_add_(0, y_all[idx], grad)
                noise = (noise - step_size * grad_sum.sign()).clamp(-eps, eps)
        # stop once the model fits the perturbed data
        with torch.no_grad():
            correct = 0
            for s in range(0, N, 4 * batch_size):
                idx = torch.arange(s, min(s + 4 * batch_size, N), device=device)
                correct += int((model((x_all[idx] + batch_noise(idx)).clamp(0, 1)).argmax(1) == y_all[idx]).sum())
        acc = correct / N
        bar.set_postfix(acc=f"{acc:.3f}")
        if acc >= stop_accuracy:
            break
    bar.close()
    full = noise if sample_wise else noise[y_all]
    return full.float()


def ops_plus_em(
    images: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    num_classes: Optional[int] = None,
    sparsity: int = 1,
) -> tuple[torch.Tensor, ShortcutPattern]:
    """The CIFAR-10-S construction: OPS searched on and applied to EM-perturbed images.

    Each image becomes ``clip(x + noise)`` except at its class's shortcut pixel(s).

    Args:
        images: uint8 [N, C, H, W] or float in [0, 1].
        labels: int64 [N].
        noise: float [N, C, H, W] (e.g. from :func:`error_minimizing_noise`), in pixel units of [0, 1].

    Returns:
        (perturbed images in the input dtype — uint8 is rounded, pattern found on the EM data).
    """
    check_image_batch(images)
    if noise.shape != images.shape:
        raise ValueError(f"noise: expected shape {tuple(images.shape)} like images, got {tuple(noise.shape)}")
    x = to_float_images(images).to(noise.device) if images.dtype == torch.uint8 else images.to(noise.device)
    x_em = (x + noise).clamp(0, 1)
    if images.dtype == torch.uint8:
        x_em = x_em.mul(255).round_().to(torch.uint8)
    pattern = search_shortcut(x_em, labels, num_classes, sparsity)
    return apply_shortcut(x_em, labels, pattern), pattern
