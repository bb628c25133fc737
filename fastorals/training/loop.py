"""A small, complete training loop shared by every module's reproduction.

``fit`` handles: optimizer and learning-rate schedule, an optional per-batch augmentation
callback, optional PGD adversarial training, a progress bar, seeding, evaluation, and
checkpoint save/resume (loaded with ``torch.load(weights_only=True)``) such that a resumed
run ends with exactly the parameters of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._args import int_arg
from .._io import atomic_write
from ..data.loader import TensorLoader
from .attacks import pgd_attack

Batch = tuple[torch.Tensor, torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float inputs pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


@dataclass
class AdversarialConfig:
    """PGD adversarial training: train on pgd_attack(x) with these settings."""

    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 7
    norm: str = "linf"


@dataclass
class FitResult:
    """Per-epoch history of ``fit``: lists of floats (NaN where not evaluated)."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epochs_run: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_optimizer(
    model: nn.Module, name: str = "sgd", lr: float = 0.1, weight_decay: float = 5e-4, momentum: float = 0.9,
    params: Optional[Iterable[Any]] = None,
) -> torch.optim.Optimizer:
    """SGD (Nesterov-free, momentum) or Adam/AdamW over ``params`` (default: model parameters)."""
    p = list(params) if params is not None else [q for q in model.parameters() if q.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(p, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: expected 'sgd', 'adam' or 'adamw', got {name!r}")


def make_schedule(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int = 0,
    milestones: Optional[list[int]] = None, gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: "constant", "cosine", "onecycle" (linear up then down) or "multistep"
    (``milestones`` in steps), each after ``warmup_steps`` of linear warm-up."""
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        if name == "cosine":
            t = (step - warmup_steps) / max(total - warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if name == "onecycle":
            peak = max(total // 4, 1)
            return (step + 1) / peak if step < peak else max(0.0, (total - step) / max(total - peak, 1))
        if name == "multistep":
            return gamma ** sum(step >= m for m in (milestones or []))
        raise ValueError(f"schedule: expected 'constant', 'cosine', 'onecycle' or 'multistep', got {name!r}")

    factor(0)  # validate the name now
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Union[Iterable[Batch], TensorLoader],
    *,
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    attack: Optional[AdversarialConfig] = None,
    device: Optional[torch.device] = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (eval mode) over ``data``; optionally under PGD ``attack``.

    Returns:
        {"loss": float, "acc": float, "n": int}
    """
    loss_fn = loss_fn or F.cross_entropy
    was = model.training
    model.eval()
    dev = device or next(model.parameters()).device
    tot_loss, correct, n = 0.0, 0, 0
    for x, y in data:
        x, y = to_float_images(x.to(dev)), y.to(dev)
        if attack is not None:
            x = pgd_attack(model, x, y, attack.eps, attack.alpha, attack.steps, norm=attack.norm)
        logits = model(x)
        tot_loss += float(loss_fn(logits, y)) * y.shape[0]
        correct += int((logits.argmax(1) == y).sum())
        n += y.shape[0]
    model.train(was)
    if n == 0:  # nothing evaluated: no accuracy to report (not 0)
        return {"loss": float("nan"), "acc": float("nan"), "n": 0}
    return {"loss": tot_loss / n, "acc": correct / n, "n": n}


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
        "python_gauss": float("nan") if random.getstate()[2] is None else float(random.getstate()[2]),
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    keys = np.frombuffer(s["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, int(s["numpy_pos"]), 0, 0.0))
    gauss = None if math.isnan(s["python_gauss"]) else s["python_gauss"]
    random.setstate((3, tuple(int(v) for v in s["python"].tolist()), gauss))


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any], path: str) -> None:
    """Load a checkpoint's optimizer state, refusing one saved by another optimizer type (whose
    per-parameter state would fail at the first step, or load silently with other meanings)."""
    saved = state.get("param_groups", [{}])
    keys_saved = set(saved[0]) if saved else set()
    keys_now = set(opt.param_groups[0]) if opt.param_groups else set()
    if keys_saved != keys_now:
        raise ValueError(f"checkpoint: {path} holds the state of another optimizer (hyper-parameters "
                         f"{sorted(keys_saved ^ keys_now)} differ); resume with the optimizer it was saved with")
    opt.load_state_dict(state)


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (write to a temporary file, then rename): a crash mid-save
    never destroys the previous checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f))


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def load_checkpoint(path: str, map_location: Union[str, torch.device, None] = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors, numbers, strings, containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def fit(
    model: nn.Module,
    train: TensorLoader,
    epochs: int,
    *,
    optimizer: Optional[torch.optim.Optimizer] = None,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    optimizer_name: str = "sgd",
    schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    milestones: Optional[list[float]] = None,
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    augment: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    adversarial: Optional[AdversarialConfig] = None,
    test: Optional[Iterable[Batch]] = None,
    eval_every: int = 1,
    checkpoint: Optional[str] = None,
    resume: bool = True,
    seed: Optional[int] = 0,
    grad_clip: Optional[float] = None,
    on_epoch_start: Optional[Callable[[int, nn.Module], None]] = None,
    progress: Union[bool, str] = True,
    extra_state: Optional[dict[str, Any]] = None,
) -> FitResult:
    """Train ``model`` for ``epochs`` over ``train``.

    Args:
        model: any nn.Module mapping float inputs in [0, 1] to logits (a DDP-wrapped module under
            torchrun: the loader then gives each rank its share of every epoch).
        train: a :class:`TensorLoader` (its per-epoch order makes resume exact).
        epochs: total epochs (a resumed run continues up to this number).
        optimizer: default ``make_optimizer(model, optimizer_name, lr, weight_decay)``.
        schedule: "cosine" | "onecycle" | "multistep" | "constant", stepped per batch;
            ``milestones`` in epochs for "multistep" (x0.1 each).
        loss_fn: ``loss_fn(logits, y)``, default cross-entropy. A loss whose ``follows_fit_epoch``
            is True (the long-tailed losses of :mod:`fastorals.curriculum`, whose DRW weights switch
            at ``drw_epoch``) gets ``set_epoch(epoch)`` before each epoch.
        augment: per-batch ``fn(x, y) -> x`` on the raw batch (uint8 or float) before conversion.
        adversarial: PGD adversarial training settings (``AdversarialConfig``).
        test: evaluated every ``eval_every`` epochs and at the end.
        checkpoint: path; saved atomically after every epoch and resumed from if present
            (``resume``). Holds model, optimizer, schedule, loader and RNG states and the history.
            Under DDP only rank 0 writes it (after a barrier every rank can resume from it).
        seed: seeds Python/NumPy/torch at the start (None: leave the RNG alone).
        grad_clip: max gradient norm.
        on_epoch_start: ``fn(epoch, model)`` hook (e.g. a curriculum update).
        progress: show a progress bar; a string shows it with that label (default "fit").
        extra_state: objects with ``state_dict``/``load_state_dict`` (e.g. a curriculum) saved in
            and restored from the checkpoint.

    Returns:
        FitResult with per-epoch train/test loss and accuracy.

    Example:
        >>> loader = TensorLoader(x, y, batch_size=128, device="cpu")
        >>> hist = fit(resnet20(), loader, epochs=10, lr=0.1, test=TensorLoader(xt, yt, 512, shuffle=False))
    """
    epochs = int_arg(epochs, "epochs", 0)
    eval_every = int_arg(eval_every, "eval_every")
    if not isinstance(train, TensorLoader):
        raise TypeError(f"train: expected a fastorals.data.TensorLoader, got {type(train).__name__}")
    loss_fn = loss_fn or F.cross_entropy
    if seed is not None:
        seed_everything(seed)
    device = next(model.parameters()).device
    opt = optimizer or make_optimizer(model, optimizer_name, lr, weight_decay)
    if len(train) == 0:
        raise ValueError("train: the loader yields no batches (fewer samples than batch_size with drop_last=True, "
                         "or an empty data set): nothing would be trained")
    steps_per_epoch = len(train)
    sched = make_schedule(
        opt, schedule, epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch),
        [int(m * steps_per_epoch) for m in (milestones or [])],
    )
    hist = FitResult()
    start = 0
    extras = extra_state or {}
    if checkpoint and resume and os.path.exists(checkpoint):
        st = load_checkpoint(checkpoint, map_location=device)
        missing = [k for k in ("model", "optimizer", "schedule", "loader", "rng", "history")
                   if not isinstance(st, dict) or k not in st]
        if missing:
            raise ValueError(f"checkpoint: {checkpoint} is not a fit checkpoint (missing {missing}); pass another path "
                             "or resume=False to start over")
        model.load_state_dict(st["model"])
        _load_optimizer(opt, st["optimizer"], checkpoint)
        sched.load_state_dict(st["schedule"])
        train.load_state_dict(st["loader"])
        for k, obj in extras.items():
            if k not in st.get("extra", {}):
                raise KeyError(f"extra_state: checkpoint {checkpoint} has no state for {k!r}")
            obj.load_state_dict(st["extra"][k])
        _set_rng_state(st["rng"])
        hist = FitResult(**st["history"])
        start = hist.epochs_run

    from tqdm.auto import tqdm

    label = progress if isinstance(progress, str) else "fit"
    bar = tqdm(total=(epochs - start) * steps_per_epoch, disable=not progress, desc=label, unit="batch", leave=False)
    follow = getattr(loss_fn, "follows_fit_epoch", False) is True  # the long-tailed losses' DRW schedule
    for epoch in range(start, epochs):
        if follow:
            loss_fn.set_epoch(epoch)  # type: ignore[union-attr]
        if on_epoch_start is not None:
            on_epoch_start(epoch, model)
        train.set_epoch(epoch)
        model.train()
        tot, correct, n = 0.0, 0, 0
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, y)
            x = to_float_images(x)
            if adversarial is not None:
                model.eval()
                x = pgd_attack(model, x, y, adversarial.eps, adversarial.alpha, adversarial.steps,
                               norm=adversarial.norm, loss_fn=loss_fn)
                model.train()
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise FloatingPointError(f"fit: loss became {lv} at epoch {epoch}; lower lr or check the data")
            tot += lv * y.shape[0]
            correct += int((logits.detach().argmax(1) == y).sum())
            n += y.shape[0]
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{tot / max(n, 1):.3f}", acc=f"{correct / max(n, 1):.3f}")
        if n == 0:
            raise ValueError(f"train: the loader yielded no batches in epoch {epoch}")
        hist.train_loss.append(tot / n)
        hist.train_acc.append(correct / n)
        hist.lr.append(float(opt.param_groups[0]["lr"]))
        if test is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            ev = evaluate(model, test, loss_fn=loss_fn)
            hist.test_loss.append(ev["loss"])
            hist.test_acc.append(ev["acc"])
        else:
            hist.test_loss.append(float("nan"))
            hist.test_acc.append(float("nan"))
        hist.epochs_run = epoch + 1
        if checkpoint and _is_main_process():
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
                "loader": train.state_dict(), "rng": _rng_state(), "history": hist.as_dict(),
                "extra": {k: obj.state_dict() for k, obj in extras.items()},
            })
        if checkpoint:
            _barrier()
    bar.close()
    return hist
