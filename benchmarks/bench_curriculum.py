"""The CUDA Level-of-Learning update: one batched test vs the official DataLoader-style evaluation.

Every case runs the LoL test of all classes at a fixed set of levels (T = 10 samples per unit of
level, the paper's official magnitude mapping, crop 4 + flip) and returns the new levels.

* ``fastorals``: :meth:`fastorals.curriculum.CurriculumAugment.update`: the whole test drawn at
  once, augmented by the fused kernel and classified in batches (``eval_batch_size``'s default: 256
  on the CPU), counts by ``bincount``.
* ``reference``: :func:`fastorals.curriculum.reference.lol_update` on the same draws: class by
  class, level by level, each image through the per-image PIL pipeline, one forward pass per
  (class, level) group; verified to give the same counts and levels.
* ``official-dataloader``: the structure of the paper's code: Python lists of sample positions
  per class and level (``random.choices``), a ``Dataset`` whose ``__getitem__`` runs the per-image
  PIL pipeline with its own Python randomness, a ``DataLoader`` with batch 128, a per-sample score
  table updated per batch, and a per-class decision loop (``num_workers=0``: in-process, the fair
  setting on a 2-core machine where the model's forward pass uses the cores too); in quick/full
  also ``official-dataloader-2w`` with 2 worker processes. Own random draws, so only the test
  sizes are verified.

Models: ``linear`` (a single linear layer: isolates the data side) and ``resnet32-x0.5`` (the
repro's model: end to end, where the forward passes dominate on a CPU).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from benchmarks.harness import Case, Suite
from fastorals import curriculum as cu
from fastorals import models
from fastorals.augment import opset as O
from fastorals.augment import reference as aug_ref
from fastorals.curriculum import reference as cu_ref

NUM_TEST = 10
ACCEPT = 0.6


def _pool(num_classes: int, n_max: int, size: int = 32, seed: int = 0) -> cu.ClassPool:
    """Smooth random images with a long-tailed (IR 100) class profile."""
    counts = [max(1, int(n_max * 0.01 ** (c / max(num_classes - 1, 1)))) for c in range(num_classes)]
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    low = torch.randint(0, 256, (n, 3, max(2, size // 8), max(2, size // 8)), generator=g).float()
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(counts))
    return cu.ClassPool(images, labels, num_classes)


def _levels(num_classes: int, top: int) -> torch.Tensor:
    """Head classes at ``top``, tapering to 1 at the tail (the shape levels take in training)."""
    return torch.tensor([max(1, round(top * (1 - c / max(num_classes - 1, 1)))) for c in range(num_classes)])


def _model(kind: str, num_classes: int, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, num_classes))
    else:
        m = models.resnet32(num_classes=num_classes, width=0.5)
    return m.eval()


# ----------------------------------------------------------------------------- official-style peer


class _OfficialTestSet(torch.utils.data.Dataset):
    """One test sample per item, augmented per image with Python randomness (as the paper's code)."""

    def __init__(self, images: torch.Tensor, labels: list[int], positions: list[int], states: list[int],
                 pad: int = 4, max_d: float = 30.0) -> None:
        self.images, self.labels, self.positions, self.states = images, labels, positions, states
        self.pad, self.max_d = pad, max_d

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        p, s = self.positions[i], self.states[i]
        img = self.images[p]
        crop = (random.randint(-self.pad, self.pad), random.randint(-self.pad, self.pad))
        flip = random.random() < 0.5
        ops = random.choices(range(O.NUM_OPS), k=s)
        values = []
        for op in ops:
            lo, hi = O.OFFICIAL_RANGES[op]
            v = s / self.max_d * (hi - lo) + lo
            if op in (O.ROTATE, O.SHEAR_X, O.SHEAR_Y, O.TRANSLATE_X, O.TRANSLATE_Y) and random.random() > 0.5:
                v = -v
            values.append(v)
        x = aug_ref.augment_image(img, ops, values, crop=crop, flip=flip, float_out=True)
        return x, self.labels[p], p, s


def _official_update(model: torch.nn.Module, pool: cu.ClassPool, levels: list[int], workers: int) -> list[int]:
    labels = torch.empty(len(pool), dtype=torch.int64)
    labels[pool.order] = torch.repeat_interleave(torch.arange(pool.num_classes), pool.counts)
    label_list = labels.tolist()
    members = [pool.order[int(pool.starts[c]):int(pool.starts[c] + pool.counts[c])].tolist()
               for c in range(pool.num_classes)]
    positions: list[int] = []
    states: list[int] = []
    for c in range(pool.num_classes):
        for s in range(levels[c] + 1):
            chosen = random.choices(members[c], k=NUM_TEST * (s + 1))
            positions += chosen
            states += [s] * len(chosen)
    ds = _OfficialTestSet(pool.images, label_list, positions, states)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=False, num_workers=workers)
    n = len(pool)
    score = np.zeros((n, 11))
    tried = np.zeros((n, 11))
    with torch.no_grad():
        for x, y, idx, st in loader:
            correct = (model(x).argmax(1) == y).numpy().astype(np.float64)
            idx, st = idx.numpy(), st.numpy()
            for s in np.unique(st):
                sel = st == s
                score[:, s] += np.bincount(idx[sel], correct[sel], n)
                tried[:, s] += np.bincount(idx[sel], np.ones(int(sel.sum())), n)
    new = list(levels)
    for c in range(pool.num_classes):
        rows = members[c]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = score[rows].sum(0) / tried[rows].sum(0)
        k = levels[c] + 1
        ok = bool((ratio[:k] >= ACCEPT).sum() == k)
        new[c] = min(max(levels[c] + (1 if ok else -1), 0), 10)
    return new


