"""BehaviorTransformer: unconditional BeT (goal_tokens=0) and goal-conditioned C-BeT."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..transformer import GPT, GPTConfig
from .cluster import KMeansDiscretizer
from .head import BeTHead, BeTLoss, bet_loss, sample_actions

__all__ = ["BehaviorTransformer", "Normalizer", "check_goal", "check_obs"]


class Normalizer(nn.Module):
    """Per-feature standardisation with statistics fitted on data (buffers, saved in ``state_dict``)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, min_std: float = 1e-3) -> Normalizer:
        flat = x.reshape(-1, x.shape[-1])
        if mask is not None:
            flat = flat[mask.reshape(-1).to(torch.bool)]
        if flat.shape[0] == 0:
            raise ValueError("data: no valid rows to fit the normalizer on")
        flat = flat.double()
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0, unbiased=False).clamp_min(min_std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


def check_obs(obs: torch.Tensor, obs_dim: int, history: int, who: str) -> None:
    if not isinstance(obs, torch.Tensor):
        raise TypeError(f"{who}: obs must be a torch.Tensor, got {type(obs).__name__}")
    if obs.dim() != 3 or obs.shape[-1] != obs_dim or not obs.dtype.is_floating_point:
        raise ValueError(f"{who}: obs must be (B, T, obs_dim={obs_dim}) float, got shape {tuple(obs.shape)} "
                         f"dtype {obs.dtype}")
    if not 1 <= obs.shape[1] <= history:
        raise ValueError(f"{who}: obs has T={obs.shape[1]} steps; expected 1 <= T <= history={history}")


def check_goal(goal: Optional[torch.Tensor], batch: int, goal_tokens: int, goal_dim: int, who: str) -> Optional[torch.Tensor]:
    """Validate ``goal`` against the model's goal_tokens; (B, goal_dim) is accepted when goal_tokens == 1."""
    if goal_tokens == 0:
        if goal is not None:
            raise ValueError(f"{who}: this model is unconditional (goal_tokens=0) but a goal was given")
        return None
    if goal is None:
        raise ValueError(f"{who}: goal is required: (B, goal_tokens={goal_tokens}, goal_dim={goal_dim})")
    if not isinstance(goal, torch.Tensor):
        raise TypeError(f"{who}: goal must be a torch.Tensor, got {type(goal).__name__}")
    if goal.dim() == 2 and goal_tokens == 1:
        goal = goal[:, None]
    if goal.dim() != 3 or goal.shape[0] != batch or goal.shape[2] != goal_dim:
        raise ValueError(f"{who}: goal must be (B={batch}, goal_tokens={goal_tokens}, goal_dim={goal_dim}), "
                         f"got shape {tuple(goal.shape)}")
    if goal.shape[1] != goal_tokens:
        raise ValueError(f"{who}: goal length mismatch: the model takes goal_tokens={goal_tokens} goal frames, "
                         f"got {goal.shape[1]}")
    return goal


class BehaviorTransformer(nn.Module):
    """Behavior Transformer (BeT) and its goal-conditioned form C-BeT.

    A causal GPT (:class:`fastorals.transformer.GPT`) reads ``goal_tokens`` goal observations
    followed by up to ``history`` observations; at every observation position a :class:`BeTHead`
    predicts K bin logits and K x A offsets over k-means action bins (:class:`KMeansDiscretizer`).
    Training minimises focal loss (gamma) on the bin + ``offset_weight`` x MSE of the true bin's
    offset (:func:`bet_loss`); acting samples a bin at ``temperature`` and adds its offset.
    ``goal_tokens=0`` is the unconditional BeT.

    Args:
        obs_dim: observation size.
        act_dim: action size A.
        num_bins: k-means bins K (paper: 24-64).
        history: observation window h (paper: 10 Kitchen, 3 block push).
        goal_tokens: goal frames g prepended (0: BeT).
        goal_dim: goal frame size (default ``obs_dim``: goals are future observations).
        n_layer, n_head, n_embd, dropout: GPT size (block push: 4/4/72).
        gamma: focal loss exponent (2).
        offset_weight: lambda of the offset MSE (C-BeT: 1e3).
        kmeans_iters, kmeans_init, seed: the discretizer's k-means settings.

    Shapes:
        obs ``(B, T, obs_dim)`` with ``T <= history``; goal ``(B, goal_tokens, goal_dim)``;
        ``forward`` -> logits ``(B, T, K)``, offsets ``(B, T, K, A)``; ``act`` -> ``(B, A)``.

    Example:
        >>> model = BehaviorTransformer(obs_dim=6, act_dim=2, num_bins=24, history=5, goal_tokens=1)
        >>> model.prepare(data.obs, data.actions, data.mask)         # normaliser + k-means bins
        >>> out = model.loss(obs, actions, goal=goal, mask=mask)      # BeTLoss
        >>> out.loss.backward()
        >>> a = model.eval().act(obs_window, goal=goal, temperature=1.0)   # (B, 2)
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_bins: int = 24,
        history: int = 10,
        goal_tokens: int = 0,
        *,
        goal_dim: Optional[int] = None,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 72,
        dropout: float = 0.1,
        gamma: float = 2.0,
        offset_weight: float = 1000.0,
        kmeans_iters: int = 50,
        kmeans_init: str = "k-means++",
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, val, lo in (("obs_dim", obs_dim, 1), ("act_dim", act_dim, 1), ("num_bins", num_bins, 1),
                              ("history", history, 1), ("goal_tokens", goal_tokens, 0)):
            if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {val!r}")
        goal_dim = obs_dim if goal_dim is None else goal_dim
        if not isinstance(goal_dim, int) or goal_dim < 1:
            raise ValueError(f"goal_dim: expected a positive int, got {goal_dim!r}")
        self.obs_dim, self.act_dim, self.num_bins = obs_dim, act_dim, num_bins
        self.history, self.goal_tokens, self.goal_dim = history, goal_tokens, goal_dim
        self.gamma, self.offset_weight = float(gamma), float(offset_weight)
        self.discretizer = KMeansDiscretizer(num_bins, act_dim, iters=kmeans_iters, init=kmeans_init, seed=seed)
        self.obs_norm = Normalizer(obs_dim)
        self.goal_norm = Normalizer(goal_dim) if goal_tokens and goal_dim != obs_dim else None
        self.obs_embed = nn.Linear(obs_dim, n_embd)
        self.goal_embed = nn.Linear(goal_dim, n_embd) if goal_tokens else None
        self.gpt = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=goal_tokens + history,
                                 output_dim=0, dropout=dropout, pos="learned"))
        self.head = BeTHead(n_embd, num_bins, act_dim)

    def extra_repr(self) -> str:
        return (f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, num_bins={self.num_bins}, history={self.history}, "
                f"goal_tokens={self.goal_tokens}, gamma={self.gamma}, offset_weight={self.offset_weight}")

    # ------------------------------------------------------------------ data-dependent setup
    @torch.no_grad()
    def prepare(self, obs: torch.Tensor, actions: torch.Tensor, mask: Optional[torch.Tensor] = None,
                goals: Optional[torch.Tensor] = None) -> BehaviorTransformer:
        """Fit the observation normaliser and the k-means action bins on the dataset.

        Goals that are observations (``goal_dim == obs_dim``) share the observation normaliser;
        other goals are standardised with ``goals`` ``(..., goal_dim)`` when given (else left as is).

        Args:
            obs: ``(..., obs_dim)``; actions: ``(..., act_dim)``; mask: ``(...)`` valid steps;
            goals: optional goal samples.
        Returns:
            self.
        """
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs: expected last dim obs_dim={self.obs_dim}, got shape {tuple(obs.shape)}")
        if actions.shape[-1] != self.act_dim:
            raise ValueError(f"actions: expected last dim act_dim={self.act_dim}, got shape {tuple(actions.shape)}")
        if actions.shape[:-1] != obs.shape[:-1]:
            raise ValueError(f"actions: expected leading shape {tuple(obs.shape[:-1])} like obs, got {tuple(actions.shape)}")
        self.obs_norm.fit(obs, mask)
        if self.goal_norm is not None and goals is not None:
            if goals.shape[-1] != self.goal_dim:
                raise ValueError(f"goals: expected last dim goal_dim={self.goal_dim}, got shape {tuple(goals.shape)}")
            self.goal_norm.fit(goals)
        self.discretizer.fit(actions, mask)
        return self

    # ------------------------------------------------------------------ model
    def _tokens(self, obs: torch.Tensor, goal: Optional[torch.Tensor]) -> torch.Tensor:
        h = self.obs_embed(self.obs_norm(obs))
        if goal is not None:
            gn = self.goal_norm if self.goal_norm is not None else self.obs_norm
            h = torch.cat([self.goal_embed(gn(goal)), h], dim=1)
        return h

    def forward(self, obs: torch.Tensor, goal: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin logits ``(B, T, K)`` and offsets ``(B, T, K, A)`` at every observation position."""
        check_obs(obs, self.obs_dim, self.history, "BehaviorTransformer")
        goal = check_goal(goal, obs.shape[0], self.goal_tokens, self.goal_dim, "BehaviorTransformer")
        hidden = self.gpt(self._tokens(obs, goal))
        return self.head(hidden[:, self.goal_tokens :])

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, goal: Optional[torch.Tensor] = None,
             mask: Optional[torch.Tensor] = None) -> BeTLoss:
        """BeT loss over every position of the window.

        Args:
            obs: ``(B, T, obs_dim)``; actions: ``(B, T, act_dim)``; goal: ``(B, g, goal_dim)``;
            mask: ``(B, T)`` 1 for real steps, 0 for padding.
        Returns:
            :class:`BeTLoss`.
        """
        if actions.shape != (*obs.shape[:2], self.act_dim):
            raise ValueError(f"actions: expected shape {(*obs.shape[:2], self.act_dim)} (B, T, act_dim), "
                             f"got {tuple(actions.shape)}")
        if not bool(torch.isfinite(actions).all()):
            raise ValueError("actions: NaN or infinite values")
        self.discretizer._require_fit()
        logits, offsets = self(obs, goal)
        bins, residuals = self.discretizer.encode(actions.to(offsets.dtype))
        weight = None if mask is None else mask.to(offsets.dtype)
        return bet_loss(logits, offsets, bins, residuals, gamma=self.gamma, offset_weight=self.offset_weight,
                        weight=weight)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, goal: Optional[torch.Tensor] = None, temperature: float = 1.0,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Sample the action of the last step of each window: ``(B, A)``."""
        self.discretizer._require_fit()  # unfitted bins are all zero: every action would be an offset
        logits, offsets = self(obs, goal)
        actions, _ = sample_actions(logits[:, -1], offsets[:, -1], self.discretizer.centers, temperature, generator)
        return actions
