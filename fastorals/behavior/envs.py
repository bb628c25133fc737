"""Offline multimodal play data: 2-D environments (vectorised, pure PyTorch) and scripted noisy demonstrators.

* :class:`MultiPathEnv`: BeT's multi-route task. A point agent goes from (0, 0) to (20, 20)
  along one of three routes (via the top-left corner, the centre, or the bottom-right corner),
  chosen with probabilities 0.3 / 0.4 / 0.3; actions carry Gaussian noise (0.25).
  :func:`multipath_demos` records demonstrations.
* :class:`MultiGoalArena`: uncurated multi-goal play. ``num_goals`` goals on a circle; the
  observation is the position plus one "done" flag per goal (a goal stays done once visited,
  like the objects of the Kitchen task). :func:`multigoal_demos` records a demonstrator that
  visits ``visits`` goals in a random order along randomly bent, noisy paths, then idles.
  The conditional task: reach the end state of a held-out demonstration (the same set of
  goals done, finishing at the same goal) - several orders achieve it.

Every environment steps ``num_envs`` episodes at once on tensors (any device).
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Union

import torch

from .data import PlayData

__all__ = ["MultiGoalArena", "MultiPathEnv", "multigoal_demos", "multipath_demos"]

Device = Union[str, torch.device]


def _clip_norm(a: torch.Tensor, max_norm: float) -> torch.Tensor:
    n = a.norm(dim=-1, keepdim=True)
    return a * (max_norm / n.clamp_min(max_norm))


def _check_actions(actions: torch.Tensor, n: int, who: str) -> torch.Tensor:
    if not isinstance(actions, torch.Tensor):
        raise TypeError(f"{who}.step: actions must be a torch.Tensor, got {type(actions).__name__}")
    if actions.shape != (n, 2):
        raise ValueError(f"{who}.step: actions must be ({n}, 2) (num_envs, act_dim), got {tuple(actions.shape)}")
    if not bool(torch.isfinite(actions).all()):
        raise ValueError(f"{who}.step: actions contain NaN or infinite values")
    return actions


# ----------------------------------------------------------------------------- multi-path


class MultiPathEnv:
    """Vectorised multi-route point environment of BeT.

    Args:
        num_envs: episodes run in lock-step.
        max_steps: episode length (50).
        max_action: norm limit of an action (the demonstrator moves at speed 1).
        device: tensor device.

    Observation: position ``(2,)``; action: displacement ``(2,)``.

    Example:
        >>> env = MultiPathEnv(256)
        >>> obs = env.reset()
        >>> obs, done = env.step(torch.ones(256, 2))
    """

    obs_dim = 2
    act_dim = 2
    START = (0.0, 0.0)
    GOAL = (20.0, 20.0)
    # distinctive waypoint of each route (the route is start -> waypoint -> goal)
    WAYPOINTS = ((0.0, 20.0), (10.0, 10.0), (20.0, 0.0))
    ROUTE_NAMES = ("top-left", "centre", "bottom-right")

    def __init__(self, num_envs: int, *, max_steps: int = 50, max_action: float = 2.0, device: Device = "cpu") -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs: expected a positive int, got {num_envs!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
        self.num_envs, self.max_steps, self.max_action = num_envs, max_steps, float(max_action)
        self.device = torch.device(device)
        self.pos = torch.zeros(num_envs, 2, device=self.device)
        self.t = 0

    def reset(self) -> torch.Tensor:
        """Start every episode at (0, 0); returns obs ``(num_envs, 2)``."""
        self.pos = torch.tensor(self.START, device=self.device).repeat(self.num_envs, 1)
        self.t = 0
        return self.pos.clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move by ``actions`` ``(num_envs, 2)`` (norm-clipped); returns obs and done ``(num_envs,)``."""
        a = _check_actions(actions, self.num_envs, "MultiPathEnv").to(self.pos)
        self.pos = self.pos + _clip_norm(a, self.max_action)
        self.t += 1
        done = torch.full((self.num_envs,), self.t >= self.max_steps, device=self.device)
        return self.pos.clone(), done

    @classmethod
    def route_of(cls, traj: torch.Tensor, radius: float = 3.0) -> torch.Tensor:
        """Route of each trajectory ``(B, T, 2)``: the waypoint it passed within ``radius`` of
        (the corners take precedence over the centre), -1 when none."""
        wp = torch.tensor(cls.WAYPOINTS, dtype=traj.dtype, device=traj.device)  # (3, 2)
        dmin = (traj[:, :, None, :] - wp[None, None]).norm(dim=-1).amin(1)  # (B, 3)
        hit = dmin < radius
        route = torch.full((traj.shape[0],), -1, dtype=torch.int64, device=traj.device)
        route[hit[:, 1]] = 1
        route[hit[:, 0] & ~hit[:, 2]] = 0
        route[hit[:, 2] & ~hit[:, 0]] = 2
        return route

    @classmethod
    def reached_goal(cls, traj: torch.Tensor, radius: float = 2.0) -> torch.Tensor:
        """Whether each trajectory ``(B, T, 2)`` ends within ``radius`` of (20, 20)."""
        goal = torch.tensor(cls.GOAL, dtype=traj.dtype, device=traj.device)
        return (traj[:, -1] - goal).norm(dim=-1) < radius


