"""In-context evaluation: frozen AD weights, hundreds of environments in parallel, KV-cache decoding.

Each environment instance gets a new task (by default the held-out "test" split) and an empty
context. Every step the model reads one new token per instance (the current observation with
the previous action/reward), samples an action, and the environment steps; returns improve from
episode to episode only through what accumulates in the context.

The context window holds ``model.config.context`` steps. With the KV cache
(``window="reprefill"`` of :class:`fastorals.transformer.KVCache`) a full window drops its
oldest ``slide`` steps (a multiple of the episode length, so the window always starts at an
episode boundary, as in training) and the kept steps are re-run once; every other step costs one
token. ``use_cache=False`` recomputes the same window from scratch at every step (what
reimplementations do): identical outputs, ``~context/2`` times the work (tested and benchmarked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .envs import VecEnv
from .model import ADModel

__all__ = ["InContextResult", "default_slide", "evaluate_algorithm", "evaluate_in_context", "sample_actions"]


@dataclass
class InContextResult:
    """Outcome of :func:`evaluate_in_context`.

    Attributes:
        returns: ``(num_envs, num_episodes)`` float32 return of every episode.
        task_ids: ``(num_envs,)`` task of each instance.
        optimal: ``(num_envs,)`` float64 optimal expected return per episode of each task.
        actions: ``(num_envs, num_episodes * horizon)`` int64 actions taken (``record_actions``).
        steps: environment steps per instance.
        seconds: wall time of the rollout.
    """

    returns: torch.Tensor
    task_ids: torch.Tensor
    optimal: torch.Tensor
    actions: Optional[torch.Tensor]
    steps: int
    seconds: float

    @property
    def num_envs(self) -> int:
        return self.returns.shape[0]

    @property
    def steps_per_second(self) -> float:
        """Environment steps (all instances) per second, model included."""
        return self.num_envs * self.steps / max(self.seconds, 1e-12)

    def curve(self) -> torch.Tensor:
        """``(num_episodes,)`` mean return per episode across instances."""
        return self.returns.float().mean(0)

    def normalized_curve(self) -> torch.Tensor:
        """``(num_episodes,)`` mean return divided by the mean optimal return."""
        return self.curve() / self.optimal.float().mean()

    def as_dict(self) -> dict[str, Any]:
        return {"curve": self.curve().tolist(), "optimal": float(self.optimal.float().mean()),
                "steps_per_second": self.steps_per_second, "num_envs": self.num_envs}


def default_slide(context: int, horizon: int) -> int:
    """Steps dropped when the window is full: a whole number of episodes, about a quarter of the window."""
    episodes = max(1, context // horizon)
    if horizon > context:
        return context
    return horizon * max(1, round(episodes / 4))


def sample_actions(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Sample from ``softmax(logits / temperature)`` row-wise (Gumbel-max); ``temperature == 0``: argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
    return (logits.float() + temperature * gumbel).argmax(-1)  # = argmax(z / T + g); no overflow for tiny T


class _Window:
    """The recompute path's window: token vectors of the last steps, same slide rule as the cache."""

    def __init__(self, batch: int, max_len: int, slide: int, width: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.buf = torch.zeros(batch, max_len, width, dtype=dtype, device=device)
        self.len = 0
        self.max_len, self.slide = max_len, slide

    def push(self, x: torch.Tensor) -> torch.Tensor:
        if self.len + 1 > self.max_len:
            drop = min(self.slide, self.len)
            self.buf[:, : self.len - drop] = self.buf[:, drop: self.len].clone()
            self.len -= drop
        self.buf[:, self.len] = x[:, 0]
        self.len += 1
        return self.buf[:, : self.len]


@torch.no_grad()
def evaluate_in_context(
    model: ADModel,
    env: VecEnv,
    num_envs: Optional[int] = None,
    num_episodes: int = 20,
    temperature: float = 1.0,
    *,
    task_ids: Optional[torch.Tensor] = None,
    split: str = "test",
    use_cache: bool = True,
    slide: Optional[int] = None,
    seed: int = 0,
    record_actions: bool = False,
    progress: bool = False,
) -> InContextResult:
    """Roll the frozen model out in context on many environment instances at once.

    Args:
        model: a trained :class:`ADModel` (set to eval mode; weights are not changed).
        env: the environment; when ``num_envs`` differs from ``env.num_envs`` a fresh instance of
            the same configuration is built (:meth:`VecEnv.with_num_envs`).
        num_envs: parallel instances (default ``env.num_envs``).
        num_episodes: episodes per instance (one pull per episode for bandits).
        temperature: sampling temperature (0: greedy; greedy decoding is known to get stuck).
        task_ids: ``(num_envs,)`` tasks; default: the ``split`` tasks cycled over the instances.
        split: split the default tasks come from ("test": held out from training).
        use_cache: KV-cache decoding (True) or a full recompute of the window every step.
        slide: steps dropped when the window is full (a multiple of the horizon; default
            :func:`default_slide`).
        seed: seeds the environment and the action sampling.
        record_actions: also return every action.
        progress: show a progress bar.
    Returns:
        :class:`InContextResult` with ``returns`` ``(num_envs, num_episodes)``.
    Raises:
        ValueError / TypeError: a model that does not fit the environment, bad arguments.

    Example:
        >>> res = evaluate_in_context(model, DarkRoom(256), num_episodes=40, temperature=1.0)
        >>> res.curve()          # (40,) mean return per episode on held-out goals
    """
    if not isinstance(model, ADModel):
        raise TypeError(f"evaluate_in_context: model must be an ADModel, got {type(model).__name__}")
    if not isinstance(env, VecEnv):
        raise TypeError(f"evaluate_in_context: env must be a VecEnv, got {type(env).__name__}")
    c = model.config
    if c.num_actions != env.num_actions:
        raise ValueError(f"evaluate_in_context: the model has {c.num_actions} actions, the env {env.num_actions}")
    if c.obs_nvec is None or tuple(c.obs_nvec) != tuple(env.obs_nvec):
        raise ValueError(f"evaluate_in_context: the model expects observations {c.obs_nvec}, the env gives "
                         f"{env.obs_nvec}")
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"evaluate_in_context: num_episodes must be a positive int, got {num_episodes!r}")
    temperature = float(temperature)
    if not 0 <= temperature < float("inf"):
        raise ValueError(f"evaluate_in_context: temperature must be a finite number >= 0, got {temperature}")
    if num_envs is not None and num_envs != env.num_envs:
        env = env.with_num_envs(num_envs, seed=seed)
    B, H, L = env.num_envs, env.horizon, c.context
    if slide is None:
        slide = default_slide(L, H)
    if isinstance(slide, bool) or not isinstance(slide, int) or not 1 <= slide <= L:
        raise ValueError(f"evaluate_in_context: slide must be an int in [1, context={L}], got {slide!r}")
    if L >= H and slide % H:
        raise ValueError(f"evaluate_in_context: slide ({slide}) must be a multiple of the horizon ({H}) so the "
                         "window starts at an episode boundary")
    if task_ids is None:
        task_ids = env.sample_tasks(B, split=split, cycle=True)
    obs = env.reset(task_ids, seed=seed)
    device = next(model.parameters()).device
    if env.device != device:
        raise ValueError(f"evaluate_in_context: the model is on {device}, the env on {env.device}")
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) + 1)
    dtype = next(model.parameters()).dtype
    if use_cache:
        cache = model.gpt.make_cache(B, max_len=L, window="reprefill", slide=slide)
    else:
        window = _Window(B, L, slide, c.n_embd, dtype, device)
    returns = torch.zeros(B, num_episodes, device=device)
    actions_out = torch.zeros(B, num_episodes * H, dtype=torch.long, device=device) if record_actions else None
    prev_a = torch.full((B, 1), c.num_actions, dtype=torch.long, device=device)
    prev_r = torch.zeros(B, 1, device=device)
    prev_d = torch.ones(B, 1, dtype=torch.bool, device=device)

    from tqdm.auto import tqdm

    bar = tqdm(total=num_episodes, disable=not progress, desc="in-context", unit="episode", leave=False)
    t0 = time.perf_counter()
    try:
        for e in range(num_episodes):
            for t in range(H):
                x = model.embed(obs.unsqueeze(1), prev_a, prev_r, prev_d)
                if use_cache:
                    logits = model.gpt.step(x, cache)[:, -1]
                else:
                    logits = model.gpt(window.push(x))[:, -1]
                a = sample_actions(logits, temperature, gen)
                res = env.step(a)
                returns[:, e] += res.reward
                if actions_out is not None:
                    actions_out[:, e * H + t] = a
                prev_a, prev_r, prev_d = a.unsqueeze(1), res.reward.unsqueeze(1), res.done.unsqueeze(1)
                obs = res.obs
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - t0
    try:
        optimal = env.optimal_return(env.task_ids)
    except NotImplementedError:
        optimal = torch.full((B,), float("nan"), dtype=torch.float64)
    return InContextResult(returns.cpu(), env.task_ids.cpu(), optimal.cpu(),
                           None if actions_out is None else actions_out.cpu(), num_episodes * H, seconds)


