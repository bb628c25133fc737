"""The Algorithm Distillation model: one token per transition, a causal transformer, an action head.

Tokenization (one token per environment step, so a context of ``C`` steps is ``C`` tokens)::

    token_t = E_obs(o_t) + E_act(a_{t-1}) + W_r * r_{t-1} + E_done(d_{t-1})

where ``a_{t-1}``, ``r_{t-1}``, ``d_{t-1}`` are the previous step's action, reward and
end-of-episode flag (a "none" action, reward 0 and done = 1 before the first step of a
stream). The transformer's output at token ``t`` gives the logits of ``a_t``: the model
predicts the source algorithm's next action from the whole across-episode history before it.
Discrete observation components (grid coordinates) are embedded by one table per component and
summed, so a cell never seen as a goal during training still has meaningful coordinates.

Example:
    >>> model = ADModel(ADConfig(num_actions=5, obs_nvec=(9, 9), context=80))
    >>> logits = model(obs, prev_actions, prev_rewards, prev_dones)       # (B, 80, 5)
    >>> nll, acc = model.loss(obs, actions, prev_actions, prev_rewards, prev_dones)  # NLL of the actions
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._args import check_index_range
from ..transformer import GPT, GPTConfig

__all__ = ["ADConfig", "ADModel", "shift_history"]


@dataclass
class ADConfig:
    """Hyper-parameters of :class:`ADModel`.

    Attributes:
        num_actions: discrete actions A.
        obs_nvec: sizes of the integer observation components (e.g. ``(9, 9)``); or None with ``obs_dim``.
        obs_dim: width of continuous observations (instead of ``obs_nvec``).
        context: tokens (= steps) the model attends over; the learned position table's size.
        horizon: steps per episode of the environment the model is meant for (kept with the
            configuration in checkpoints; evaluation takes the episode length from the
            environment it runs, see :func:`default_slide`).
        n_layer, n_head, n_embd: transformer size.
        dropout: residual/embedding dropout.
        attn_dropout: attention-probability dropout.
        pos: "learned" or "rope" positions.
        mlp_ratio: MLP width as a multiple of ``n_embd``.
    """

    num_actions: int
    obs_nvec: Optional[tuple[int, ...]] = None
    obs_dim: Optional[int] = None
    context: int = 80
    horizon: int = 1
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    attn_dropout: float = 0.1
    pos: str = "learned"
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.obs_nvec is not None:
            self.obs_nvec = tuple(int(v) for v in self.obs_nvec)
        if (self.obs_nvec is None) == (self.obs_dim is None):
            raise ValueError("ADConfig: give exactly one of obs_nvec (discrete observations) or obs_dim (continuous)")
        if self.obs_nvec is not None and (not self.obs_nvec or min(self.obs_nvec) < 1):
            raise ValueError(f"ADConfig: obs_nvec must be non-empty positive sizes, got {self.obs_nvec}")
        for arg in ("num_actions", "context", "horizon", "n_layer", "n_head", "n_embd"):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ADConfig: {arg} must be a positive int, got {v!r}")
        if self.obs_dim is not None and (isinstance(self.obs_dim, bool) or not isinstance(self.obs_dim, int)
                                         or self.obs_dim < 1):
            raise ValueError(f"ADConfig: obs_dim must be a positive int, got {self.obs_dim!r}")
        if self.pos not in ("learned", "rope"):
            raise ValueError(f"ADConfig: pos must be 'learned' or 'rope', got {self.pos!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["obs_nvec"] is not None:
            d["obs_nvec"] = list(d["obs_nvec"])
        return d


def shift_history(actions: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor, num_actions: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Previous-step inputs of every token of whole streams ``(N, L)``.

    Returns:
        ``prev_actions`` int64 (``num_actions`` = none at t = 0), ``prev_rewards`` float32 (0 at
        t = 0), ``prev_dones`` bool (True at t = 0), each ``(N, L)``.
    """
    N = actions.shape[0]
    pa = torch.cat([torch.full((N, 1), num_actions, dtype=torch.long, device=actions.device),
                    actions[:, :-1].long()], 1)
    pr = torch.cat([torch.zeros(N, 1, device=rewards.device), rewards[:, :-1].float()], 1)
    pd = torch.cat([torch.ones(N, 1, dtype=torch.bool, device=dones.device), dones[:, :-1]], 1)
    return pa, pr, pd


