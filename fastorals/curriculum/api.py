"""``CurriculumAugment``: per-class augmentation strengths that follow the model (CUDA).

The curriculum keeps one level ``L_c`` in ``[0, max_level]`` per class. During training a
sample of class ``y`` is augmented at strength ``L_y`` with probability ``aug_prob`` (else 0):
``L_y`` ops drawn uniformly from the 22 PIL ops, each at the magnitude of level ``L_y``, inside
the usual crop/flip(/Cutout) pipeline, all in one batched kernel call
(:class:`fastorals.augment.BatchAugment`). Before every epoch :meth:`CurriculumAugment.update`
runs the Level-of-Learning test (:mod:`fastorals.curriculum.lol`) for all classes as a few large
batched forward passes and moves each level up or down by one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .._args import flag as _flag
from .._args import int_arg as _positive_int
from .._args import probability as _probability
from .._args import real as _real
from ..augment import BatchAugment
from ..augment.api import MAGNITUDE_MODES
from .lol import (
    ClassPool,
    LoLResult,
    _check_labels,
    _check_levels,
    _check_uint8_images,
    accept_fraction,
    derive_seed,
    draw_plan,
    evaluate_plan,
    lol_decision,
)

__all__ = ["CurriculumAugment"]

_TRAIN_STREAM = 0x7472  # "tr"
_TEST_STREAM = 0x6C6F6C  # "lol"
_STATE_VERSION = 1

PoolLike = Union[ClassPool, Sequence[torch.Tensor], Any]


def _dist_info(group: Any) -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _unwrap(model: Callable) -> Callable:
    # DDP/DataParallel forwards may run collectives (buffer broadcast); the test is evaluation only.
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _model_device(model: Callable, default: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for t in model.parameters():
            return t.device
        for t in model.buffers():
            return t.device
    return default


def _model_dtype(model: Callable) -> Optional[torch.dtype]:
    """The dtype of a module's first floating-point parameter (or buffer): its inputs' dtype."""
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            if t.dtype.is_floating_point:
                return t.dtype
    return None


def _state_int(state: dict[str, Any], key: str, minimum: Optional[int]) -> int:
    """``state[key]`` as an int (integer-like values too), at least ``minimum`` (None: any)."""
    return _positive_int(state[key], f"state['{key}']", minimum)


class CurriculumAugment:
    """CUDA: a curriculum of per-class augmentation strengths for long-tailed recognition.

    Args:
        num_classes: number of classes C.
        max_level: L_max, the strongest level (default 10).
        accept_rate: gamma: a level passes when at least ``gamma * T (l + 1)`` of its test
            samples are classified correctly (default 0.6).
        num_test: T, test samples per unit of level (default 10).
        aug_prob: probability that a training sample is augmented at its class's level
            (else strength 0: only the base pipeline), default 0.5.
        magnitude_mode: "monotone" (default; every op gets stronger with the level) or
            "official" (the paper code's mapping, see :mod:`fastorals.augment.opset`).
        pipeline: a :class:`fastorals.augment.BatchAugment` to use instead of building one from
            the arguments below (its ``max_level``/``magnitude_mode`` must agree).
        crop_padding, flip_prob, cutout: the base pipeline (defaults 4, 0.5, 0: the paper's
            CIFAR pipeline without Cutout).
        mean, std: Normalize inside the kernel (default None: output ``x / 255`` in [0, 1], for
            models that normalize themselves).
        ops, strongest, official_max_d: the op pool and magnitude settings of the sampler.
        logit_adjustment: tau; the LoL test predicts ``argmax(logits - tau * log prior)``
            (0 = off, the default; 1 = the official ``posthoc_la``).
        class_counts: int [C] training images per class for the prior (default: the pool's counts).
        strict_accept: pass a level only when ``V_l > gamma * T (l + 1)`` (the official code's
            comparison) instead of ``>=`` (the paper's rule).
        eval_batch_size: test samples augmented and evaluated per forward pass (default: 256
            for a model on the CPU, where larger batches fall out of cache and get slower per
            image, 1024 on a GPU).
        seed: base seed of every random draw (training calls and tests).
        process_group: DDP group (default: the world, when ``torch.distributed`` is initialized).

    Attributes:
        levels: int64 [C] (a copy; see :meth:`set_levels`).
        history: int64 [U, C] levels after each of the U updates so far.
        last_result: the :class:`~fastorals.curriculum.lol.LoLResult` of the last update.

    Randomness: call ``k`` on rank ``r`` uses a generator seeded with ``(seed, "tr", r, k)``;
    update ``u`` uses one seeded with ``(seed, "lol", u)`` on every rank (each rank evaluates a disjoint share
    of the same test, and the counts are all-reduced). The state is therefore just counters and
    levels: :meth:`state_dict` + :meth:`load_state_dict` resume exactly, on any number of ranks.

    Example:
        >>> from fastorals import data, models
        >>> from fastorals.training import fit
        >>> train = data.synthetic_images(600, num_classes=3, size=16, seed=0)
        >>> cur = CurriculumAugment(num_classes=3)
        >>> pool = ClassPool(train.images, train.labels, 3)
        >>> model = models.MLP(3 * 16 * 16, 3, hidden=(32,))
        >>> _ = fit(model, data.TensorLoader(train, batch_size=100), 2, augment=cur,
        ...         on_epoch_start=cur.hook(pool), extra_state={"curriculum": cur}, progress=False)
        >>> cur(train.images[:8], train.labels[:8]).shape       # float32 [B, 3, H, W] in [0, 1]
        torch.Size([8, 3, 16, 16])
        >>> cur.levels.shape, cur.history.shape                # after the updates at epochs 0 and 1
        (torch.Size([3]), torch.Size([2, 3]))
    """

    def __init__(
        self,
        num_classes: int,
        max_level: int = 10,
        accept_rate: float = 0.6,
        num_test: int = 10,
        aug_prob: float = 0.5,
        magnitude_mode: str = "monotone",
        *,
        pipeline: Optional[BatchAugment] = None,
        crop_padding: Optional[int] = None,
        flip_prob: Optional[float] = None,
        cutout: Optional[int] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        ops: Optional[Sequence[Union[int, str]]] = None,
        strongest: Optional[dict[str, float]] = None,
        official_max_d: Optional[float] = None,
        logit_adjustment: float = 0.0,
        class_counts: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        strict_accept: bool = False,
        eval_batch_size: Optional[int] = None,
        seed: int = 0,
        process_group: Any = None,
    ) -> None:
        self.num_classes = _positive_int(num_classes, "num_classes")
        self.max_level = _positive_int(max_level, "max_level")
        self.accept_rate = _probability(accept_rate, "accept_rate")
        self.num_test = _positive_int(num_test, "num_test")
        self.aug_prob = _probability(aug_prob, "aug_prob")
        if magnitude_mode not in MAGNITUDE_MODES:
            raise ValueError(f"magnitude_mode: expected one of {MAGNITUDE_MODES}, got {magnitude_mode!r}")
        self.magnitude_mode = magnitude_mode
        tau = _real(logit_adjustment)
        if tau is None or not abs(tau) < float("inf"):  # NaN fails too
            raise ValueError(f"logit_adjustment: expected a finite number (tau), got {logit_adjustment!r}")
        self.logit_adjustment = tau
        self.strict_accept = _flag(strict_accept, "strict_accept")
        self.eval_batch_size = None if eval_batch_size is None else _positive_int(eval_batch_size, "eval_batch_size")
        self.seed = _positive_int(seed, "seed", None)
        self.process_group = process_group
        self._fraction = accept_fraction(self.accept_rate)

        custom = dict(crop_padding=crop_padding, flip_prob=flip_prob, cutout=cutout, mean=mean, std=std, ops=ops,
                      strongest=strongest, official_max_d=official_max_d)
        if pipeline is not None:
            given = [k for k, v in custom.items() if v is not None]
            if given:
                raise ValueError(f"pipeline: give either a BatchAugment or the pipeline arguments, not both (got {given})")
            if not isinstance(pipeline, BatchAugment):
                raise TypeError(f"pipeline: expected a fastorals.augment.BatchAugment, got {type(pipeline).__name__}")
            if pipeline.max_level != self.max_level:
                raise ValueError(f"pipeline: its max_level {pipeline.max_level} differs from max_level={self.max_level}")
            if pipeline.magnitude_mode != self.magnitude_mode:
                raise ValueError(
                    f"pipeline: its magnitude_mode {pipeline.magnitude_mode!r} differs from magnitude_mode={self.magnitude_mode!r}"
                )
            self.pipeline = pipeline
        else:
            self.pipeline = BatchAugment(
                max_level=self.max_level, magnitude_mode=self.magnitude_mode, ops=ops, strongest=strongest,
                official_max_d=30.0 if official_max_d is None else official_max_d,
                crop_padding=4 if crop_padding is None else crop_padding,
                flip_prob=0.5 if flip_prob is None else flip_prob,
                cutout=0 if cutout is None else cutout, mean=mean, std=std, out_dtype=torch.float32,
            )
        self.class_counts = None if class_counts is None else self._counts_tensor(class_counts)
        self._levels = torch.zeros(self.num_classes, dtype=torch.int64)
        self._history: list[torch.Tensor] = []
        self._num_calls = 0
        self._num_updates = 0
        self.last_result: Optional[LoLResult] = None
        self._pool_cache: Optional[tuple[int, ClassPool]] = None

    # ------------------------------------------------------------------ levels

    @property
    def levels(self) -> torch.Tensor:
        """int64 [C]: the current level of every class (a copy)."""
        return self._levels.clone()

    def set_levels(self, levels: Union[torch.Tensor, Sequence[int]]) -> None:
        """Set every class's level (int [C] in ``[0, max_level]``)."""
        self._levels = self._check_levels(levels, "levels")

    @property
    def history(self) -> torch.Tensor:
        """int64 [U, C]: the levels after each update so far (U = number of updates)."""
        if not self._history:
            return torch.zeros(0, self.num_classes, dtype=torch.int64)
        return torch.stack(self._history)

    @property
    def num_updates(self) -> int:
        return self._num_updates

    def _check_levels(self, levels: Any, name: str) -> torch.Tensor:
        return _check_levels(levels, name, self.num_classes, self.max_level)

    def _counts_tensor(self, counts: Any) -> torch.Tensor:
        t = counts if isinstance(counts, torch.Tensor) else torch.as_tensor(counts)
        if t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"class_counts: expected a numeric tensor, got dtype {t.dtype}")
        if tuple(t.shape) != (self.num_classes,):
            raise ValueError(f"class_counts: expected shape [num_classes={self.num_classes}], got {list(t.shape)}")
        t = t.to("cpu", torch.float64)
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise ValueError("class_counts: expected finite, non-negative counts")
        return t

    # ------------------------------------------------------------------ training-time augmentation

    def _train_generator(self) -> torch.Generator:
        rank, _ = _dist_info(self.process_group)
        return torch.Generator().manual_seed(derive_seed(self.seed, _TRAIN_STREAM, rank, self._num_calls))

    def strengths(self, labels: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Per-sample strengths: ``L_y`` with probability ``aug_prob``, else 0.

        Args:
            labels: int [B] class ids in ``[0, num_classes)``.
            generator: draws the coin flips (uniforms [B]).
        Returns:
            int64 [B] on the CPU.
        """
        lab = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
        lab = _check_labels(lab, self.num_classes, lab.shape[0] if lab.dim() == 1 else 0)
        lab = lab.to("cpu", torch.int64)
        coin = torch.rand(lab.shape[0], generator=generator) < self.aug_prob
        return torch.where(coin, self._levels[lab], torch.zeros_like(lab))

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Augment a training batch at its classes' levels.

        Args:
            images: uint8 [B, C, H, W] (C = 1 or 3), CPU (C++ kernel) or CUDA (Triton kernel).
            labels: int [B] class ids in ``[0, num_classes)`` (any device).
            generator: override the derived per-call generator (then the call counter still
                advances, so later calls are unaffected).
        Returns:
            the pipeline's output, float32 [B, C, H, W] by default (``x / 255``, or normalized
            when mean/std were given), on the images' device.

        Draw order: coin flips [B], then the chains and pipeline draws of
        :class:`fastorals.augment.BatchAugment`.
        """
        _check_uint8_images(images, "images")
        if images.shape[1] not in (1, 3):  # checked before the call counter moves: a failed call draws nothing
            raise ValueError(f"images: expected 1 or 3 channels, got shape {list(images.shape)}")
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        _check_labels(labels, self.num_classes, images.shape[0])
        g = generator if generator is not None else self._train_generator()
        self._num_calls += 1
        s = self.strengths(labels, g)
        return self.pipeline(images, s, g)

    # ------------------------------------------------------------------ the LoL update

    def _as_pool(self, images_by_class: PoolLike) -> ClassPool:
        if isinstance(images_by_class, ClassPool):
            pool = images_by_class
        elif hasattr(images_by_class, "images") and hasattr(images_by_class, "labels") and not isinstance(
            images_by_class, (list, tuple)
        ):  # an ImageDataset
            labels = images_by_class.labels
            # the grouping depends on the labels only: a relabelled data set (new tensor, or one
            # changed in place, which bumps its version) is grouped again
            key = (id(images_by_class), id(labels), getattr(labels, "_version", None))
            if self._pool_cache is not None and self._pool_cache[0] == key and \
                    self._pool_cache[1].images is images_by_class.images:
                pool = self._pool_cache[1]
            else:
                pool = ClassPool(images_by_class.images, images_by_class.labels, self.num_classes)
                self._pool_cache = (key, pool)
        elif isinstance(images_by_class, Sequence) and not isinstance(images_by_class, torch.Tensor):
            if len(images_by_class) != self.num_classes:
                raise ValueError(
                    f"images_by_class: expected one tensor per class ({self.num_classes}), got {len(images_by_class)}"
                )
            pool = ClassPool.from_list(images_by_class)
        else:
            raise TypeError(
                "images_by_class: expected a ClassPool, an ImageDataset or a sequence of uint8 [n_c, C, H, W] "
                f"tensors (one per class), got {type(images_by_class).__name__}"
            )
        if pool.num_classes != self.num_classes:
            raise ValueError(f"images_by_class: the pool has {pool.num_classes} classes, expected {self.num_classes}")
        if pool.images.shape[1] not in (1, 3):
            raise ValueError(f"images_by_class: expected 1 or 3 channels, got {pool.images.shape[1]}")
        return pool

    def _log_prior(self, pool: ClassPool) -> torch.Tensor:
        given = self.class_counts is not None
        counts = self.class_counts if given else pool.counts.to(torch.float64)
        if bool((counts <= 0).any()):
            empty = (counts <= 0).nonzero().flatten().tolist()
            where = "class_counts" if given else "images_by_class (the counts come from the pool)"
            raise ValueError(f"{where}: logit adjustment needs a positive count for every class; "
                             f"classes {empty[:8]} have none")
        return torch.log(counts / counts.sum())

    def update(
        self, model: Callable[[torch.Tensor], torch.Tensor], images_by_class: PoolLike,
        *, generator: Optional[torch.Generator] = None,
    ) -> LoLResult:
        """Run the Level-of-Learning test for all classes and move every level by one.

        The test of all classes is drawn at once (T (l + 1) samples of class c at every level
        l <= L_c), augmented and classified in batches of ``eval_batch_size`` with the model in
        eval mode (its mode is restored afterwards), and decided by :func:`lol_decision`. Under
        DDP each rank evaluates a disjoint share of the same test and the counts are
        all-reduced, so every rank ends with the same levels (checked).

        Args:
            model: maps float32 [n, C, H, W] to logits [n, num_classes] (a DDP-wrapped module
                is unwrapped for the test).
            images_by_class: a :class:`ClassPool` (fastest: built once), an
                :class:`fastorals.data.ImageDataset`, or one uint8 [n_c, C, H, W] tensor per class.
            generator: override the derived per-update generator (must then be the same on
                every rank).
        Returns:
            :class:`~fastorals.curriculum.lol.LoLResult`; also stored as ``last_result``.
        """
        t0 = time.perf_counter()
        pool = self._as_pool(images_by_class)
        rank, world = _dist_info(self.process_group)
        g = generator if generator is not None else torch.Generator().manual_seed(
            derive_seed(self.seed, _TEST_STREAM, self._num_updates))
        before = self._levels.clone()
        plan = draw_plan(before, pool, self.num_test, self.pipeline, g)
        positions = torch.arange(rank, len(plan), world)
        net = _unwrap(model)
        device = _model_device(net, pool.images.device)
        log_prior = self._log_prior(pool).to(device, torch.float32) if self.logit_adjustment else None
        tau = self.logit_adjustment
        in_dtype = _model_dtype(net)  # a float64 or half model gets its own dtype (the kernel gives float32)
        nan_rows = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device: no sync per batch

        def predict(x: torch.Tensor) -> torch.Tensor:
            if in_dtype is not None and x.dtype != in_dtype:
                x = x.to(in_dtype)
            logits = net(x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape != (x.shape[0], self.num_classes):
                shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"model: expected logits of shape [{x.shape[0]}, num_classes={self.num_classes}], got {shape}")
            if not logits.dtype.is_floating_point:
                raise TypeError(f"model: expected floating-point logits, got {logits.dtype}")
            nan_rows.add_(torch.isnan(logits).any(1).sum())
            if log_prior is not None:
                logits = logits.float() - tau * log_prior
            return logits.argmax(1)

        was_training = net.training if isinstance(net, nn.Module) else None
        if isinstance(net, nn.Module):
            net.eval()
        try:
            with torch.no_grad():
                correct, trials = evaluate_plan(
                    predict, pool, plan, self.pipeline, num_classes=self.num_classes, max_level=self.max_level,
                    positions=positions, batch_size=self._eval_batch(device), device=device,
                )
        finally:
            if isinstance(net, nn.Module):
                net.train(was_training)
        bad = int(nan_rows)
        if world > 1:  # every rank learns of NaN logits anywhere, so all raise together
            correct, trials, bad = self._all_reduce(correct, trials, before, bad, device)
        if bad:  # argmax of NaN logits is class 0: the test would pass class 0 on a broken model
            raise ValueError(f"model: returned NaN logits for {bad} of {len(plan)} test samples; "
                             "the levels are left unchanged")
        new, accepted, tested = lol_decision(before, correct, trials, self._fraction, self.max_level,
                                             strict=self.strict_accept)
        self._levels = new
        self._history.append(new.clone())
        self._num_updates += 1
        result = LoLResult(before, new.clone(), correct, trials, accepted, tested, int(positions.numel()), len(plan),
                           time.perf_counter() - t0)
        self.last_result = result
        return result

    def _eval_batch(self, device: torch.device) -> int:
        if self.eval_batch_size is not None:
            return self.eval_batch_size
        return 1024 if device.type == "cuda" else 256

    def _all_reduce(self, correct: torch.Tensor, trials: torch.Tensor, levels: torch.Tensor, nan_rows: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        import torch.distributed as dist

        c, l1 = correct.shape
        # the sums of the levels and of their squares equal world * levels and world * levels**2
        # on a rank only when every rank holds its levels (equality in Cauchy-Schwarz); the sum
        # alone would pass on a rank whose levels are the mean of different ones (3+ ranks)
        buf = torch.cat([correct.flatten(), trials.flatten(), levels, levels * levels,
                         torch.tensor([nan_rows])]).to(device)
        dist.all_reduce(buf, group=self.process_group)
        buf, bad = buf[:-1].cpu(), int(buf[-1])
        world = dist.get_world_size(self.process_group)
        if not torch.equal(buf[2 * c * l1:], torch.cat([levels, levels * levels]) * world):
            raise RuntimeError(
                "CurriculumAugment.update: levels differ across ranks; load the same state on every rank "
                "(state_dict/load_state_dict) before training"
            )
        return buf[: c * l1].view(c, l1), buf[c * l1: 2 * c * l1].view(c, l1), bad

    def hook(self, images_by_class: PoolLike, every: int = 1) -> Callable[[int, Callable], None]:
        """An ``on_epoch_start(epoch, model)`` hook for :func:`fastorals.training.fit` that runs
        :meth:`update` every ``every`` epochs (epochs 0, every, 2 every, ...).

        Example:
            >>> fit(model, loader, 200, augment=cur, on_epoch_start=cur.hook(pool),  # doctest: +SKIP
            ...     extra_state={"curriculum": cur})
        """
        every = _positive_int(every, "every")
        pool = images_by_class if isinstance(images_by_class, ClassPool) else self._as_pool(images_by_class)

        def on_epoch_start(epoch: int, model: Callable) -> None:
            if epoch % every == 0:
                self.update(model, pool)

        return on_epoch_start

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Levels, counters, seed and history (tensors and ints: loads with ``weights_only=True``)."""
        return {
            "version": _STATE_VERSION,
            "num_classes": self.num_classes,
            "max_level": self.max_level,
            "levels": self._levels.clone(),
            "num_calls": self._num_calls,
            "num_updates": self._num_updates,
            "seed": self.seed,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (checks classes, max level and the levels' range)."""
        if not isinstance(state, dict):
            raise TypeError(f"state: expected a dict from state_dict(), got {type(state).__name__}")
        missing = [k for k in ("num_classes", "max_level", "levels", "num_calls", "num_updates", "seed") if k not in state]
        if missing:
            raise KeyError(f"state: missing entries {missing}")
        version = _state_int(state, "version", 1) if "version" in state else _STATE_VERSION
        if version != _STATE_VERSION:
            raise ValueError(f"state['version']: expected {_STATE_VERSION}, got {version} (saved by another release)")
        if _state_int(state, "num_classes", 1) != self.num_classes:
            raise ValueError(f"state: saved for num_classes={int(state['num_classes'])}, this curriculum has {self.num_classes}")
        if _state_int(state, "max_level", 1) != self.max_level:
            raise ValueError(f"state: saved for max_level={int(state['max_level'])}, this curriculum has {self.max_level}")
        levels = self._check_levels(state["levels"], "state['levels']")
        num_calls = _state_int(state, "num_calls", 0)
        num_updates = _state_int(state, "num_updates", 0)
        seed = _state_int(state, "seed", None)
        hist = state.get("history")
        if hist is None:
            hist = torch.zeros(0, self.num_classes, dtype=torch.int64)
        hist = torch.as_tensor(hist)
        if hist.dim() != 2 or hist.shape[1] != self.num_classes:
            raise ValueError(f"state['history']: expected shape [U, {self.num_classes}], got {list(hist.shape)}")
        if hist.shape[0] > num_updates:  # fewer rows: a state resumed without its history keeps the later ones
            raise ValueError(f"state['history']: expected at most one row per update ({num_updates}), got {hist.shape[0]}")
        rows = [self._check_levels(r, f"state['history'][{i}]") for i, r in enumerate(hist)]
        self._levels = levels
        self._num_calls = num_calls
        self._num_updates = num_updates
        self.seed = seed
        self._history = rows
        self.last_result = None

    def __repr__(self) -> str:
        return (f"CurriculumAugment(num_classes={self.num_classes}, max_level={self.max_level}, "
                f"accept_rate={self.accept_rate}, num_test={self.num_test}, aug_prob={self.aug_prob}, "
                f"magnitude_mode={self.magnitude_mode!r}, logit_adjustment={self.logit_adjustment}, "
                f"updates={self._num_updates}, mean_level={float(self._levels.double().mean()):.2f})")
