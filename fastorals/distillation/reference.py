"""Obvious, one-instance-at-a-time versions of the environments and exact solutions: the test oracle.

Nothing here is vectorized: plain Python over one environment, written to be read against the
paper's description. The vectorized environments of :mod:`fastorals.distillation.envs` are
tested step by step against these.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

MOVES = {0: (0, -1), 1: (0, 1), 2: (-1, 0), 3: (1, 0), 4: (0, 0)}  # up, down, left, right, stay


class ReferenceGridWorld:
    """One dark grid world.

    Args:
        size: side of the room.
        horizon: steps per episode.
        targets: target cells ``(x, y)`` in order (a goal; or a key then a door).
        repeat: reward 1 on every step that ends on the (single) target (Dark Room); otherwise
            each target pays 1 once, in order, per episode.
        start: start cell ``(x, y)``; default the centre.
    """

    def __init__(self, size: int, horizon: int, targets: list[tuple[int, int]], repeat: bool,
                 start: Optional[tuple[int, int]] = None) -> None:
        self.size, self.horizon, self.targets, self.repeat = size, horizon, list(targets), repeat
        self.start = start if start is not None else (size // 2, size // 2)
        self.reset()

    def reset(self, start: Optional[tuple[int, int]] = None) -> tuple[int, int]:
        self.pos = start if start is not None else self.start
        self.t = 0
        self.stage = 0
        return self.pos

    def step(self, action: int) -> tuple[tuple[int, int], float, bool]:
        """Returns (position reached, reward, episode ended); the caller resets after an end."""
        if action not in MOVES:
            raise ValueError(f"action must be in 0..4, got {action}")
        dx, dy = MOVES[action]
        x = min(max(self.pos[0] + dx, 0), self.size - 1)
        y = min(max(self.pos[1] + dy, 0), self.size - 1)
        self.pos = (x, y)
        reward = 0.0
        if self.repeat:
            reward = 1.0 if self.pos == self.targets[0] else 0.0
        elif self.stage < len(self.targets) and self.pos == self.targets[self.stage]:
            reward = 1.0
            self.stage += 1
        self.t += 1
        return self.pos, reward, self.t >= self.horizon


class ReferenceBandit:
    """One Bernoulli bandit; ``step(arm, u)`` pays 1 when the uniform draw ``u < means[arm]``."""

    def __init__(self, means: list[float]) -> None:
        self.means = list(means)

    def step(self, arm: int, u: float) -> float:
        if not 0 <= arm < len(self.means):
            raise ValueError(f"arm must be in [0, {len(self.means)}), got {arm}")
        return 1.0 if u < self.means[arm] else 0.0


def shortest_path(size: int, a: tuple[int, int], b: tuple[int, int]) -> int:
    """Steps from cell ``a`` to ``b`` by breadth-first search over the grid moves."""
    seen = {a: 0}
    q = deque([a])
    while q:
        p = q.popleft()
        if p == b:
            return seen[p]
        for dx, dy in MOVES.values():
            n = (min(max(p[0] + dx, 0), size - 1), min(max(p[1] + dy, 0), size - 1))
            if n not in seen:
                seen[n] = seen[p] + 1
                q.append(n)
    raise AssertionError("unreachable")


def dark_room_optimal_returns(size: int = 9, horizon: int = 20) -> list[float]:
    """Optimal return of every goal of Dark Room (goals enumerated row by row, start at the centre).

    Walk the shortest path to the goal (``d`` steps), then stay: reward on steps ``max(d, 1) ..
    horizon``, i.e. ``horizon - max(d, 1) + 1`` (a goal at the start still needs one step).
    """
    c = (size // 2, size // 2)
    out = []
    for y in range(size):
        for x in range(size):
            d = shortest_path(size, c, (x, y))
            out.append(float(max(horizon - max(d, 1) + 1, 0)))
    return out


def key_to_door_optimal_return(size: int, horizon: int, key: tuple[int, int], door: tuple[int, int],
                               start: Optional[tuple[int, int]] = None) -> float:
    """Optimal return of one Key-to-Door task: key (if reachable in time) then door (needs a later step)."""
    s = start if start is not None else (size // 2, size // 2)
    d1 = max(shortest_path(size, s, key), 1)
    if d1 > horizon:
        return 0.0
    d2 = max(shortest_path(size, key, door), 1)
    return 1.0 + (1.0 if d1 + d2 <= horizon else 0.0)


def ucb_scores(counts: list[int], sums: list[float], t: int, c: float) -> list[float]:
    """UCB1 index ``mean + c * sqrt(ln t / n)`` of each arm (``inf`` for untried arms)."""
    import math

    out = []
    for n, s in zip(counts, sums):
        out.append(math.inf if n == 0 else s / n + c * math.sqrt(math.log(max(t, 1)) / n))
    return out
