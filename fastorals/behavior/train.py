"""Training on play data and vectorised rollouts (shared by BeT, C-BeT and the MLP baselines)."""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol

import torch
from torch import nn

from .data import PlayData, WindowSampler
from .head import BeTLoss

__all__ = ["Policy", "rollout", "train_policy"]


class Policy(Protocol):
    """What :func:`train_policy` and :func:`rollout` need from a policy."""

    history: int
    goal_tokens: int

    def prepare(self, obs: torch.Tensor, actions: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Any: ...

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, goal: Optional[torch.Tensor] = None,
             mask: Optional[torch.Tensor] = None) -> Any: ...

    def act(self, obs: torch.Tensor, goal: Optional[torch.Tensor] = None, temperature: float = 1.0,
            generator: Optional[torch.Generator] = None) -> torch.Tensor: ...


def train_policy(
    policy: nn.Module,
    data: PlayData,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-4,
    weight_decay: float = 0.1,
    warmup: int = 100,
    grad_clip: float = 1.0,
    goal_mode: str = "tail",
    min_gap: int = 1,
    seed: int = 0,
    prepare: bool = True,
) -> dict[str, list[float]]:
    """Train ``policy`` on windows of ``data`` with AdamW (linear warm-up, cosine decay to 10%).

    Paper settings: lr 1e-4, gradient clipping at 1. ``policy.prepare`` (normalisers, k-means
    bins) runs first unless ``prepare=False``.

    Args:
        policy: a :class:`BehaviorTransformer`, :class:`MLPPolicy` or anything with the :class:`Policy` methods.
        data: the play data.
        steps: optimisation steps.
        batch_size, lr, weight_decay, warmup, grad_clip: optimiser settings.
        goal_mode, min_gap: goal sampling (see :class:`WindowSampler`).
        seed: seed of the window sampling (and of dropout via the global generator).
    Returns:
        ``{"loss": [...], "class_loss": [...], "offset_loss": [...]}`` per step (the last two for BeT only).
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
    if prepare:
        policy.prepare(data.obs, data.actions, data.mask)
    sampler = WindowSampler(data, policy.history, policy.goal_tokens, goal_mode, min_gap)
    decay, no_decay = [], []
    for name, p in policy.named_parameters():
        (decay if p.dim() >= 2 and "pos_embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95), foreach=True)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    hist: dict[str, list[float]] = {"loss": [], "class_loss": [], "offset_loss": []}
    policy.train()
    for _ in range(steps):
        b = sampler.sample(batch_size, g)
        out = policy.loss(b["obs"], b["actions"], b.get("goal"), b["mask"])
        loss = out.loss if isinstance(out, BeTLoss) else out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        opt.step()
        sched.step()
        hist["loss"].append(float(loss.detach()))
        if isinstance(out, BeTLoss):
            hist["class_loss"].append(float(out.class_loss.detach()))
            hist["offset_loss"].append(float(out.offset_loss.detach()))
    policy.eval()
    return hist


@torch.no_grad()
def rollout(
    env: Any,
    policy: nn.Module,
    *,
    goal: Optional[torch.Tensor] = None,
    steps: Optional[int] = None,
    temperature: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Run ``policy`` in every episode of a vectorised ``env`` at once.

    The policy sees the last ``policy.history`` observations (the first observation repeated
    before the episode start, as in training) and ``goal`` (C-BeT / goal-conditioned BC).

    Args:
        env: an environment with ``reset()``, ``step(actions)``, ``num_envs``, ``max_steps``.
        policy: a trained policy (put in eval mode here).
        goal: ``(num_envs, goal_tokens, obs_dim)`` goal frames, or None.
        steps: episode length (default ``env.max_steps``).
        temperature: sampling temperature of BeT policies.
        generator: generator of the action sampling (on the env's device).
    Returns:
        observations ``(num_envs, steps + 1, obs_dim)``.
    """
    policy.eval()
    steps = env.max_steps if steps is None else steps
    obs = env.reset()
    hist = obs[:, None].expand(-1, policy.history, -1).contiguous()
    traj = [obs]
    for _ in range(steps):
        a = policy.act(hist, goal, temperature, generator)
        obs, _ = env.step(a)
        traj.append(obs)
        hist = torch.cat([hist[:, 1:], obs[:, None]], 1)
    return torch.stack(traj, 1)
