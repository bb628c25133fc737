"""A compact training loop for regression models built from a backbone and a regression head."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..data.loader import TensorLoader
from ..training.loop import make_schedule, seed_everything, to_float_images
from .heads import RegressionModel, param_groups


@dataclass
class RegressionHistory:
    """Per-epoch training loss and test MAE (NaN where not evaluated)."""

    train_loss: list[float] = field(default_factory=list)
    test_mae: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def evaluate_mae(model: RegressionModel, data: TensorLoader, mode: Optional[str] = None) -> float:
    """Mean absolute error of ``model.predict`` over ``data`` (eval mode)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    err, n = 0.0, 0
    for x, y in data:
        x, y = to_float_images(x.to(dev)), y.to(dev)
        pred = model.predict(model(x), mode)
        err += float((pred.double() - y.double()).abs().sum())
        n += y.shape[0]
    model.train(was)
    return err / max(n, 1)


def fit_regression(
    model: RegressionModel,
    train: TensorLoader,
    epochs: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    grad_clip: Optional[float] = None,
    augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    test: Optional[TensorLoader] = None,
    eval_every: int = 0,
    seed: Optional[int] = 0,
    progress: bool = False,
) -> RegressionHistory:
    """Train ``model`` with Adam (RLEL code matrices at their own learning rate) for ``epochs``.

    Args:
        model: a :class:`RegressionModel`.
        train: loader of (inputs, targets); uint8 images are scaled to [0, 1].
        epochs: number of epochs.
        lr, weight_decay: Adam settings (see :func:`param_groups`).
        schedule: per-step schedule ("cosine", "onecycle", "constant", ...).
        grad_clip: max gradient norm.
        augment: optional ``fn(x) -> x`` on float batches.
        test: evaluated at the end, and every ``eval_every`` epochs if > 0.
        seed: seeds Python/NumPy/torch first (None: leave them).

    Returns:
        RegressionHistory.
    """
    if not isinstance(model, RegressionModel):
        raise TypeError(f"model: expected a RegressionModel, got {type(model).__name__}")
    if epochs < 0:
        raise ValueError(f"epochs: expected >= 0, got {epochs}")
    if seed is not None:
        seed_everything(seed)
    dev = next(model.parameters()).device
    opt = torch.optim.Adam(param_groups(model, lr, weight_decay))
    steps = max(len(train), 1)
    sched = make_schedule(opt, schedule, epochs * steps, int(warmup_epochs * steps))
    hist = RegressionHistory()
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs * steps, disable=not progress, desc="fit", unit="batch", leave=False)
    for epoch in range(epochs):
        train.set_epoch(epoch)
        model.train()
        tot, n = 0.0, 0
        for x, y in train:
            x, y = to_float_images(x.to(dev, non_blocking=True)), y.to(dev, non_blocking=True)
            if augment is not None:
                x = augment(x)
            loss = model.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"fit_regression: loss became {lv} at epoch {epoch}; lower lr")
            tot += lv * y.shape[0]
            n += y.shape[0]
            bar.update(1)
        hist.train_loss.append(tot / max(n, 1))
        last = epoch + 1 == epochs
        if test is not None and (last or (eval_every > 0 and (epoch + 1) % eval_every == 0)):
            hist.test_mae.append(evaluate_mae(model, test))
        else:
            hist.test_mae.append(float("nan"))
    bar.close()
    return hist