def evaluate_algorithm(
    algorithm: Any,
    env: VecEnv,
    num_episodes: int,
    *,
    task_ids: Optional[torch.Tensor] = None,
    split: str = "test",
    seed: int = 0,
    record_actions: bool = False,
) -> InContextResult:
    """Run a source algorithm (learning from scratch) on ``env``: its learning curve, in the same
    form as :func:`evaluate_in_context` (to plot both on the same tasks).

    Args:
        algorithm: a :class:`~fastorals.distillation.algorithms.SourceAlgorithm`.
        env: the environment (all its instances are used).
        num_episodes: episodes per instance.
        task_ids: ``(num_envs,)`` tasks (default: the ``split`` tasks cycled).
        split: default task split.
        seed: seeds the environment and the learners.
        record_actions: also return every action.
    Returns:
        :class:`InContextResult`.
    """
    from .algorithms import SourceAlgorithm

    if not isinstance(algorithm, SourceAlgorithm):
        raise TypeError(f"evaluate_algorithm: algorithm must be a SourceAlgorithm, got {type(algorithm).__name__}")
    B, H = env.num_envs, env.horizon
    if task_ids is None:
        task_ids = env.sample_tasks(B, split=split, cycle=True)
    obs = env.reset(task_ids, seed=seed)
    gen = torch.Generator(device=env.device)
    gen.manual_seed(int(seed) + 1)
    algorithm.begin(env, gen)
    returns = torch.zeros(B, num_episodes, device=env.device)
    actions_out = torch.zeros(B, num_episodes * H, dtype=torch.long, device=env.device) if record_actions else None
    t0 = time.perf_counter()
    for e in range(num_episodes):
        for t in range(H):
            a = algorithm.act(obs)
            res = env.step(a)
            algorithm.update(a, res)
            returns[:, e] += res.reward
            if actions_out is not None:
                actions_out[:, e * H + t] = a
            obs = res.obs
    seconds = time.perf_counter() - t0
    try:
        optimal = env.optimal_return(env.task_ids)
    except NotImplementedError:
        optimal = torch.full((B,), float("nan"), dtype=torch.float64)
    return InContextResult(returns.cpu(), env.task_ids.cpu(), optimal.cpu(),
                           None if actions_out is None else actions_out.cpu(), num_episodes * H, seconds)