def multipath_demos(
    num_demos: int,
    *,
    probs: tuple[float, float, float] = (0.3, 0.4, 0.3),
    noise: float = 0.25,
    max_steps: int = 50,
    speed: float = 1.0,
    seed: int = 0,
    device: Device = "cpu",
) -> PlayData:
    """Noisy scripted demonstrations of :class:`MultiPathEnv` (modes = route index).

    The demonstrator heads for its route's waypoint, then for (20, 20), at ``speed``; Gaussian
    noise of std ``noise`` is added to every action (the recorded action is the noisy one).

    Returns:
        :class:`PlayData` with ``max_steps`` steps per demonstration.
    """
    if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
        raise ValueError(f"probs: expected 3 probabilities summing to 1, got {probs}")
    g = torch.Generator().manual_seed(seed)
    env = MultiPathEnv(num_demos, max_steps=max_steps, device=device)
    route = torch.multinomial(torch.tensor(probs, dtype=torch.float64), num_demos, replacement=True, generator=g)
    route = route.to(env.device)
    wp = torch.tensor(MultiPathEnv.WAYPOINTS, device=env.device)[route]
    goal = torch.tensor(MultiPathEnv.GOAL, device=env.device).expand(num_demos, 2)
    stage = torch.zeros(num_demos, dtype=torch.bool, device=env.device)  # False: to waypoint, True: to goal
    obs = env.reset()
    O = torch.empty(num_demos, max_steps, 2, device=env.device)
    A = torch.empty_like(O)
    for t in range(max_steps):
        target = torch.where(stage[:, None], goal, wp)
        a = _clip_norm(target - obs, speed)
        a = a + noise * torch.randn(num_demos, 2, generator=g).to(env.device)
        O[:, t], A[:, t] = obs, a
        obs, _ = env.step(a)
        stage |= (obs - wp).norm(dim=-1) < 1.0
    lengths = torch.full((num_demos,), max_steps, dtype=torch.int64, device=env.device)
    return PlayData(O, A, lengths, route, obs, {"env": "multipath", "mode_names": list(MultiPathEnv.ROUTE_NAMES),
                                                 "noise": noise, "probs": list(probs)})


# ----------------------------------------------------------------------------- multi-goal


