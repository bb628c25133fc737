"""Gymnasium ``VectorEnv`` adapter of the vectorized environments (gymnasium is an optional dependency).

The adapter is a true subclass of ``gymnasium.vector.VectorEnv`` (built on first use, so
``import fastorals.distillation`` does not import gymnasium): any agent or vector wrapper written
for gymnasium >= 1.0 can drive the environments. Arrays cross as NumPy; episodes end by time
limit (``truncations``; ``terminations`` are always False) and auto-reset in the same step
(``AutoresetMode.SAME_STEP``), the last observation of an ended episode being in
``infos["final_obs"]`` (mask ``infos["_final_obs"]``).

Example:
    >>> from fastorals.distillation import DarkRoom, to_gymnasium
    >>> venv = to_gymnasium(DarkRoom(num_envs=64))
    >>> obs, info = venv.reset(seed=0, options={"split": "test"})     # obs: (64, 2) int64
    >>> obs, rew, term, trunc, info = venv.step(venv.action_space.sample())
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .envs import VecEnv

__all__ = ["gymnasium_vector_env_class", "to_gymnasium"]

_CLASS: Optional[type] = None


def gymnasium_vector_env_class() -> type:
    """The adapter class (a ``gymnasium.vector.VectorEnv`` subclass); imports gymnasium.

    Raises:
        ImportError: gymnasium (>= 1.0) is not installed.
    """
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    try:
        import gymnasium
        from gymnasium import spaces
        from gymnasium.vector import AutoresetMode, VectorEnv
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fastorals.distillation: the Gymnasium adapter needs gymnasium>=1.0 "
                          "(pip install gymnasium)") from e

    class GymnasiumVectorEnv(VectorEnv):
        """``gymnasium.vector.VectorEnv`` over a :class:`~fastorals.distillation.envs.VecEnv`.

        Args:
            env: the vectorized environment.
            split: task split sampled by ``reset`` when ``options`` give no ``task_ids``.

        ``reset(seed=None, options=None)``: ``options`` may hold ``task_ids`` (one per instance)
        or ``split``; without either, the current tasks are kept (new ones are drawn on the
        first reset). Returns ``(obs, {"task_ids": ...})``.
        """

        metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

        def __init__(self, env: VecEnv, split: str = "train") -> None:
            if not isinstance(env, VecEnv):
                raise TypeError(f"GymnasiumVectorEnv: env must be a fastorals VecEnv, got {type(env).__name__}")
            self.env = env
            self.split = split
            self.num_envs = env.num_envs
            self.single_observation_space = spaces.MultiDiscrete(np.array(env.obs_nvec, dtype=np.int64))
            self.single_action_space = spaces.Discrete(env.num_actions)
            self.observation_space = spaces.MultiDiscrete(np.tile(np.array(env.obs_nvec, dtype=np.int64),
                                                                  (env.num_envs, 1)))
            self.action_space = spaces.MultiDiscrete(np.full(env.num_envs, env.num_actions, dtype=np.int64))
            self.render_mode = None
            self.closed = False

        def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
            options = dict(options or {})
            unknown = set(options) - {"task_ids", "split"}
            if unknown:
                raise ValueError(f"GymnasiumVectorEnv.reset: unknown options {sorted(unknown)}; "
                                 "expected 'task_ids' or 'split'")
            if seed is not None:
                self.env.generator.manual_seed(int(seed))
                self.action_space.seed(int(seed))
            task_ids = options.get("task_ids")
            if task_ids is None and ("split" in options or not self.env._has_tasks):
                g = torch.Generator().manual_seed(int(seed) if seed is not None else
                                                  int(torch.randint(0, 2**62, (1,)).item()))
                task_ids = self.env.sample_tasks(self.num_envs, split=options.get("split", self.split), generator=g)
            obs = self.env.reset(None if task_ids is None else torch.as_tensor(np.asarray(task_ids)))
            return obs.cpu().numpy(), {"task_ids": self.env.task_ids.cpu().numpy()}

        def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
            a = torch.as_tensor(np.asarray(actions))
            res = self.env.step(a)
            done = res.done.cpu().numpy()
            infos: dict[str, Any] = {}
            if done.any():
                infos["final_obs"] = res.final_obs.cpu().numpy()
                infos["_final_obs"] = done
            return (res.obs.cpu().numpy(), res.reward.cpu().numpy(), np.zeros_like(done), done, infos)

        def __repr__(self) -> str:
            return f"GymnasiumVectorEnv({self.env!r})"

    GymnasiumVectorEnv.__module__ = __name__
    _CLASS = GymnasiumVectorEnv
    del gymnasium
    return _CLASS


def to_gymnasium(env: VecEnv, split: str = "train") -> Any:
    """Wrap ``env`` as a ``gymnasium.vector.VectorEnv`` (see the module docstring)."""
    return gymnasium_vector_env_class()(env, split=split)
