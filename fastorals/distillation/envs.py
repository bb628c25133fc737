"""Vectorized environments of Algorithm Distillation: thousands of instances per step, each with its own task.

Every environment here is a batch of ``num_envs`` independent instances stepped together by a
handful of tensor ops (CPU or GPU). Each instance runs its own *task* (a goal cell, a
(key, door) pair, a vector of arm means) chosen by an integer task id, and auto-resets to the
start of a new episode of the same task when its episode ends (fixed horizon).

* :class:`BernoulliBandit`, :class:`AdversarialBandit`: 10 arms; one pull is one episode
  (horizon 1), so "episodes" are the bandit's trials (100 in the paper).
* :class:`DarkRoom`: 9x9, 20 steps, reward 1 on every step spent on the (unobserved) goal.
* :class:`DarkRoomHard`: 17x17, reward 1 only the first time the goal is reached.
* :class:`DarkKeyToDoor`: 9x9, 50 steps, +1 on reaching the key, +1 on then reaching the door.

Observations are integer vectors ``(num_envs, len(obs_nvec))`` with component ``i`` in
``[0, obs_nvec[i])``: the agent's ``(x, y)`` cell in the grid worlds, a constant 0 for bandits.
Source algorithms that need a Markov state (tabular learners) read :meth:`VecEnv.state_index`,
privileged information the sequence model never sees.

Example:
    >>> env = DarkRoom(num_envs=4096, seed=0)
    >>> obs = env.reset(env.sample_tasks(4096, split="train"))       # (4096, 2) cells
    >>> for _ in range(20):
    ...     res = env.step(torch.randint(0, 5, (4096,)))              # res.reward: (4096,)
    >>> bool(res.done.all())                                           # every episode ended
    True
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Union

import torch

__all__ = [
    "ENVIRONMENTS",
    "AdversarialBandit",
    "BernoulliBandit",
    "DarkKeyToDoor",
    "DarkRoom",
    "DarkRoomHard",
    "GridWorld",
    "StepResult",
    "VecEnv",
    "make_env",
]

Device = Union[str, torch.device, None]

# action ids of the grid worlds
UP, DOWN, LEFT, RIGHT, STAY = 0, 1, 2, 3, 4
ACTION_NAMES = ("up", "down", "left", "right", "stay")
_MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0), (0, 0))  # (dx, dy); y grows downwards


class StepResult(NamedTuple):
    """What :meth:`VecEnv.step` returns (all tensors on the environment's device).

    Attributes:
        obs: ``(B, K)`` int64 observation after the step; where ``done`` it is already the first
            observation of the next episode (auto-reset).
        reward: ``(B,)`` float32 reward of the step.
        done: ``(B,)`` bool, True where the step ended the episode (time limit).
        final_obs: ``(B, K)`` int64 observation reached by the step before any reset (equals
            ``obs`` where not ``done``).
    """

    obs: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    final_obs: torch.Tensor


def _positive_int(val: Any, arg: str, name: str) -> int:
    if isinstance(val, bool) or not isinstance(val, int) or val < 1:
        raise ValueError(f"{name}: {arg} must be a positive int, got {val!r}")
    return val


class VecEnv:
    """Base class: a batch of ``num_envs`` instances with fixed-length episodes and per-instance tasks.

    Subclasses implement ``_load_tasks``, ``_reset_rows``, ``_advance`` and ``_observe``.

    Args:
        num_envs: number of instances B stepped together.
        horizon: steps per episode.
        num_actions: discrete actions ``0 .. num_actions - 1``.
        obs_nvec: sizes of the integer observation components.
        num_tasks: number of task ids ``0 .. num_tasks - 1``.
        num_states: number of Markov states of :meth:`state_index`.
        device: device of every tensor.
        seed: seed of the environment's generator (stochastic rewards, random starts).
        validate: check every action batch for out-of-range values (one host sync per step on
            GPU; cheap on CPU).
        test_fraction: fraction of task ids held out in the "test" split.
        split_seed: seed of the train/test permutation of task ids.
    """

    name: str = "vec_env"

    def __init__(self, num_envs: int, horizon: int, num_actions: int, obs_nvec: tuple[int, ...], num_tasks: int,
                 num_states: int, device: Device = None, seed: Optional[int] = None, validate: bool = True,
                 test_fraction: float = 0.2, split_seed: int = 0) -> None:
        cls = type(self).__name__
        self.num_envs = _positive_int(num_envs, "num_envs", cls)
        self.horizon = _positive_int(horizon, "horizon", cls)
        self.num_actions = _positive_int(num_actions, "num_actions", cls)
        self.obs_nvec = tuple(int(v) for v in obs_nvec)
        self.num_tasks = _positive_int(num_tasks, "num_tasks", cls)
        self.num_states = _positive_int(num_states, "num_states", cls)
        if not 0.0 <= float(test_fraction) < 1.0:
            raise ValueError(f"{cls}: test_fraction must be in [0, 1), got {test_fraction}")
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.validate = bool(validate)
        self.seed = seed
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self.task_ids = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._has_tasks = False
        self._splits: Optional[dict[str, torch.Tensor]] = None

    # ------------------------------------------------------------------ description
    @property
    def obs_dim(self) -> int:
        """Number of observation components K."""
        return len(self.obs_nvec)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serializable) that rebuild this environment with :func:`make_env`."""
        return {"name": self.name, "horizon": self.horizon, "test_fraction": self.test_fraction,
                "split_seed": self.split_seed, **self._extra_config()}

    def _extra_config(self) -> dict[str, Any]:
        return {}

    def with_num_envs(self, num_envs: int, seed: Optional[int] = None) -> VecEnv:
        """A fresh environment of the same configuration with ``num_envs`` instances (tasks unset)."""
        cfg = self.config()
        name = cfg.pop("name")
        return make_env(name, num_envs, device=self.device, seed=seed, validate=self.validate, **cfg)

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self._extra_config().items())
        return (f"{type(self).__name__}(num_envs={self.num_envs}, horizon={self.horizon}, "
                f"num_actions={self.num_actions}, num_tasks={self.num_tasks}{', ' + extra if extra else ''}, "
                f"device={self.device})")

    # ------------------------------------------------------------------ tasks
    def _split_table(self) -> dict[str, torch.Tensor]:
        """Default split: a seeded random permutation of the task ids, the last ``test_fraction`` held out."""
        g = torch.Generator().manual_seed(self.split_seed)
        perm = torch.randperm(self.num_tasks, generator=g)
        n_test = int(round(self.test_fraction * self.num_tasks))
        if self.test_fraction > 0 and n_test == 0:
            n_test = 1
        if n_test >= self.num_tasks:
            n_test = self.num_tasks - 1
        train, test = perm[: self.num_tasks - n_test].sort().values, perm[self.num_tasks - n_test:].sort().values
        return {"train": train, "test": test, "all": torch.arange(self.num_tasks)}

    def task_split(self, split: str = "train") -> torch.Tensor:
        """Task ids of a split: ``"train"``, ``"test"`` (held out) or ``"all"``; sorted int64 on the device."""
        if split not in ("train", "test", "all"):
            raise ValueError(f"{type(self).__name__}.task_split: split must be 'train', 'test' or 'all', got {split!r}")
        if self._splits is None:
            self._splits = {k: v.to(self.device) for k, v in self._split_table().items()}
        return self._splits[split]

    def sample_tasks(self, n: int, split: str = "train", generator: Optional[torch.Generator] = None,
                     cycle: bool = False) -> torch.Tensor:
        """``n`` task ids from ``split``: uniformly at random (with replacement), or, with ``cycle``,
        every id of the split in order, repeated until ``n`` (balanced evaluation)."""
        ids = self.task_split(split)
        n = _positive_int(n, "n", f"{type(self).__name__}.sample_tasks")
        if ids.numel() == 0:
            raise ValueError(f"{type(self).__name__}.sample_tasks: split {split!r} is empty")
        if cycle:
            return ids.repeat(math.ceil(n / ids.numel()))[:n]
        idx = torch.randint(0, ids.numel(), (n,), generator=generator or self._cpu_generator(), device="cpu")
        return ids[idx.to(ids.device)]

    def _cpu_generator(self) -> torch.Generator:
        if self.device.type == "cpu":
            return self.generator
        g = torch.Generator()
        g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.device).item()))
        return g

    def check_task_ids(self, task_ids: Any, name: str = "task_ids") -> torch.Tensor:
        """Validate task ids (shape ``(num_envs,)``, integers in ``[0, num_tasks)``); returns int64 on the device."""
        cls = type(self).__name__
        t = torch.as_tensor(task_ids)
        if t.dtype == torch.bool or t.dtype.is_floating_point or t.is_complex():
            raise TypeError(f"{cls}: {name} must be integer task ids, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(self.num_envs)
        if t.shape != (self.num_envs,):
            raise ValueError(f"{cls}: {name} must have shape ({self.num_envs},) (one task per instance), "
                             f"got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_tasks):
            bad = t[(t < 0) | (t >= self.num_tasks)]
            raise ValueError(f"{cls}: unknown task ids {bad[:8].tolist()}: {name} must lie in "
                             f"[0, {self.num_tasks})")
        return t.to(device=self.device, dtype=torch.long)

    # ------------------------------------------------------------------ stepping
    def reset(self, task_ids: Any = None, *, seed: Optional[int] = None) -> torch.Tensor:
        """Start a new episode in every instance.

        Args:
            task_ids: ``(num_envs,)`` task of each instance (or one int for all). None keeps the
                current tasks (required on the first reset).
            seed: reseed the environment's generator first.
        Returns:
            ``(num_envs, K)`` int64 first observations.
        """
        if seed is not None:
            self.generator.manual_seed(int(seed))
        if task_ids is None:
            if not self._has_tasks:
                raise ValueError(f"{type(self).__name__}.reset: task_ids are required on the first reset "
                                 "(e.g. env.sample_tasks(env.num_envs))")
        else:
            self.task_ids = self.check_task_ids(task_ids)
            self._load_tasks(self.task_ids)
            self._has_tasks = True
        self.t.zero_()
        self._reset_rows(None)
        return self._observe()

    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one action per instance; instances whose episode ends are reset (same task).

        Args:
            actions: ``(num_envs,)`` integer actions in ``[0, num_actions)``.
        Returns:
            :class:`StepResult` ``(obs, reward, done, final_obs)``.
        Raises:
            ValueError: wrong shape or out-of-range actions; reset() was never called.
            TypeError: non-integer actions.
        """
        a = self._check_actions(actions)
        reward = self._advance(a)
        self.t += 1
        done = self.t >= self.horizon
        final_obs = self._observe()
        self.final_state = self.state_index()
        self.t.masked_fill_(done, 0)
        self._reset_rows(done)
        obs = self._observe()
        return StepResult(obs, reward, done, final_obs)

    def _check_actions(self, actions: Any) -> torch.Tensor:
        cls = type(self).__name__
        if not self._has_tasks:
            raise ValueError(f"{cls}.step: call reset(task_ids) before step")
        if not isinstance(actions, torch.Tensor):
            actions = torch.as_tensor(actions)
        if actions.dtype == torch.bool or actions.dtype.is_floating_point or actions.is_complex():
            raise TypeError(f"{cls}.step: actions must be an integer tensor, got dtype {actions.dtype}")
        if actions.shape != (self.num_envs,):
            raise ValueError(f"{cls}.step: actions must have shape ({self.num_envs},) (one per instance), "
                             f"got {tuple(actions.shape)}")
        if actions.device != self.device:
            actions = actions.to(self.device)
        if actions.dtype != torch.long:
            actions = actions.long()
        if self.validate and bool(((actions < 0) | (actions >= self.num_actions)).any()):
            bad = actions[(actions < 0) | (actions >= self.num_actions)]
            raise ValueError(f"{cls}.step: actions must lie in [0, {self.num_actions}), got {bad[:8].tolist()}")
        return actions

    # ------------------------------------------------------------------ subclass hooks
    def _load_tasks(self, task_ids: torch.Tensor) -> None:
        raise NotImplementedError

    def _reset_rows(self, done: Optional[torch.Tensor]) -> None:
        """Reset the state of the instances in ``done`` (None: all)."""
        raise NotImplementedError

    def _advance(self, actions: torch.Tensor) -> torch.Tensor:
        """Apply the actions to the state; return the float32 rewards."""
        raise NotImplementedError

    def _observe(self) -> torch.Tensor:
        raise NotImplementedError

    def state_index(self) -> torch.Tensor:
        """``(num_envs,)`` int64 Markov state in ``[0, num_states)`` (privileged; for tabular learners).

        After :meth:`step`, ``env.final_state`` holds the state the step reached before any
        auto-reset (the ``final_obs`` counterpart), so learners can bootstrap through time limits.
        """
        raise NotImplementedError

    def optimal_return(self, task_ids: Any = None) -> torch.Tensor:
        """Expected return per episode of an optimal policy that knows the task.

        Args:
            task_ids: any 1-D collection of task ids (default: the instances' current tasks).
        Returns:
            ``(n,)`` float64.
        """
        raise NotImplementedError

    def _ids(self, task_ids: Any) -> torch.Tensor:
        if task_ids is None:
            if not self._has_tasks:
                raise ValueError(f"{type(self).__name__}: no tasks set; pass task_ids or reset() first")
            return self.task_ids
        t = torch.as_tensor(task_ids).reshape(-1)
        if t.dtype == torch.bool or t.dtype.is_floating_point:
            raise TypeError(f"{type(self).__name__}: task_ids must be integers, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_tasks):
            raise ValueError(f"{type(self).__name__}: unknown task ids: task_ids must lie in [0, {self.num_tasks})")
        return t.to(device=self.device, dtype=torch.long)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Tensors of the current state (tasks, time, generator) so a run can resume exactly."""
        return {"task_ids": self.task_ids.clone(), "t": self.t.clone(), "generator": self.generator.get_state(),
                "has_tasks": self._has_tasks, **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.task_ids = state["task_ids"].to(self.device)
        if state["has_tasks"]:
            self._load_tasks(self.task_ids)
        self._has_tasks = bool(state["has_tasks"])
        self.t = state["t"].to(self.device)
        self.generator.set_state(state["generator"])
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass


# ============================================================================= bandits


class BernoulliBandit(VecEnv):
    """Multi-armed Bernoulli bandit: task = arm means, one pull per episode (horizon 1).

    Task ``i`` has means drawn i.i.d. from U(0, 1) by a generator seeded with ``task_seed``
    (the table of ``num_tasks`` tasks is fixed by the seed). The observation is a constant 0;
    the reward of pulling arm ``a`` is Bernoulli(``means[a]``).

    Args:
        num_envs: instances.
        num_arms: arms (actions); 10 in the paper.
        num_tasks: size of the task table.
        task_seed: seed of the task table.
        device, seed, validate, test_fraction, split_seed: see :class:`VecEnv`.

    Example:
        >>> env = BernoulliBandit(num_envs=1000, seed=0)
        >>> env.reset(env.sample_tasks(1000))
        >>> res = env.step(torch.zeros(1000, dtype=torch.long))     # everyone pulls arm 0
    """

    name = "bernoulli_bandit"

    def __init__(self, num_envs: int, num_arms: int = 10, num_tasks: int = 10_000, *, task_seed: int = 0,
                 device: Device = None, seed: Optional[int] = None, validate: bool = True,
                 test_fraction: float = 0.2, split_seed: int = 0, horizon: int = 1) -> None:
        if horizon != 1:
            raise ValueError(f"{type(self).__name__}: horizon must be 1 (one pull per episode), got {horizon}")
        super().__init__(num_envs, 1, num_arms, (1,), num_tasks, 1, device, seed, validate, test_fraction,
                         split_seed)
        if num_arms < 2:
            raise ValueError(f"{type(self).__name__}: num_arms must be >= 2, got {num_arms}")
        self.num_arms = num_arms
        self.task_seed = int(task_seed)
        self.means_table = self._make_table().to(self.device)
        self.means = torch.zeros(self.num_envs, num_arms, device=self.device)
        self._obs = torch.zeros(self.num_envs, 1, dtype=torch.long, device=self.device)

    def _extra_config(self) -> dict[str, Any]:
        return {"num_arms": self.num_arms, "num_tasks": self.num_tasks, "task_seed": self.task_seed}

    def _make_table(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.task_seed)
        return torch.rand(self.num_tasks, self.num_arms, generator=g, dtype=torch.float64).float()

    def arm_means(self, task_ids: Any = None) -> torch.Tensor:
        """``(n, num_arms)`` float32 arm means of the tasks (default: current tasks)."""
        return self.means_table[self._ids(task_ids)]

    def _load_tasks(self, task_ids: torch.Tensor) -> None:
        self.means = self.means_table[task_ids]

    def _reset_rows(self, done: Optional[torch.Tensor]) -> None:
        pass

    def _advance(self, actions: torch.Tensor) -> torch.Tensor:
        p = self.means.gather(1, actions.unsqueeze(1)).squeeze(1)
        u = torch.rand(self.num_envs, generator=self.generator, device=self.device)
        return (u < p).float()

    def _observe(self) -> torch.Tensor:
        return self._obs

    def state_index(self) -> torch.Tensor:
        return torch.zeros(self.num_envs, dtype=torch.long, device=self.device)

    def optimal_return(self, task_ids: Any = None) -> torch.Tensor:
        return self.arm_means(task_ids).max(1).values.double()

    def regret(self, actions: torch.Tensor, task_ids: Any = None) -> torch.Tensor:
        """Pseudo-regret ``max_a mu_a - mu_{a_t}`` of pulls ``actions`` ``(n, T)`` on tasks ``(n,)``; ``(n, T)``."""
        means = self.arm_means(task_ids)
        actions = torch.as_tensor(actions, device=self.device).long()
        if actions.dim() != 2 or actions.shape[0] != means.shape[0]:
            raise ValueError(f"{type(self).__name__}.regret: actions must be (n, T) with n = {means.shape[0]} tasks, "
                             f"got {tuple(actions.shape)}")
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= self.num_arms):
            raise ValueError(f"{type(self).__name__}.regret: actions must lie in [0, {self.num_arms})")
        return means.max(1, keepdim=True).values - means.gather(1, actions)


class AdversarialBandit(BernoulliBandit):
    """Bernoulli bandit whose best arm is mostly odd in training tasks and mostly even in test tasks.

    Following the paper's adversarial bandit: the arm means of a task are U(0, 1); in the
    "train" split the largest mean is placed on a random odd arm with probability ``bias``
    (0.95) and on a random even arm otherwise; in the "test" split the opposite. An agent
    that merely memorised "odd arms pay" does badly at test; one that learns in context does not.
    Train ids are ``[0, n_train)``, test ids ``[n_train, num_tasks)``.

    Args:
        bias: probability that the best arm has the split's favoured parity.
        (others as :class:`BernoulliBandit`)
    """

    name = "adversarial_bandit"

    def __init__(self, num_envs: int, num_arms: int = 10, num_tasks: int = 10_000, *, bias: float = 0.95,
                 task_seed: int = 0, device: Device = None, seed: Optional[int] = None, validate: bool = True,
                 test_fraction: float = 0.2, split_seed: int = 0, horizon: int = 1) -> None:
        if not 0.0 <= float(bias) <= 1.0:
            raise ValueError(f"AdversarialBandit: bias must be in [0, 1], got {bias}")
        self.bias = float(bias)
        super().__init__(num_envs, num_arms, num_tasks, task_seed=task_seed, device=device, seed=seed,
                         validate=validate, test_fraction=test_fraction, split_seed=split_seed, horizon=horizon)

    def _extra_config(self) -> dict[str, Any]:
        return {**super()._extra_config(), "bias": self.bias}

    def _n_test(self) -> int:
        n_test = int(round(self.test_fraction * self.num_tasks))
        if self.test_fraction > 0 and n_test == 0:
            n_test = 1
        return min(n_test, self.num_tasks - 1)

    def _split_table(self) -> dict[str, torch.Tensor]:
        n_train = self.num_tasks - self._n_test()
        return {"train": torch.arange(n_train), "test": torch.arange(n_train, self.num_tasks),
                "all": torch.arange(self.num_tasks)}

    def _make_table(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.task_seed)
        n, A = self.num_tasks, self.num_arms
        means = torch.rand(n, A, generator=g, dtype=torch.float64)
        n_train = n - self._n_test()
        favour_odd = torch.arange(n) < n_train
        keep = torch.rand(n, generator=g, dtype=torch.float64) < self.bias
        odd = favour_odd == keep  # best arm on an odd arm
        odd_arms, even_arms = torch.arange(1, A, 2), torch.arange(0, A, 2)
        pick_odd = odd_arms[torch.randint(0, odd_arms.numel(), (n,), generator=g)]
        pick_even = even_arms[torch.randint(0, even_arms.numel(), (n,), generator=g)]
        target = torch.where(odd, pick_odd, pick_even)
        best = means.argmax(1)
        rows = torch.arange(n)
        # swap the best mean onto the target arm
        vb, vt = means[rows, best].clone(), means[rows, target].clone()
        means[rows, target] = vb
        means[rows, best] = vt
        return means.float()


# ============================================================================= grid worlds


class GridWorld(VecEnv):
    """Dark grid world: the agent sees only its own cell; the task's target cells are invisible.

    A task is a sequence of ``m`` target cells (a goal; a key then a door). The agent starts
    each episode at the centre (or a uniformly random cell with ``start="random"``). Moving into
    a wall leaves it in place. With ``repeat=True`` (Dark Room) the reward is 1 on every step
    that ends on the single target; otherwise the targets must be reached in order and each
    pays 1 once per episode (a target is "reached" by a step that ends on it; reaching the
    next target needs a later step).

    Markov state (:meth:`state_index`): ``cell + size**2 * stage`` where ``stage`` counts the
    targets reached this episode (always 0 with ``repeat``).

    Args:
        num_envs: instances.
        size: side of the square room.
        horizon: steps per episode.
        num_targets: targets per task (1 or 2).
        repeat: reward every step on the target (single target only).
        start: "center" or "random".
        (others: see :class:`VecEnv`)
    """

    name = "grid_world"

    def __init__(self, num_envs: int, size: int, horizon: int, num_targets: int, repeat: bool, start: str = "center",
                 device: Device = None, seed: Optional[int] = None, validate: bool = True,
                 test_fraction: float = 0.2, split_seed: int = 0) -> None:
        cls = type(self).__name__
        size = _positive_int(size, "size", cls)
        if size < 2:
            raise ValueError(f"{cls}: size must be >= 2, got {size}")
        if num_targets not in (1, 2):
            raise ValueError(f"{cls}: num_targets must be 1 or 2, got {num_targets}")
        if repeat and num_targets != 1:
            raise ValueError(f"{cls}: repeat=True needs a single target")
        if start not in ("center", "random"):
            raise ValueError(f"{cls}: start must be 'center' or 'random', got {start!r}")
        n_cells = size * size
        stages = 1 if repeat else num_targets + 1
        super().__init__(num_envs, horizon, 5, (size, size), n_cells**num_targets, n_cells * stages, device, seed,
                         validate, test_fraction, split_seed)
        self.size, self.num_targets, self.repeat, self.start = size, num_targets, bool(repeat), start
        self.num_cells = n_cells
        self.num_stages = stages
        self.center = (size // 2) * size + size // 2
        # cell -> (x, y) and the move table cell * 5 + action -> next cell
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        self.coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).to(self.device)  # (S, 2)
        move = torch.empty(n_cells, 5, dtype=torch.long)
        for a, (dx, dy) in enumerate(_MOVES):
            nx = (xs.reshape(-1) + dx).clamp(0, size - 1)
            ny = (ys.reshape(-1) + dy).clamp(0, size - 1)
            move[:, a] = ny * size + nx
        self.move = move.to(self.device)
        self._move_flat = self.move.reshape(-1)
        self.targets = torch.zeros(self.num_envs, num_targets, dtype=torch.long, device=self.device)
        self.cell = torch.full((self.num_envs,), self.center, dtype=torch.long, device=self.device)
        self.stage = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._center_t = torch.tensor(self.center, device=self.device)

    def _extra_config(self) -> dict[str, Any]:
        return {"size": self.size, "start": self.start}

    # ------------------------------------------------------------------ tasks
    def task_targets(self, task_ids: Any = None) -> torch.Tensor:
        """``(n, num_targets)`` target cells of the tasks (goal; or key, door). Cell = ``y * size + x``."""
        ids = self._ids(task_ids)
        if self.num_targets == 1:
            return ids.unsqueeze(1)
        return torch.stack([ids // self.num_cells, ids % self.num_cells], 1)

    def task_id(self, *cells: Any) -> torch.Tensor:
        """Inverse of :meth:`task_targets`: task ids of target cells (tensors or ints)."""
        if len(cells) != self.num_targets:
            raise ValueError(f"{type(self).__name__}.task_id: expected {self.num_targets} cell argument(s), got {len(cells)}")
        ids = torch.zeros((), dtype=torch.long)
        for c in cells:
            c = torch.as_tensor(c, dtype=torch.long)
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_cells):
                raise ValueError(f"{type(self).__name__}.task_id: cells must lie in [0, {self.num_cells})")
            ids = ids * self.num_cells + c
        return ids.to(self.device)

    def cell_of(self, x: Any, y: Any) -> torch.Tensor:
        """Cell index ``y * size + x``."""
        return torch.as_tensor(y, device=self.device) * self.size + torch.as_tensor(x, device=self.device)

    def _load_tasks(self, task_ids: torch.Tensor) -> None:
        self.targets = self.task_targets(task_ids)

    def _reset_rows(self, done: Optional[torch.Tensor]) -> None:
        if self.start == "center":
            start: torch.Tensor = self._center_t
        else:
            start = torch.randint(0, self.num_cells, (self.num_envs,), generator=self.generator, device=self.device)
        if done is None:
            self.cell = (start.expand(self.num_envs) if start.dim() == 0 else start).clone()
            self.stage = torch.zeros_like(self.stage)
        else:
            self.cell = torch.where(done, start, self.cell)
            if not self.repeat:
                self.stage = self.stage.masked_fill(done, 0)

    def _advance(self, actions: torch.Tensor) -> torch.Tensor:
        cell = self._move_flat[self.cell * 5 + actions]
        self.cell = cell
        if self.repeat:
            return (cell == self.targets[:, 0]).float()
        m = self.num_targets
        if m == 1:
            hit = (cell == self.targets[:, 0]) & (self.stage == 0)
        else:
            tgt = self.targets.gather(1, self.stage.clamp(max=m - 1).unsqueeze(1)).squeeze(1)
            hit = (cell == tgt) & (self.stage < m)
        self.stage = self.stage + hit
        return hit.float()

    def _observe(self) -> torch.Tensor:
        return self.coords[self.cell]

    def state_index(self) -> torch.Tensor:
        return self.cell + self.num_cells * self.stage

    # ------------------------------------------------------------------ exact solution (dynamic programming)
    def markov_tables(self, task_ids: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-task transition and reward tables of the Markov state of :meth:`state_index`.

        Returns:
            next_state ``(n, num_states, 5)`` int64 and reward ``(n, num_states, 5)`` float64.
        """
        tg = self.task_targets(task_ids)
        n = tg.shape[0]
        S, St = self.num_cells, self.num_stages
        cell = torch.arange(S, device=self.device).repeat(St)              # (S*St,)
        stage = torch.arange(St, device=self.device).repeat_interleave(S)  # (S*St,)
        nxt = self.move[cell]                                              # (S*St, 5)
        nxt = nxt.unsqueeze(0).expand(n, -1, -1)
        st = stage.view(1, -1, 1).expand(n, -1, 5)
        if self.repeat:
            rew = (nxt == tg[:, 0].view(n, 1, 1)).double()
            return nxt.clone(), rew
        m = self.num_targets
        tgt = tg.gather(1, st.clamp(max=m - 1).reshape(n, -1)).view(n, -1, 5)
        hit = (nxt == tgt) & (st < m)
        new_stage = st + hit
        return nxt + S * new_stage, hit.double()

    def start_states(self) -> torch.Tensor:
        """Markov states an episode may start in (uniformly): the centre, or every cell."""
        if self.start == "center":
            return torch.tensor([self.center], device=self.device)
        return torch.arange(self.num_cells, device=self.device)

    def optimal_values(self, task_ids: Any = None) -> torch.Tensor:
        """Finite-horizon optimal values by backward induction over the exact dynamics.

        Returns:
            ``(n, horizon + 1, num_states)`` float64: ``V[:, t, s]`` is the best return from state
            ``s`` with ``horizon - t`` steps left.
        """
        nxt, rew = self.markov_tables(task_ids)
        n = nxt.shape[0]
        V = torch.zeros(n, self.horizon + 1, self.num_states, dtype=torch.float64, device=self.device)
        flat = nxt.reshape(n, -1)
        for t in range(self.horizon - 1, -1, -1):
            q = rew + V[:, t + 1].gather(1, flat).view_as(rew)
            V[:, t] = q.max(2).values
        return V

    def optimal_return(self, task_ids: Any = None, chunk: int = 512) -> torch.Tensor:
        ids = self._ids(task_ids)
        starts = self.start_states()
        out = []
        for i in range(0, ids.numel(), chunk):
            V = self.optimal_values(ids[i:i + chunk])
            out.append(V[:, 0, starts].mean(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=self.device)

    def _extra_state(self) -> dict[str, Any]:
        return {"cell": self.cell.clone(), "stage": self.stage.clone()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.cell = state["cell"].to(self.device)
        self.stage = state["stage"].to(self.device)


class DarkRoom(GridWorld):
    """Dark Room (9x9, 20 steps): reward 1 on every step spent on the unobserved goal; 81 goals = tasks.

    Task id = goal cell ``y * size + x``. The agent starts at the centre; actions are
    up, down, left, right, stay. Optimal mean return over the 81 goals: 16.54.

    Example:
        >>> env = DarkRoom(num_envs=256)
        >>> obs = env.reset(env.sample_tasks(256, split="test", cycle=True))
    """

    name = "dark_room"

    def __init__(self, num_envs: int, size: int = 9, horizon: int = 20, *, start: str = "center",
                 device: Device = None, seed: Optional[int] = None, validate: bool = True,
                 test_fraction: float = 0.2, split_seed: int = 0) -> None:
        super().__init__(num_envs, size, horizon, 1, True, start, device, seed, validate, test_fraction, split_seed)


class DarkRoomHard(GridWorld):
    """Dark Room Hard (17x17, 20 steps): reward 1 only the first time the goal is reached in an episode."""

    name = "dark_room_hard"

    def __init__(self, num_envs: int, size: int = 17, horizon: int = 20, *, start: str = "center",
                 device: Device = None, seed: Optional[int] = None, validate: bool = True,
                 test_fraction: float = 0.2, split_seed: int = 0) -> None:
        super().__init__(num_envs, size, horizon, 1, False, start, device, seed, validate, test_fraction, split_seed)


class DarkKeyToDoor(GridWorld):
    """Dark Key-to-Door (9x9, 50 steps): +1 for reaching the key, +1 for then reaching the door.

    Task id = ``key_cell * 81 + door_cell`` (6561 tasks). The door pays only once the key was
    collected at an earlier step; each pays once per episode.
    """

    name = "dark_key_to_door"

    def __init__(self, num_envs: int, size: int = 9, horizon: int = 50, *, start: str = "center",
                 device: Device = None, seed: Optional[int] = None, validate: bool = True,
                 test_fraction: float = 0.2, split_seed: int = 0) -> None:
        super().__init__(num_envs, size, horizon, 2, False, start, device, seed, validate, test_fraction, split_seed)


ENVIRONMENTS: dict[str, type[VecEnv]] = {
    cls.name: cls for cls in (BernoulliBandit, AdversarialBandit, DarkRoom, DarkRoomHard, DarkKeyToDoor)
}


def make_env(name: str, num_envs: int, **kwargs: Any) -> VecEnv:
    """Build an environment by name (``ENVIRONMENTS``): "bernoulli_bandit", "adversarial_bandit",
    "dark_room", "dark_room_hard", "dark_key_to_door".

    Example:
        >>> env = make_env("dark_room", 1024, seed=0)
    """
    if name not in ENVIRONMENTS:
        raise ValueError(f"make_env: name must be one of {sorted(ENVIRONMENTS)}, got {name!r}")
    return ENVIRONMENTS[name](num_envs, **kwargs)
