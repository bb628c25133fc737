"""The Level-of-Learning (LoL) test of CUDA, vectorized over all classes.

Before every epoch the curriculum checks, for each class ``c`` at level ``L_c``, whether the
model still recognises the class under augmentation of every strength up to ``L_c``:

    for l in 0 .. L_c:  draw T (l + 1) samples of class c (with replacement), augment each at
                        strength l, count the correct predictions V_l
    L_c += 1  if V_l >= gamma * T * (l + 1) for every l <= L_c,  else  L_c -= 1;  clamp to [0, L_max]

Here the whole test of all classes is one *plan* (:class:`LoLPlan`): every sample's class,
strength, image index, op chain and crop/flip/Cutout draws, drawn up front from one generator.
The plan is evaluated in a few large batches (:func:`evaluate_plan`), the counts are reduced
per (class, level) with one ``bincount``, and :func:`lol_decision` applies the rule to all
classes at once.

This module holds the building blocks; :class:`fastorals.curriculum.CurriculumAugment` puts them
together (DDP, state, history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Optional, Union

import torch

from .._args import int_arg as _positive_int
from .._args import probability as _probability
from ..augment import BatchAugment, Chains, PipelineDraws, apply_chains, draw_pipeline

__all__ = [
    "ClassPool",
    "LoLPlan",
    "LoLResult",
    "accept_fraction",
    "derive_seed",
    "draw_plan",
    "evaluate_plan",
    "lol_decision",
    "plan_sizes",
]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed (splitmix64) from integers, e.g. ``(seed, stream, rank, counter)``.

    Distinct tuples give unrelated streams, so per-call generators need no saved state: a resumed
    run re-derives exactly the generator an uninterrupted run would have used.
    """
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def accept_fraction(accept_rate: float) -> Fraction:
    """``accept_rate`` as the nearest fraction with a denominator <= 10**6 (0.6 -> 3/5).

    The test ``V >= gamma * n`` is then decided in integers (``V * q >= p * n``), free of the
    rounding of ``0.6 * 10`` style products.
    """
    return Fraction(float(accept_rate)).limit_denominator(10**6)


# ----------------------------------------------------------------------------- the image pool


def _check_uint8_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name}: expected dtype torch.uint8 (0..255 pixels), got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"{name}: expected shape [N, C, H, W] (rank 4), got {list(images.shape)}")


