"""Training of the Algorithm Distillation model on learning histories (single process or DDP).

Windows of ``model.config.context`` consecutive steps are cut from random histories at random
episode boundaries (``align="episode"``, matching the in-context evaluation whose window always
starts at an episode boundary) or at any step (``align="step"``); the loss is the NLL of the
source algorithm's action at every step of every window.

Determinism and resume: the windows and dropout masks of step ``i`` on rank ``r`` come from
generators seeded with ``(seed, r, i)``, so a run resumed from a checkpoint continues exactly as
the uninterrupted run would (tested), with any number of ranks.

DDP: under ``torchrun`` (``torch.distributed`` initialised, world size > 1) the model is wrapped
in ``DistributedDataParallel``, each rank draws its own windows (``batch_size`` per rank) and the
gradients are all-reduced; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._args import int_arg
from ..training import load_checkpoint, save_checkpoint
from .history import LearningHistories
from .model import ADConfig, ADModel, shift_history

__all__ = ["TrainResult", "load_ad_checkpoint", "sample_windows", "train_ad"]


@dataclass
class TrainResult:
    """History of :func:`train_ad`: loss/accuracy averaged over each logging interval."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps_run: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "loss": self.loss, "accuracy": self.accuracy, "lr": self.lr,
                "seconds": self.seconds, "steps_run": self.steps_run}


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mix(*xs: int) -> int:
    """A 62-bit seed from integers (splitmix-style), stable across processes and versions."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & ((1 << 62) - 1)


class _Streams:
    """Histories on the training device with the previous-step inputs precomputed."""

    def __init__(self, hist: LearningHistories, device: torch.device) -> None:
        self.obs = hist.obs.to(device).long()
        self.actions = hist.actions.to(device).long()
        self.pa, self.pr, self.pd = shift_history(hist.actions.to(device), hist.rewards.to(device),
                                                  hist.dones.to(device), hist.num_actions)
        self.N, self.L = hist.actions.shape
        self.H = hist.horizon


def sample_windows(streams: _Streams, batch: int, length: int, generator: torch.Generator, align: str
                   ) -> tuple[torch.Tensor, ...]:
    """``batch`` windows of ``length`` steps: (obs, actions, prev_actions, prev_rewards, prev_dones)."""
    N, L, H = streams.N, streams.L, streams.H
    dev = streams.actions.device
    n = torch.randint(0, N, (batch,), generator=generator)
    if align == "episode":
        n_starts = (L - length) // H + 1
        start = torch.randint(0, n_starts, (batch,), generator=generator) * H
    else:
        start = torch.randint(0, L - length + 1, (batch,), generator=generator)
    n, start = n.to(dev), start.to(dev)
    idx = start.unsqueeze(1) + torch.arange(length, device=dev)
    rows = n.unsqueeze(1)
    return (streams.obs[rows, idx], streams.actions[rows, idx], streams.pa[rows, idx], streams.pr[rows, idx],
            streams.pd[rows, idx])


def _lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float) -> float:
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def train_ad(
    model: ADModel,
    histories: LearningHistories,
    steps: int,
    *,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: Optional[int] = None,
    min_lr_ratio: float = 0.1,
    grad_clip: Optional[float] = 1.0,
    align: str = "episode",
    seed: int = 0,
    checkpoint: Optional[Union[str, os.PathLike[str]]] = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    log_every: int = 50,
    progress: bool = True,
    amp: Optional[bool] = None,
    until: Optional[int] = None,
) -> TrainResult:
    """Train ``model`` to predict the source algorithm's actions from its learning histories.

    Args:
        model: an :class:`ADModel` (on the training device; under torchrun one per rank).
        histories: the dataset (moved to the model's device once).
        steps: total optimizer steps (a resumed run continues up to this number).
        batch_size: windows per step (per rank).
        lr: peak AdamW learning rate (linear warmup, cosine decay to ``min_lr_ratio * lr``).
        weight_decay: AdamW weight decay (not on biases, norms and embeddings).
        warmup: warmup steps (default ``min(500, steps // 10)``).
        grad_clip: max global gradient norm (None: off).
        align: "episode" (windows start at episode boundaries) or "step".
        seed: seed of initialisation-independent randomness (windows, dropout).
        checkpoint: path; written atomically every ``checkpoint_every`` steps and at the end,
            resumed from if present (``resume``); loaded with ``weights_only=True``.
        log_every: steps per logged loss/accuracy point.
        progress: progress bar (rank 0).
        amp: bfloat16 autocast (default: on for CUDA).
        until: stop once this many steps are done (the schedule still spans ``steps``): train in
            chunks, e.g. to evaluate in between; a later call with a larger ``until`` (or none)
            resumes from the checkpoint.
    Returns:
        :class:`TrainResult` (the model is left in eval mode).
    Raises:
        ValueError: histories that do not match the model (actions, observations) or are
            shorter than the context.

    Example:
        >>> model = ADModel(num_actions=5, obs_nvec=(9, 9), context=80, horizon=20)
        >>> res = train_ad(model, hist, steps=3000, batch_size=64, checkpoint="ad.pt")
    """
    if not isinstance(model, ADModel):
        raise TypeError(f"train_ad: model must be an ADModel, got {type(model).__name__}")
    if not isinstance(histories, LearningHistories):
        raise TypeError(f"train_ad: histories must be LearningHistories, got {type(histories).__name__}")
    c = model.config
    if histories.num_actions != c.num_actions:
        raise ValueError(f"train_ad: histories have {histories.num_actions} actions, the model {c.num_actions}")
    if c.obs_nvec is None or tuple(c.obs_nvec) != histories.obs_nvec:
        raise ValueError(f"train_ad: histories have obs_nvec {histories.obs_nvec}, the model {c.obs_nvec}")
    if histories.length < c.context:
        raise ValueError(f"train_ad: histories have {histories.length} steps, shorter than the model context "
                         f"({c.context}); collect more episodes or use a shorter context")
    if align not in ("episode", "step"):
        raise ValueError(f"train_ad: align must be 'episode' or 'step', got {align!r}")
    for arg, val in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every),
                     ("checkpoint_every", checkpoint_every)):
        if isinstance(val, bool) or not isinstance(val, int) or val < (0 if arg == "steps" else 1):
            raise ValueError(f"train_ad: {arg} must be a {'non-negative' if arg == 'steps' else 'positive'} int, got {val!r}")
    if not 0 < lr < math.inf:
        raise ValueError(f"train_ad: lr must be a finite number > 0, got {lr}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"train_ad: min_lr_ratio must be in [0, 1] (the final lr is min_lr_ratio * lr), "
                         f"got {min_lr_ratio}")
    if histories.num_histories == 0:
        raise ValueError("train_ad: histories is empty (no learning histories to train on)")
    if until is not None and (isinstance(until, bool) or not isinstance(until, int) or not 0 <= until <= steps):
        raise ValueError(f"train_ad: until must be an int in [0, steps={steps}], got {until!r}")
    stop = steps if until is None else until
    rank, world = _dist()
    device = next(model.parameters()).device
    amp = device.type == "cuda" if amp is None else bool(amp)
    warmup = min(500, steps // 10) if warmup is None else int_arg(warmup, "train_ad: warmup (or None)", 0)
    streams = _Streams(histories, device)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    res = TrainResult()
    start = 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        st = load_checkpoint(os.fspath(checkpoint), map_location=device)
        if st.get("config") != c.as_dict():
            raise ValueError(f"train_ad: checkpoint {os.fspath(checkpoint)!r} was written for a different model "
                             f"config ({st.get('config')}), this model has {c.as_dict()}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        res = TrainResult(**{k: st["result"][k] for k in ("steps", "loss", "accuracy", "lr", "seconds", "steps_run")})
        start = res.steps_run

    def save() -> None:
        if checkpoint is None:
            return
        if rank == 0:
            save_checkpoint(os.fspath(checkpoint), {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                    "config": c.as_dict(), "result": res.as_dict()})
        if world > 1:
            import torch.distributed as dist

            dist.barrier()

    from tqdm.auto import tqdm

    bar = tqdm(total=max(stop - start, 0), disable=not progress or rank != 0, desc="train AD", unit="step", leave=False)
    t0 = time.perf_counter()
    run_loss = torch.zeros((), device=device)
    run_acc = torch.zeros((), device=device)
    run_n = 0
    model.train()
    for step in range(start, stop):
        g = torch.Generator().manual_seed(_mix(seed, rank, step, 1))
        obs, act, pa, pr, pd = sample_windows(streams, batch_size, c.context, g, align)
        cur_lr = _lr_at(step, steps, lr, warmup, min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = cur_lr
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_mix(seed, rank, step, 2))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(obs, pa, pr, pd)
            loss = F.cross_entropy(logits.float().reshape(-1, c.num_actions), act.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        run_loss += loss.detach()
        run_acc += (logits.detach().argmax(-1) == act).float().mean()
        run_n += 1
        bar.update(1)
        if run_n == log_every or step + 1 == stop:
            lv, av = float(run_loss) / run_n, float(run_acc) / run_n
            if not math.isfinite(lv):
                raise FloatingPointError(f"train_ad: loss became {lv} at step {step}; lower lr")
            res.steps.append(step + 1)
            res.loss.append(lv)
            res.accuracy.append(av)
            res.lr.append(cur_lr)
            bar.set_postfix(loss=f"{lv:.3f}", acc=f"{av:.3f}")
            run_loss.zero_()
            run_acc.zero_()
            run_n = 0
        res.steps_run = step + 1
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < stop:
            res.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            save()
    bar.close()
    res.seconds += time.perf_counter() - t0
    model.eval()
    save()
    return res


def load_ad_checkpoint(path: Union[str, os.PathLike[str]], map_location: Union[str, torch.device] = "cpu"
                       ) -> ADModel:
    """Rebuild an :class:`ADModel` from a :func:`train_ad` checkpoint (``weights_only`` loading), in eval mode."""
    st = load_checkpoint(os.fspath(path), map_location=map_location)
    if not isinstance(st, dict) or "config" not in st or "model" not in st:
        raise ValueError(f"load_ad_checkpoint: {os.fspath(path)!r} is not a train_ad checkpoint")
    model = ADModel(ADConfig(**st["config"]))
    model.load_state_dict(st["model"])
    return model.to(map_location).eval()

