"""Baselines of BeT / C-BeT: MLP behaviour cloning, unconditional and goal-conditioned.

The unconditional BeT baseline is :class:`~fastorals.behavior.BehaviorTransformer` with
``goal_tokens=0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from .model import Normalizer, check_goal, check_obs

__all__ = ["MLPPolicy"]


class MLPPolicy(nn.Module):
    """Behaviour cloning with an MLP and a mean-squared-error loss (a unimodal, mean-seeking policy).

    The input is the last ``history`` observations (flattened) and, for goal-conditioned BC
    (``goal_tokens > 0``), the goal frames; the output is the action of the last step.

    Args:
        obs_dim, act_dim: sizes.
        history: observations fed to the MLP.
        goal_tokens: goal frames (0: plain BC; > 0: goal-conditioned BC).
        goal_dim: goal frame size (default ``obs_dim``).
        hidden: hidden widths.
        dropout: dropout after each hidden layer.

    Example:
        >>> bc = MLPPolicy(obs_dim=6, act_dim=2, history=5, goal_tokens=1)
        >>> bc.prepare(data.obs, data.actions, data.mask)
        >>> loss = bc.loss(obs, actions, goal=goal, mask=mask)
        >>> a = bc.act(obs, goal=goal)                 # (B, 2), deterministic
    """

    def __init__(self, obs_dim: int, act_dim: int, history: int = 1, goal_tokens: int = 0, *,
                 goal_dim: Optional[int] = None, hidden: Sequence[int] = (256, 256, 256), dropout: float = 0.0) -> None:
        super().__init__()
        for name, val, lo in (("obs_dim", obs_dim, 1), ("act_dim", act_dim, 1), ("history", history, 1),
                              ("goal_tokens", goal_tokens, 0)):
            if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {val!r}")
        self.obs_dim, self.act_dim, self.history, self.goal_tokens = obs_dim, act_dim, history, goal_tokens
        self.goal_dim = obs_dim if goal_dim is None else goal_dim
        self.obs_norm = Normalizer(obs_dim)
        self.goal_norm = Normalizer(self.goal_dim) if goal_tokens else None
        self.act_norm = Normalizer(act_dim)
        widths = [history * obs_dim + goal_tokens * self.goal_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], act_dim))
        self.net = nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, history={self.history}, goal_tokens={self.goal_tokens}"

    @torch.no_grad()
    def prepare(self, obs: torch.Tensor, actions: torch.Tensor, mask: Optional[torch.Tensor] = None,
                goals: Optional[torch.Tensor] = None) -> MLPPolicy:
        """Fit the observation/goal/action normalisers on the dataset (goals of another size than
        observations on ``goals``); returns self."""
        if obs.shape[-1] != self.obs_dim or actions.shape[-1] != self.act_dim:
            raise ValueError(f"obs/actions: expected last dims {self.obs_dim}/{self.act_dim}, got "
                             f"{tuple(obs.shape)}/{tuple(actions.shape)}")
        self.obs_norm.fit(obs, mask)
        if self.goal_norm is not None and self.goal_dim == self.obs_dim:
            self.goal_norm.fit(obs, mask)
        elif self.goal_norm is not None and goals is not None:
            self.goal_norm.fit(goals)
        self.act_norm.fit(actions, mask)
        return self

    def _input(self, obs: torch.Tensor, goal: Optional[torch.Tensor]) -> torch.Tensor:
        check_obs(obs, self.obs_dim, 10**9, "MLPPolicy")
        goal = check_goal(goal, obs.shape[0], self.goal_tokens, self.goal_dim, "MLPPolicy")
        x = self.obs_norm(obs)
        T = x.shape[1]
        if T < self.history:  # pad on the left with the first observation
            x = torch.cat([x[:, :1].expand(-1, self.history - T, -1), x], 1)
        parts = [x[:, -self.history :].flatten(1)]
        if goal is not None:
            parts.append(self.goal_norm(goal).flatten(1))
        return torch.cat(parts, 1)

    def forward(self, obs: torch.Tensor, goal: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Action of the last step ``(B, act_dim)`` from obs ``(B, T, obs_dim)`` (and goal)."""
        return self.act_norm.inverse(self.net(self._input(obs, goal)))

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, goal: Optional[torch.Tensor] = None,
             mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """MSE (in normalised action units) of the last step's action; windows ``(B, T, ...)``."""
        if actions.shape != (*obs.shape[:2], self.act_dim):
            raise ValueError(f"actions: expected shape {(*obs.shape[:2], self.act_dim)}, got {tuple(actions.shape)}")
        pred = self.net(self._input(obs, goal))
        err = ((pred - self.act_norm(actions[:, -1])) ** 2).mean(1)
        if mask is None:
            return err.mean()
        w = mask[:, -1].to(err.dtype)
        return (err * w).sum() / w.sum().clamp_min(1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, goal: Optional[torch.Tensor] = None, temperature: float = 1.0,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Deterministic action ``(B, act_dim)`` (``temperature``/``generator`` accepted for a common interface)."""
        return self(obs, goal)