# ----------------------------------------------------------------------------- cases


def _fast(model, pool, levels):
    cur = cu.CurriculumAugment(pool.num_classes, num_test=NUM_TEST, accept_rate=ACCEPT, magnitude_mode="official")
    start = cur.state_dict()
    start["levels"] = levels.clone()

    def run():
        cur.load_state_dict(start)  # every call: the same levels and the same draws (update index 0)
        r = cur.update(model, pool)
        return r.levels_after, r.correct, r.trials

    return run, cur


def _reference(model, pool, levels, cur):
    from fastorals.curriculum.api import _TEST_STREAM

    def run():
        g = torch.Generator().manual_seed(cu.derive_seed(cur.seed, _TEST_STREAM, 0))
        plan = cu.draw_plan(levels, pool, NUM_TEST, cur.pipeline, g)
        new, correct, trials = cu_ref.lol_update(model, pool, levels.tolist(), plan, accept_rate=ACCEPT,
                                                 max_level=10, num_test=NUM_TEST)
        return torch.tensor(new), torch.tensor(correct), torch.tensor(trials)

    return run


def _verify(fast_out: Any, other: Any, name: str) -> None:
    if name == "reference":
        for a, b in zip(fast_out, other):
            assert torch.equal(a, b), "reference and fast LoL update differ"
    else:
        assert len(other) == fast_out[0].numel(), name


def cases(mode: str, device: str):
    if device != "cpu":
        return
    plan = {
        "smoke": [(8, 60, 4, ("linear",))],
        "quick": [(20, 250, 8, ("linear", "resnet32-x0.5")), (100, 500, 6, ("linear",))],
        "full": [(20, 250, 8, ("linear", "resnet32-x0.5")), (100, 500, 6, ("linear", "resnet32-x0.5")),
                 (100, 500, 10, ("linear",))],
    }[mode]
    for num_classes, n_max, top, kinds in plan:
        pool = _pool(num_classes, n_max)
        levels = _levels(num_classes, top)
        total = int(cu.plan_sizes(levels, pool.counts, NUM_TEST).sum())
        for kind in kinds:
            model = _model(kind, num_classes, 32)
            fast, cur = _fast(model, pool, levels)
            lv_list = levels.tolist()
            peers = {"official-dataloader": (lambda m=model, p=pool, lv=lv_list: _official_update(m, p, lv, 0))}
            if mode != "smoke":
                peers["official-dataloader-2w"] = (lambda m=model, p=pool, lv=lv_list: _official_update(m, p, lv, 2))
            yield Case(
                op="lol_update", name=f"{num_classes}cls-top{top}-{kind}", shape=f"{num_classes} classes, {total} test samples",
                dtype="uint8", device="cpu", fast={"fastorals": fast}, reference=_reference(model, pool, levels, cur),
                peers=peers, backend="cpp", verify=_verify, max_time_s=4.0,
                note=f"model {kind}; levels {top}..1 head to tail; T={NUM_TEST}; 32x32 images, crop 4 + flip",
            )


SUITE = Suite("curriculum", cases, "LoL update: one batched test vs the official per-image DataLoader evaluation")