class ADModel(nn.Module):
    """Causal transformer over across-episode (observation, previous action, previous reward) tokens.

    Args:
        config: an :class:`ADConfig` (or its fields as keyword arguments).

    Shapes:
        obs ``(B, T, K)`` int64 (or ``(B, T, obs_dim)`` float), prev_actions ``(B, T)`` int64 in
        ``[0, A]`` (A = none), prev_rewards ``(B, T)`` float, prev_dones ``(B, T)`` bool ->
        logits ``(B, T, A)``; ``T <= context``.

    Example:
        >>> model = ADModel(num_actions=10, obs_nvec=(1,), context=100, n_embd=64)
        >>> logits = model(torch.zeros(8, 100, 1, dtype=torch.long), pa, pr, pd)   # (8, 100, 10)
    """

    def __init__(self, config: Optional[ADConfig] = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = ADConfig(**kwargs)
        elif kwargs:
            raise TypeError("ADModel: pass either an ADConfig or keyword fields, not both")
        if not isinstance(config, ADConfig):
            raise TypeError(f"ADModel: config must be an ADConfig, got {type(config).__name__}")
        self.config = c = config
        if c.obs_nvec is not None:
            offsets = torch.tensor([0, *list(c.obs_nvec)[:-1]], dtype=torch.long).cumsum(0)
            self.register_buffer("obs_offsets", offsets, persistent=False)
            self.obs_embed: nn.Module = nn.Embedding(sum(c.obs_nvec), c.n_embd)
        else:
            self.obs_offsets = None
            self.obs_embed = nn.Linear(c.obs_dim, c.n_embd)
        self.act_embed = nn.Embedding(c.num_actions + 1, c.n_embd)
        self.rew_embed = nn.Linear(1, c.n_embd)
        self.done_embed = nn.Embedding(2, c.n_embd)
        self.gpt = GPT(GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.context,
                                 output_dim=c.num_actions, pos=c.pos, dropout=c.dropout,
                                 attn_dropout=c.attn_dropout, mlp_ratio=c.mlp_ratio))
        for emb in (self.act_embed, self.done_embed):
            nn.init.normal_(emb.weight, 0.0, 0.02)
        if isinstance(self.obs_embed, nn.Embedding):
            nn.init.normal_(self.obs_embed.weight, 0.0, 0.02)

    def extra_repr(self) -> str:
        c = self.config
        return f"num_actions={c.num_actions}, obs_nvec={c.obs_nvec}, obs_dim={c.obs_dim}, context={c.context}"

    # ------------------------------------------------------------------ tokens
    def _check(self, obs: torch.Tensor, prev_actions: torch.Tensor, prev_rewards: torch.Tensor,
               prev_dones: torch.Tensor) -> None:
        c = self.config
        if prev_actions.dim() != 2:
            raise ValueError(f"ADModel: prev_actions must be (B, T), got shape {tuple(prev_actions.shape)}")
        B, T = prev_actions.shape
        K = len(c.obs_nvec) if c.obs_nvec is not None else c.obs_dim
        if obs.shape != (B, T, K):
            raise ValueError(f"ADModel: obs must be (B, T, {K}) = {(B, T, K)}, got {tuple(obs.shape)}")
        if c.obs_nvec is not None and (obs.dtype.is_floating_point or obs.dtype == torch.bool):
            raise TypeError(f"ADModel: obs must be integer observation components, got dtype {obs.dtype}")
        for arg, t in (("prev_rewards", prev_rewards), ("prev_dones", prev_dones)):
            if t.shape != (B, T):
                raise ValueError(f"ADModel: {arg} must be (B, T) = {(B, T)}, got {tuple(t.shape)}")
        if T > c.context:
            raise ValueError(f"ADModel: sequence of {T} steps exceeds the context ({c.context})")
        if prev_actions.dtype.is_floating_point or prev_actions.dtype == torch.bool:
            raise TypeError(f"ADModel: prev_actions must be integer action ids, got dtype {prev_actions.dtype}")
        if prev_dones.dtype.is_floating_point:
            raise TypeError(f"ADModel: prev_dones must be bool (or 0/1 integers), got dtype {prev_dones.dtype}")
        if obs.device.type != "cuda":  # ranges read on the host: checked off the GPU only (no sync there)
            check_index_range(prev_actions, "ADModel: prev_actions", c.num_actions + 1, f"[0, num_actions={c.num_actions}]")
            check_index_range(prev_dones.long(), "ADModel: prev_dones", 2, "{0, 1}")
            if c.obs_nvec is not None:
                for k, n in enumerate(c.obs_nvec):
                    check_index_range(obs[..., k], f"ADModel: obs[..., {k}]", n, f"[0, obs_nvec[{k}]={n})")

    def embed(self, obs: torch.Tensor, prev_actions: torch.Tensor, prev_rewards: torch.Tensor,
              prev_dones: torch.Tensor) -> torch.Tensor:
        """Token vectors ``(B, T, n_embd)`` (without positions: the transformer adds them)."""
        self._check(obs, prev_actions, prev_rewards, prev_dones)
        if self.obs_offsets is not None:
            h = self.obs_embed(obs.long() + self.obs_offsets).sum(2)
        else:
            h = self.obs_embed(obs.to(self.rew_embed.weight.dtype))
        dt = h.dtype
        h = h + self.act_embed(prev_actions.long())
        h = h + self.rew_embed(prev_rewards.to(dt).unsqueeze(-1))
        return h + self.done_embed(prev_dones.long())

    def forward(self, obs: torch.Tensor, prev_actions: torch.Tensor, prev_rewards: torch.Tensor,
                prev_dones: torch.Tensor) -> torch.Tensor:
        """Action logits ``(B, T, A)`` at every step of the windows."""
        return self.gpt(self.embed(obs, prev_actions, prev_rewards, prev_dones))

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, prev_actions: torch.Tensor, prev_rewards: torch.Tensor,
             prev_dones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean NLL of the source algorithm's ``actions`` ``(B, T)``, and the accuracy of the argmax."""
        logits = self(obs, prev_actions, prev_rewards, prev_dones)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), actions.reshape(-1).long())
        acc = (logits.detach().argmax(-1) == actions).float().mean()
        return nll, acc

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
