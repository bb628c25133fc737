"""Shared fixtures-in-code for the curriculum tests: tiny pools, scripted models."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastorals import curriculum as cu
from fastorals.curriculum.lol import LoLPlan


def tiny_pool(num_classes: int = 4, per_class=(7, 5, 3, 2), size: int = 8, channels: int = 3, seed: int = 0) -> cu.ClassPool:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    images = torch.randint(0, 256, (labels.numel(), channels, size, size), dtype=torch.uint8, generator=g)
    return cu.ClassPool(images, labels, num_classes)


class ScriptedModel(nn.Module):
    """Predicts from a script instead of the pixels: row k of the test (in plan order) is
    classified correctly iff ``script(class, level, k_within_group)`` is True.

    The model walks the plan in order (the batched path evaluates positions in order), so it
    knows which test sample each input row is.
    """

    def __init__(self, plan: LoLPlan, num_classes: int, script: Callable[[int, int, int], bool]) -> None:
        super().__init__()
        self.plan, self.num_classes, self.script = plan, num_classes, script
        self.cursor = 0
        self.dummy = nn.Parameter(torch.zeros(1))
        self.modes_seen: list[bool] = []
        # index of each plan row within its (class, level) group
        key = plan.classes * 1000 + plan.levels
        within = torch.zeros_like(key)
        seen: dict[int, int] = {}
        for i, k in enumerate(key.tolist()):
            within[i] = seen.get(k, 0)
            seen[k] = seen.get(k, 0) + 1
        self.within = within

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        n = x.shape[0]
        rows = range(self.cursor, self.cursor + n)
        self.cursor += n
        logits = torch.zeros(n, self.num_classes)
        for j, i in enumerate(rows):
            c, l, k = int(self.plan.classes[i]), int(self.plan.levels[i]), int(self.within[i])
            pred = c if self.script(c, l, k) else (c + 1) % self.num_classes
            logits[j, pred] = 1.0
        return logits


def plan_for(cur: cu.CurriculumAugment, pool: cu.ClassPool, update_index: int = 0) -> LoLPlan:
    """The plan ``cur.update`` will draw for its ``update_index``-th update (same derived seed)."""
    from fastorals.curriculum.api import _TEST_STREAM

    g = torch.Generator().manual_seed(cu.derive_seed(cur.seed, _TEST_STREAM, update_index))
    return cu.draw_plan(cur.levels, pool, cur.num_test, cur.pipeline, g)


class PixelMLP(nn.Module):
    """A small deterministic float64 classifier (robust argmax across batch compositions)."""

    def __init__(self, in_features: int, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.Tanh(), nn.Linear(32, num_classes)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double())
