"""Offline play data: padded trajectories and a vectorised window + goal sampler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

__all__ = ["GOAL_MODES", "PlayData", "WindowSampler"]

GOAL_MODES = ("tail", "future")


@dataclass
class PlayData:
    """A set of trajectories, right-padded to a common length.

    Attributes:
        obs: ``(N, T, obs_dim)`` observations (``obs[n, t]`` is seen before ``actions[n, t]``).
        actions: ``(N, T, act_dim)``.
        lengths: ``(N,)`` int64 valid steps per trajectory.
        modes: ``(N,)`` int64 behaviour mode of each demonstration (route, goal order), or None.
        final_obs: ``(N, obs_dim)`` observation after the last action, or None.
        info: free-form metadata (mode names, generator settings).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    lengths: torch.Tensor
    modes: Optional[torch.Tensor] = None
    final_obs: Optional[torch.Tensor] = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.obs.dim() != 3 or self.actions.dim() != 3:
            raise ValueError(f"obs/actions: expected (N, T, dim) tensors, got {tuple(self.obs.shape)} and "
                             f"{tuple(self.actions.shape)}")
        if self.obs.shape[:2] != self.actions.shape[:2]:
            raise ValueError(f"actions: expected (N, T) = {tuple(self.obs.shape[:2])} like obs, got "
                             f"{tuple(self.actions.shape[:2])}")
        if self.lengths.shape != (self.obs.shape[0],):
            raise ValueError(f"lengths: expected shape ({self.obs.shape[0]},), got {tuple(self.lengths.shape)}")
        if int(self.lengths.min()) < 1 or int(self.lengths.max()) > self.obs.shape[1]:
            raise ValueError(f"lengths: expected values in [1, T={self.obs.shape[1]}]")
        if not bool(torch.isfinite(self.actions[self.mask]).all()):
            raise ValueError("actions: NaN or infinite values in the valid steps")

    @property
    def mask(self) -> torch.Tensor:
        """``(N, T)`` bool, True on valid steps."""
        t = torch.arange(self.obs.shape[1], device=self.obs.device)
        return t[None, :] < self.lengths[:, None]

    def __len__(self) -> int:
        return self.obs.shape[0]

    def subset(self, idx: torch.Tensor) -> PlayData:
        """The trajectories ``idx`` (same padding)."""
        return PlayData(self.obs[idx], self.actions[idx], self.lengths[idx],
                        None if self.modes is None else self.modes[idx],
                        None if self.final_obs is None else self.final_obs[idx], dict(self.info))

    def goal_frames(self, goal_tokens: int, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The last ``goal_tokens`` observations of trajectories ``idx`` (default all), ending with
        ``final_obs`` when known: ``(n, goal_tokens, obs_dim)``. This is C-BeT's evaluation goal."""
        idx = torch.arange(len(self), device=self.obs.device) if idx is None else idx
        seq = self._with_final()
        lens = self.lengths[idx] + (1 if self.final_obs is not None else 0)
        t = lens[:, None] - goal_tokens + torch.arange(goal_tokens, device=seq.device)[None, :]
        return seq[idx[:, None], t.clamp_min(0)]

    def _with_final(self) -> torch.Tensor:
        """obs with final_obs written after each trajectory's last step: ``(N, T + 1, obs_dim)``."""
        seq = torch.cat([self.obs, self.obs[:, -1:]], 1)
        if self.final_obs is not None:
            seq[torch.arange(len(self), device=seq.device), self.lengths] = self.final_obs
        return seq


class WindowSampler:
    """Random training windows of ``history`` steps with C-BeT's future-goal conditioning, as tensors.

    A window ends at a uniformly drawn valid step ``t`` (every step equally likely); steps before
    the trajectory start repeat its first observation and get mask 0 (evaluation starts the same
    way). Goals (``goal_tokens`` frames of the same trajectory):

    * ``"tail"``: its last frames (the end state it reached; the evaluation goal of C-BeT);
    * ``"future"``: consecutive frames starting at a uniform time in ``[t + min_gap, end]``
      (clamped at the end).

    Args:
        data: :class:`PlayData`.
        history: window length h.
        goal_tokens: goal frames g (0: no goals).
        goal_mode: "tail" or "future".
        min_gap: minimum steps between the window end and a "future" goal.

    Example:
        >>> sampler = WindowSampler(data, history=5, goal_tokens=1)
        >>> batch = sampler.sample(64, generator)
        >>> batch["obs"].shape, batch["goal"].shape
        (torch.Size([64, 5, 6]), torch.Size([64, 1, 6]))
    """

    def __init__(self, data: PlayData, history: int, goal_tokens: int = 0, goal_mode: str = "tail",
                 min_gap: int = 1) -> None:
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history: expected a positive int, got {history!r}")
        if not isinstance(goal_tokens, int) or goal_tokens < 0:
            raise ValueError(f"goal_tokens: expected a non-negative int, got {goal_tokens!r}")
        if goal_mode not in GOAL_MODES:
            raise ValueError(f"goal_mode: expected one of {GOAL_MODES}, got {goal_mode!r}")
        if not isinstance(min_gap, int) or min_gap < 0:
            raise ValueError(f"min_gap: expected a non-negative int, got {min_gap!r}")
        self.data, self.history, self.goal_tokens = data, history, goal_tokens
        self.goal_mode, self.min_gap = goal_mode, min_gap
        mask = data.mask
        self._traj, self._step = torch.nonzero(mask, as_tuple=True)
        self._seq = data._with_final()
        self._end = data.lengths + (1 if data.final_obs is not None else 0)  # frames incl. the final obs

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """A batch: obs ``(B, h, obs_dim)``, actions ``(B, h, act_dim)``, mask ``(B, h)`` and goal
        ``(B, g, obs_dim)`` (only when ``goal_tokens > 0``)."""
        d = self.data
        dev = d.obs.device
        pick = torch.randint(self._traj.numel(), (batch_size,), generator=generator).to(dev)
        n, t = self._traj[pick], self._step[pick]
        rel = torch.arange(-self.history + 1, 1, device=dev)
        idx = t[:, None] + rel[None, :]
        mask = idx >= 0
        idx = idx.clamp_min(0)
        out = {"obs": d.obs[n[:, None], idx], "actions": d.actions[n[:, None], idx], "mask": mask}
        if self.goal_tokens:
            g = self.goal_tokens
            end = self._end[n]
            if self.goal_mode == "tail":
                start = end - g
            else:
                lo = (t + self.min_gap).clamp_max(end - 1)
                u = torch.rand(batch_size, generator=generator).to(dev)
                start = lo + (u * (end - lo).to(u.dtype)).long().clamp_max(end - lo - 1)
            gidx = (start[:, None] + torch.arange(g, device=dev)[None, :]).clamp(min=0)
            gidx = torch.minimum(gidx, (end - 1)[:, None])
            out["goal"] = self._seq[n[:, None], gidx]
        return out