class MultiGoalArena:
    """Vectorised 2-D arena with ``num_goals`` goals; a goal is done once the agent enters its radius.

    Args:
        num_envs: episodes run in lock-step.
        num_goals: goals, evenly spaced on a circle (default 4: the corners of a square).
        goal_distance: radius of that circle.
        goal_radius: how close counts as reaching a goal.
        max_steps: episode length.
        max_speed: norm limit of an action.
        start_noise: the start is uniform in ``[-start_noise, start_noise]^2``.
        device: tensor device.

    Observation: ``(x, y, done_1, ..., done_G)``; action: displacement ``(2,)``.

    Example:
        >>> env = MultiGoalArena(128, seed=0)
        >>> obs = env.reset()                     # (128, 6)
        >>> obs, done = env.step(actions)
        >>> env.visit_order()                     # (128, 4) goal indices in visiting order, -1 padded
    """

    act_dim = 2

    def __init__(self, num_envs: int, *, num_goals: int = 4, goal_distance: float = 3.0, goal_radius: float = 0.4,
                 max_steps: int = 60, max_speed: float = 0.5, start_noise: float = 0.3, device: Device = "cpu",
                 seed: int = 0) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs: expected a positive int, got {num_envs!r}")
        if not isinstance(num_goals, int) or num_goals < 2:
            raise ValueError(f"num_goals: expected an int >= 2, got {num_goals!r}")
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
        self.num_envs, self.num_goals, self.max_steps = num_envs, num_goals, max_steps
        self.goal_radius, self.max_speed, self.start_noise = float(goal_radius), float(max_speed), float(start_noise)
        self.device = torch.device(device)
        ang = torch.arange(num_goals, dtype=torch.float64) * (2 * math.pi / num_goals) + math.pi / 4
        self.goals = (goal_distance * torch.stack([ang.cos(), ang.sin()], 1)).float().to(self.device)
        self.obs_dim = 2 + num_goals
        self.generator = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self) -> torch.Tensor:
        """New episodes (random starts from the env's generator); returns obs ``(num_envs, obs_dim)``."""
        u = torch.rand(self.num_envs, 2, generator=self.generator) * 2 - 1
        self.pos = (u * self.start_noise).to(self.device)
        self.flags = torch.zeros(self.num_envs, self.num_goals, dtype=torch.bool, device=self.device)
        self.order = torch.full((self.num_envs, self.num_goals), -1, dtype=torch.int64, device=self.device)
        self.n_done = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.t = 0
        self._update_flags()
        return self.obs()

    def obs(self) -> torch.Tensor:
        return torch.cat([self.pos, self.flags.to(self.pos.dtype)], 1)

    def _update_flags(self) -> None:
        d = (self.pos[:, None, :] - self.goals[None]).norm(dim=-1)  # (B, G)
        new = (d < self.goal_radius) & ~self.flags
        if bool(new.any()):
            for gi in range(self.num_goals):  # record visiting order (ties in one step: goal index order)
                rows = torch.nonzero(new[:, gi]).flatten()
                if rows.numel():
                    self.order[rows, self.n_done[rows]] = gi
                    self.n_done[rows] += 1
            self.flags |= new

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move by ``actions`` ``(num_envs, 2)`` (norm-clipped to ``max_speed``); returns obs and done."""
        a = _check_actions(actions, self.num_envs, "MultiGoalArena").to(self.pos)
        self.pos = self.pos + _clip_norm(a, self.max_speed)
        self.t += 1
        self._update_flags()
        done = torch.full((self.num_envs,), self.t >= self.max_steps, device=self.device)
        return self.obs(), done

    def visit_order(self) -> torch.Tensor:
        """``(num_envs, num_goals)`` goals in the order they were reached, -1 padded."""
        return self.order.clone()

    def target_of(self, goal_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The end state a goal frame asks for: done flags ``(B, G)`` bool and the goal it ends at ``(B,)``."""
        last = goal_obs[:, -1] if goal_obs.dim() == 3 else goal_obs
        flags = last[:, 2:] > 0.5
        at = (last[:, None, :2] - self.goals[None].to(last)).norm(dim=-1).argmin(1)
        return flags, at

    def success(self, goal_obs: torch.Tensor) -> torch.Tensor:
        """Whether each episode reached the end state of ``goal_obs`` ``(B, g, obs_dim)``: the same goals
        done (no more, no fewer) and the last goal reached the one the goal frame stands at."""
        flags, at = self.target_of(goal_obs.to(self.pos.device))
        last = self.order.gather(1, (self.n_done - 1).clamp_min(0)[:, None])[:, 0]
        return (self.flags == flags).all(1) & (last == at) & (self.n_done > 0)

    def sequence_ids(self, order: Optional[torch.Tensor] = None, length: Optional[int] = None) -> torch.Tensor:
        """Integer id of each visiting sequence (``-1`` padded order rows), e.g. for mode counting."""
        order = self.visit_order() if order is None else order
        if length is not None:
            order = torch.where(torch.arange(order.shape[1], device=order.device)[None] < length, order,
                                torch.full_like(order, -1))
        base = self.num_goals + 1
        w = base ** torch.arange(order.shape[1], device=order.device)
        return ((order + 1) * w).sum(1)

    def sequence_names(self, length: int) -> dict[int, str]:
        """id -> "a>b>c" for every ordered sequence of ``length`` distinct goals."""
        out = {}
        for perm in itertools.permutations(range(self.num_goals), length):
            order = torch.tensor(list(perm) + [-1] * (self.num_goals - length))[None]
            out[int(self.sequence_ids(order)[0])] = ">".join(map(str, perm))
        return out