def _check_labels(labels: torch.Tensor, num_classes: int, n: int, name: str = "labels") -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor of class ids, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name}: expected shape [N] (rank 1), got {list(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name}: expected {n} entries (one per image), got {labels.shape[0]}")
    if n:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: expected class ids in [0, num_classes={num_classes}), got min {lo}, max {hi}")
    return labels


class ClassPool:
    """Training images grouped by class, for the LoL test (no copy of the images).

    Args:
        images: uint8 [N, C, H, W] (any device; the test augments there).
        labels: int [N] class ids in ``[0, num_classes)``.
        num_classes: number of classes (default ``labels.max() + 1``).

    Attributes:
        images: the tensor given (not copied).
        counts: int64 [num_classes] images per class (CPU).
        order: int64 [N] indices of ``images`` sorted by class (stable), CPU.
        starts: int64 [num_classes] where each class begins in ``order``.

    Example:
        >>> images = torch.zeros(6, 3, 8, 8, dtype=torch.uint8)
        >>> pool = ClassPool(images, torch.tensor([2, 0, 2, 1, 2, 0]), num_classes=4)
        >>> pool.counts, pool.order
        (tensor([2, 1, 3, 0]), tensor([1, 5, 3, 0, 2, 4]))
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int] = None) -> None:
        _check_uint8_images(images, "images")
        lab = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
        if num_classes is None:
            if lab.numel() == 0:
                raise ValueError("num_classes: needed when labels is empty")
            num_classes = int(lab.max()) + 1
        num_classes = _positive_int(num_classes, "num_classes")
        lab = _check_labels(lab, num_classes, images.shape[0]).to("cpu", torch.int64)
        self.images = images
        self.num_classes = num_classes
        self.counts = torch.bincount(lab, minlength=num_classes)
        self.order = torch.argsort(lab, stable=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    @classmethod
    def from_list(cls, images_by_class: Sequence[torch.Tensor]) -> ClassPool:
        """A pool from one uint8 [n_c, C, H, W] tensor per class (concatenated once)."""
        if isinstance(images_by_class, torch.Tensor) or not isinstance(images_by_class, Sequence):
            raise TypeError("images_by_class: expected a sequence with one uint8 [n_c, C, H, W] tensor per class")
        if len(images_by_class) == 0:
            raise ValueError("images_by_class: expected at least one class")
        shape = None
        for c, t in enumerate(images_by_class):
            _check_uint8_images(t, f"images_by_class[{c}]")
            if shape is None:
                shape = tuple(t.shape[1:])
            elif tuple(t.shape[1:]) != shape:
                raise ValueError(
                    f"images_by_class[{c}]: expected images of shape {list(shape)} like class 0, got {list(t.shape[1:])}"
                )
        dev = images_by_class[0].device
        images = torch.cat([t.to(dev) for t in images_by_class])
        labels = torch.cat([torch.full((t.shape[0],), c, dtype=torch.int64) for c, t in enumerate(images_by_class)])
        return cls(images, labels, len(images_by_class))

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ClassPool(num_classes={self.num_classes}, images={list(self.images.shape)}, "
                f"device={self.images.device}, min_count={int(self.counts.min())}, max_count={int(self.counts.max())})")


# ----------------------------------------------------------------------------- the plan


def plan_sizes(levels: torch.Tensor, counts: torch.Tensor, num_test: int) -> torch.Tensor:
    """Test samples per class: ``T * (L_c + 1)(L_c + 2) / 2`` (0 for classes without images).

    Args:
        levels: int64 [C]; counts: int64 [C] images per class; num_test: T.
    Returns:
        int64 [C].
    """
    n = num_test * (levels + 1) * (levels + 2) // 2
    return torch.where(counts > 0, n, torch.zeros_like(n))


@dataclass(frozen=True)
class LoLPlan:
    """Every draw of one LoL test, for all classes (S test samples in total).

    Samples are ordered class by class, and within a class level by level (T samples at level
    0, then 2T at level 1, ...).

    Attributes:
        classes: int64 [S] class of each test sample.
        levels: int64 [S] the strength it is augmented at.
        index: int64 [S] index into the pool's images (drawn uniformly within the class).
        chains: the op chains, :class:`fastorals.augment.Chains` [S, K].
        pipeline: crop/flip/Cutout draws, :class:`fastorals.augment.PipelineDraws` [S].
    """

    classes: torch.Tensor
    levels: torch.Tensor
    index: torch.Tensor
    chains: Chains
    pipeline: PipelineDraws

    def __len__(self) -> int:
        return int(self.classes.shape[0])


def draw_plan(
    levels: torch.Tensor,
    pool: ClassPool,
    num_test: int,
    pipeline: BatchAugment,
    generator: Optional[torch.Generator] = None,
) -> LoLPlan:
    """Draw the whole LoL test of all classes.

    Draw order (all from ``generator``): image choices (float64 uniforms [S]), then the chains
    (:func:`fastorals.augment.sample_chains`: ops, signs), then the pipeline draws
    (:func:`fastorals.augment.draw_pipeline`: crop, flip, Cutout).

    Args:
        levels: int64 [C] current levels.
        pool: the training images by class.
        num_test: T, samples per unit of level (the test draws T (l + 1) at level l).
        pipeline: the augmentation (its sampler and crop/flip/Cutout settings).
        generator: a CPU generator.
    Returns:
        :class:`LoLPlan` on the CPU.
    """
    if not isinstance(pool, ClassPool):
        raise TypeError(f"pool: expected a ClassPool, got {type(pool).__name__}")
    levels = _check_levels(levels, "levels", pool.num_classes)
    num_test = _positive_int(num_test, "num_test")
    counts = pool.counts
    sizes = plan_sizes(levels, counts, num_test)
    total = int(sizes.sum())
    c_count = levels.shape[0]
    classes = torch.repeat_interleave(torch.arange(c_count), sizes)
    first = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(total) - first[classes]
    top = int(levels.max()) if c_count else 0
    per_level = num_test * (torch.arange(top + 1) + 1)
    seq = torch.repeat_interleave(torch.arange(top + 1), per_level)  # level of the k-th sample of a class
    lv = seq[pos] if total else torch.zeros(0, dtype=torch.int64)
    u = torch.rand(total, generator=generator, dtype=torch.float64)
    n_c = counts[classes]
    local = torch.minimum((u * n_c.to(torch.float64)).floor().to(torch.int64), (n_c - 1).clamp(min=0))
    index = pool.order[pool.starts[classes] + local] if total else torch.zeros(0, dtype=torch.int64)
    h, w = pool.image_size
    chains = pipeline.sample(lv, (h, w), generator=generator)
    draws = draw_pipeline(total, h, w, crop_padding=pipeline.crop_padding, flip_prob=pipeline.flip_prob,
                          cutout=pipeline.cutout, generator=generator)
    return LoLPlan(classes, lv, index, chains, draws)


def _check_levels(levels: Any, name: str, num_classes: int, max_level: Optional[int] = None) -> torch.Tensor:
    """int64 [C] levels on the CPU (a copy), in ``[0, max_level]`` (None: >= 0, the caller's
    tables bound the top), else an error naming ``name``."""
    t = levels if isinstance(levels, torch.Tensor) else torch.as_tensor(levels)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {t.dtype}")
    if tuple(t.shape) != (num_classes,):
        raise ValueError(f"{name}: expected shape [num_classes={num_classes}], got {list(t.shape)}")
    t = t.to("cpu", torch.int64).clone()
    if t.numel():
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or (max_level is not None and hi > max_level):
            want = ">= 0" if max_level is None else f"in [0, max_level={max_level}]"
            raise ValueError(f"{name}: expected levels {want}, got min {lo}, max {hi}")
    return t


def _to_float_images(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def evaluate_plan(
    predict: Callable[[torch.Tensor], torch.Tensor],
    pool: ClassPool,
    plan: LoLPlan,
    pipeline: BatchAugment,
    *,
    num_classes: int,
    max_level: int,
    positions: Optional[torch.Tensor] = None,
    batch_size: int = 1024,
    device: Optional[torch.device] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment the plan's samples in batches, predict, and count per (class, level).

    Args:
        predict: ``fn(x float32 [n, C, H, W]) -> int64 [n]`` predicted classes.
        pool, plan, pipeline: as for :func:`draw_plan`.
        num_classes, max_level: size of the count tables.
        positions: int64 [S'] which plan entries to evaluate (default: all; DDP ranks take a share).
        batch_size: samples augmented and evaluated per forward pass.
        device: where ``predict`` wants its inputs (default: where the pool's images are).
    Returns:
        (correct, trials): int64 [num_classes, max_level + 1] each, on the CPU.
    """
    num_classes = _positive_int(num_classes, "num_classes")
    max_level = _positive_int(max_level, "max_level", 0)
    batch_size = _positive_int(batch_size, "batch_size")
    l1 = max_level + 1
    if len(plan):  # the count tables index by (class, level): an entry past them would land in another class
        lo, hi = (int(v) for v in torch.aminmax(plan.levels))
        if lo < 0 or hi > max_level:
            raise ValueError(f"max_level: the plan has levels in [{lo}, {hi}], outside [0, max_level={max_level}]")
        lo, hi = (int(v) for v in torch.aminmax(plan.classes))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"num_classes: the plan has classes in [{lo}, {hi}], outside [0, {num_classes})")
    if positions is None:
        positions = torch.arange(len(plan))
    keys = plan.classes[positions] * l1 + plan.levels[positions]
    hits = torch.zeros(positions.numel(), dtype=torch.bool)
    src = pool.images
    for s in range(0, positions.numel(), batch_size):
        pos = positions[s:s + batch_size]
        idx = plan.index[pos].to(src.device)
        x = src.index_select(0, idx)
        x = apply_chains(
            x, plan.chains.ops[pos], plan.chains.magnitudes[pos], plan.chains.signs[pos],
            crop=plan.pipeline.crop[pos], flip=plan.pipeline.flip[pos], cutout=plan.pipeline.cutout[pos],
            mean=pipeline.mean, std=pipeline.std, out_dtype=pipeline.out_dtype, validate=False,
        )
        x = _to_float_images(x)
        if device is not None:
            x = x.to(device, non_blocking=True)
        pred = predict(x)
        if not isinstance(pred, torch.Tensor) or tuple(pred.shape) != (pos.numel(),):
            shape = list(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ValueError(f"predict: expected class ids of shape [{pos.numel()}] (one per input), got {shape}")
        hits[s:s + pos.numel()] = pred.cpu() == plan.classes[pos]
    correct = torch.bincount(keys[hits], minlength=num_classes * l1).view(num_classes, l1)
    trials = torch.bincount(keys, minlength=num_classes * l1).view(num_classes, l1)
    return correct, trials


# ----------------------------------------------------------------------------- the decision


def lol_decision(
    levels: torch.Tensor,
    correct: torch.Tensor,
    trials: torch.Tensor,
    accept_rate: Union[float, Fraction],
    max_level: int,
    *,
    strict: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LoL rule for all classes at once.

    A class is *accepted* when every level ``l <= L_c`` passes, ``V_l >= gamma * n_l`` (``>``
    with ``strict``, as the official code compares), where ``V_l``/``n_l`` are its correct
    predictions / trials at level ``l``. Accepted classes go up one level, the others down
    one; levels stay in ``[0, max_level]``. A class with no trials at some level ``l <= L_c``
    (no training images) keeps its level.

    Args:
        levels: int64 [C] current levels in ``[0, max_level]``.
        correct, trials: int64 [C, max_level + 1] counts per (class, level).
        accept_rate: gamma in [0, 1] (see :func:`accept_fraction`).
        max_level: L_max.
        strict: use ``V_l > gamma * n_l``.
    Returns:
        (new_levels int64 [C], accepted bool [C], tested bool [C]).

    Example:
        >>> lv = torch.tensor([0, 2])
        >>> correct = torch.tensor([[6, 0, 0], [10, 20, 17]]); trials = torch.tensor([[10, 0, 0], [10, 20, 30]])
        >>> lol_decision(lv, correct, trials, 0.6, 2)[0]      # class 0: 6/10 passes; class 1: 17/30 fails
        tensor([1, 1])
    """
    frac = accept_rate if isinstance(accept_rate, Fraction) else accept_fraction(_probability(accept_rate, "accept_rate"))
    if not 0 <= frac <= 1:
        raise ValueError(f"accept_rate: expected a number in [0, 1], got {frac}")
    max_level = _positive_int(max_level, "max_level", 0)
    levels = torch.as_tensor(levels)
    if tuple(correct.shape) != (levels.shape[0], max_level + 1) or correct.shape != trials.shape:
        raise ValueError(f"correct, trials: expected shape [C={levels.shape[0]}, max_level + 1={max_level + 1}] each, "
                         f"got {list(correct.shape)} and {list(trials.shape)}")
    p, q = frac.numerator, frac.denominator
    l1 = max_level + 1
    upto = torch.arange(l1).unsqueeze(0) <= levels.unsqueeze(1)  # [C, L+1] levels under test
    lhs, rhs = correct * q, trials * p
    passed = lhs > rhs if strict else lhs >= rhs
    tested = ((trials > 0) | ~upto).all(1)
    accepted = (passed | ~upto).all(1) & tested
    step = torch.where(accepted, 1, -1)
    new = torch.where(tested, (levels + step).clamp(0, max_level), levels)
    return new, accepted, tested


@dataclass
class LoLResult:
    """What one LoL update did.

    Attributes:
        levels_before, levels_after: int64 [C].
        correct, trials: int64 [C, max_level + 1] counts per (class, level), summed over ranks.
        accepted: bool [C] classes whose every level up to L_c passed.
        tested: bool [C] classes that could be tested (have images).
        num_evaluated: test samples this process evaluated (its share under DDP).
        num_total: test samples of the whole test (all ranks).
        seconds: wall time of the update in this process.
    """

    levels_before: torch.Tensor
    levels_after: torch.Tensor
    correct: torch.Tensor
    trials: torch.Tensor
    accepted: torch.Tensor
    tested: torch.Tensor
    num_evaluated: int
    num_total: int
    seconds: float

    def accuracy(self) -> torch.Tensor:
        """float64 [C, max_level + 1]: correct / trials (NaN where untested)."""
        t = self.trials.to(torch.float64)
        return torch.where(t > 0, self.correct.to(torch.float64) / t.clamp(min=1), torch.full_like(t, float("nan")))