def multigoal_demos(
    num_demos: int,
    *,
    num_goals: int = 4,
    visits: int = 3,
    noise: float = 0.05,
    bend: float = 0.6,
    idle_steps: int = 6,
    max_steps: int = 60,
    speed: float = 0.35,
    seed: int = 0,
    device: Device = "cpu",
    **env_kwargs,
) -> PlayData:
    """Scripted uncurated play in :class:`MultiGoalArena` (modes = visiting-sequence ids).

    Each demonstration visits ``visits`` distinct goals in a uniformly random order. Towards
    each goal it moves at ``speed`` along a path bent by a random angle in ``±[bend/2, bend]``
    (left or right, straightening as it arrives), with Gaussian action noise ``noise``; after the
    last goal it hovers there for ``idle_steps`` steps, then the demonstration ends.

    Returns:
        :class:`PlayData` (lengths vary; ``final_obs`` is the end state; ``info["sequences"]``
        maps mode ids to "a>b>c").
    """
    if not isinstance(visits, int) or not 1 <= visits <= num_goals:
        raise ValueError(f"visits: expected an int in [1, num_goals={num_goals}], got {visits!r}")
    g = torch.Generator().manual_seed(seed)
    env = MultiGoalArena(num_demos, num_goals=num_goals, max_steps=max_steps, device=device, seed=seed + 1,
                         **env_kwargs)
    dev = env.device
    targets = torch.argsort(torch.rand(num_demos, num_goals, generator=g), 1)[:, :visits].to(dev)
    ptr = torch.zeros(num_demos, dtype=torch.int64, device=dev)
    sign = torch.where(torch.rand(num_demos, visits, generator=g) < 0.5, -1.0, 1.0)
    angle = (sign * bend * (0.5 + 0.5 * torch.rand(num_demos, visits, generator=g))).to(dev)
    obs = env.reset()
    seg_start = env.pos.clone()
    O = torch.zeros(num_demos, max_steps, env.obs_dim, device=dev)
    A = torch.zeros(num_demos, max_steps, 2, device=dev)
    lengths = torch.full((num_demos,), max_steps, dtype=torch.int64, device=dev)
    finished_at = torch.full((num_demos,), -1, dtype=torch.int64, device=dev)
    final = torch.zeros(num_demos, env.obs_dim, device=dev)
    rows = torch.arange(num_demos, device=dev)
    for t in range(max_steps):
        done_all = ptr >= visits
        cur = targets[rows, ptr.clamp_max(visits - 1)]
        tgt = env.goals[cur]
        to = tgt - env.pos
        dist = to.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        seg = (tgt - seg_start).norm(dim=-1, keepdim=True).clamp_min(1e-6)
        th = angle[rows, ptr.clamp_max(visits - 1)][:, None] * (dist / seg).clamp(0, 1)
        c, s = th.cos(), th.sin()
        u = to / dist
        dirn = torch.cat([c * u[:, :1] - s * u[:, 1:], s * u[:, :1] + c * u[:, 1:]], 1)
        move = dirn * torch.minimum(dist, torch.full_like(dist, speed))
        hover = 0.3 * to
        a = torch.where(done_all[:, None], hover, move)
        a = a + noise * torch.randn(num_demos, 2, generator=g).to(dev)
        O[:, t], A[:, t] = obs, a
        obs, _ = env.step(a)
        reached = env.flags[rows, cur] & ~done_all
        seg_start = torch.where(reached[:, None], env.pos, seg_start)
        ptr = ptr + reached.long()
        newly_done = (ptr >= visits) & (finished_at < 0)
        finished_at[newly_done] = t + 1
        end = (finished_at >= 0) & (t + 1 - finished_at >= idle_steps) & (lengths == max_steps)
        lengths[end] = t + 1
        final[end] = obs[end]
    never = lengths == max_steps
    final[never] = obs[never]
    modes = env.sequence_ids(env.visit_order(), visits)
    info = {"env": "multigoal", "num_goals": num_goals, "visits": visits, "noise": noise, "bend": bend,
            "sequences": env.sequence_names(visits), "completed": float((finished_at >= 0).float().mean())}
    return PlayData(O, A, lengths, modes, final, info)
