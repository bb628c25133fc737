"""Functional API and module: per-sample op chains on uint8 batches, sampled RandAugment-style.

Three layers, each usable on its own:

* :func:`apply_chains` applies explicit per-sample chains (op ids, values, signs) and explicit
  crop/flip/cutout draws: deterministic, the registered ops underneath.
* :func:`batch_augment` draws the crop/flip/cutout parameters from a ``torch.Generator`` and
  calls :func:`apply_chains`.
* :func:`sample_chains` / :class:`ChainSampler` turn per-sample strengths (levels) into chains,
  and :class:`BatchAugment` puts sampling and application in one ``nn.Module``.

All random draws happen in PyTorch from the given generator, so the C++, Triton and reference
backends produce the same images for the same seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from .._args import as_int, as_tensor, int_arg, probability, real
from .._ext import select_backend
from .._transfer import to_device_packed
from . import opset as O
from .ops import augment_apply, augment_apply_cpp, augment_apply_reference

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "BatchAugment",
    "ChainSampler",
    "Chains",
    "PipelineDraws",
    "apply_chains",
    "batch_augment",
    "draw_pipeline",
    "sample_chains",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

MAGNITUDE_MODES = ("monotone", "official")
_BACKENDS = ("triton", "cpp", "reference")

TensorLike = Union[torch.Tensor, Sequence]


# ----------------------------------------------------------------------------- chains


@dataclass(frozen=True)
class Chains:
    """Per-sample op chains, padded to a common length with op id -1.

    Attributes:
        ops: int32 [B, K] op ids (see :mod:`fastorals.augment.opset`), -1 = none.
        magnitudes: float64 [B, K] op values in PIL's units (see :mod:`.opset`), before the sign.
        signs: int8 [B, K] of +1/-1; -1 maps a signed op's value v to ``2 * identity - v``
            (a reflection about the identity; unsigned ops ignore it).
    """

    ops: torch.Tensor
    magnitudes: torch.Tensor
    signs: torch.Tensor

    def __len__(self) -> int:
        return int(self.ops.shape[0])

    @property
    def max_ops(self) -> int:
        """K, the padded chain length."""
        return int(self.ops.shape[1])

    def num_ops(self) -> torch.Tensor:
        """int64 [B]: ops per sample (entries that are not -1)."""
        return (self.ops >= 0).sum(1)

    def values(self) -> torch.Tensor:
        """float64 [B, K]: the values the kernels apply (signs folded in)."""
        return O.signed_values(self.ops, self.magnitudes, self.signs)

    def to(self, device: Union[str, torch.device]) -> Chains:
        return Chains(self.ops.to(device), self.magnitudes.to(device), self.signs.to(device))

    @classmethod
    def from_lists(
        cls,
        ops: Sequence[Sequence[O.OpLike]],
        magnitudes: Optional[Sequence[Sequence[float]]] = None,
        signs: Optional[Sequence[Sequence[int]]] = None,
    ) -> Chains:
        """Chains from ragged Python lists (op names or ids; -1 or None for an empty slot), padded with -1.

        ``magnitudes`` and ``signs`` (+1/-1), when given, have a row per chain with a value per op.

        Example:
            >>> ch = Chains.from_lists([["Rotate", "Invert"], []], [[15.0, 0.0], []])
            >>> ch.ops.tolist(), ch.magnitudes.tolist()
            ([[10, 7], [-1, -1]], [[15.0, 0.0], [0.0, 0.0]])
        """
        b = len(ops)
        for name, rows in (("magnitudes", magnitudes), ("signs", signs)):
            if rows is None:
                continue
            if len(rows) != b:
                raise ValueError(f"{name}: expected {b} rows like ops, got {len(rows)}")
            for i, (row, r) in enumerate(zip(ops, rows)):
                if len(r) != len(row):
                    raise ValueError(f"{name}: row {i} has {len(r)} entries for {len(row)} ops")
        k = max((len(r) for r in ops), default=0)
        o = torch.full((b, k), O.NONE, dtype=torch.int32)
        m = torch.zeros(b, k, dtype=torch.float64)
        s = torch.ones(b, k, dtype=torch.int8)
        for i, row in enumerate(ops):
            for j, op in enumerate(row):
                o[i, j] = _slot_id(op, i, j)
                if magnitudes is not None:
                    m[i, j] = float(magnitudes[i][j])
                if signs is not None:
                    if signs[i][j] not in (1, -1):
                        raise ValueError(f"signs: expected +1 or -1, got {signs[i][j]!r} at [{i}, {j}]")
                    s[i, j] = int(signs[i][j])
        return cls(o, m, s)


def _slot_id(op, i: int, j: int, name: str = "") -> int:
    """The id of chain slot ``[i, j]`` given as a name, an id, -1 or None (an empty slot)."""
    try:
        return O.NONE if op is None or (isinstance(op, int) and op == O.NONE) else O.op_id(op)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name}{e} at [{i}, {j}]") from None


def _refuse_host_draws_in_capture(dev: torch.device, who: str) -> None:
    """Host draws inside the caller's CUDA graph capture would be frozen into it (every replay
    of that graph would apply the same augmentation): refused before anything is drawn."""
    if dev.type == "cpu" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"{who}: called inside a CUDA graph capture with a CPU generator, whose draws would be "
                           "replayed unchanged; pass generator=torch.Generator('cuda') to draw on the device, or "
                           "call it outside the captured region")


def _as_generator_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _levels_tensor(x: TensorLike, name: str, batch: Optional[int] = None) -> torch.Tensor:
    t = as_tensor(x, name)
    if t.dtype.is_floating_point:
        if not torch.all(t == t.round()) or not torch.all(t.abs() < 2.0**63):  # inf too: no int64 wrap
            raise ValueError(f"{name}: expected whole numbers, got {t}")
    elif t.dtype == torch.bool or t.dtype.is_complex:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.dim() != 1:
        raise ValueError(f"{name}: expected shape [B], got {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name}: expected {batch} entries, got {t.shape[0]}")
    return t


def sample_chains(
    strengths: TensorLike,
    *,
    image_size: Optional[tuple[int, int]] = None,
    num_ops: Optional[Union[int, TensorLike]] = None,
    max_level: int = 10,
    magnitude_mode: str = "monotone",
    ops: Optional[Sequence[O.OpLike]] = None,
    strongest: Optional[Mapping[str, float]] = None,
    official_max_d: float = 30.0,
    max_ops: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Chains:
    """RandAugment-style per-sample chains: sample i gets ``num_ops[i]`` ops drawn uniformly with
    replacement from ``ops``, each at the magnitude of level ``strengths[i]``.

    With ``num_ops=None`` a strength ``s`` means ``s`` ops at level ``s`` (the CUDA paper).

    Args:
        strengths: int [B], levels in ``[0, max_level]``.
        image_size: (H, W); needed by the monotone mapping of TranslateX/Y (a fraction of the side).
        num_ops: ops per sample: None (= strengths), an int, or int [B].
        max_level: the strongest level.
        magnitude_mode: "monotone" (default; distance from identity grows with the level) or
            "official" (the paper code's ``lo + level / 30 * (hi - lo)``, see :mod:`.opset`).
        ops: distinct op names or ids to draw from (default: all 22).
        strongest: monotone mode only: overrides of the value at ``max_level`` per op name
            (defaults :data:`.opset.MONOTONE_STRONGEST`; TranslateX/Y as a fraction of the side).
        official_max_d: official mode's divisor (30 in the paper's code).
        max_ops: pad chains to this length K (default: the largest ``num_ops``).
        generator: source of randomness (its device is where the draws happen).
    Returns:
        :class:`Chains` with K = ``max_ops``, on the generator's device (CPU by default).

    Draw order (for reproducibility): op indices [B, K], then signs [B, K].

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> chains = sample_chains(torch.tensor([0, 3, 10]), image_size=(32, 32), generator=g)
        >>> chains.ops.shape
        torch.Size([3, 10])
    """
    max_level, official_max_d = _check_sampler(max_level, magnitude_mode, official_max_d, strongest)
    chains = _sample_chains(strengths, image_size, num_ops, max_level, magnitude_mode, ops, strongest,
                            official_max_d, max_ops, generator)
    _warn_past_official_ranges(max_level, magnitude_mode, official_max_d)
    return chains


def _sample_chains(strengths: TensorLike, image_size, num_ops, max_level: int, magnitude_mode: str, ops, strongest,
                   official_max_d: float, max_ops: Optional[int], generator: Optional[torch.Generator]) -> Chains:
    """:func:`sample_chains` with the sampler settings already checked (a :class:`ChainSampler`'s)."""
    image_size = _image_size(image_size)
    dev = _as_generator_device(generator)
    levels, n, k = _chain_lengths(strengths, num_ops, max_level, max_ops, dev)
    tab = _chain_table(ops, magnitude_mode, strongest, image_size, max_level, official_max_d, dev)
    if magnitude_mode == "monotone" and image_size is None and bool(
            ((tab.pool == O.TRANSLATE_X) | (tab.pool == O.TRANSLATE_Y)).any()):
        raise ValueError("image_size: needed (H, W) for the monotone TranslateX/Y magnitudes (a fraction of the side)")
    b = levels.shape[0]
    _, sign_draw, active, op = _draw_slots(tab, n, b, k, generator, dev)
    idx = op.clamp(min=0)
    mag = tab.magnitudes(levels.to(torch.float64).unsqueeze(1).expand(b, k), idx)
    mag = torch.where(active, mag, torch.zeros_like(mag))
    signed_mask = tab.randomly_signed[idx] & active
    signs = torch.where(signed_mask, sign_draw * 2 - 1, torch.ones_like(sign_draw)).to(torch.int8)
    return Chains(op.to(torch.int32), mag, signs)


def _check_sampler(max_level: int, magnitude_mode: str, official_max_d: float, strongest=None) -> tuple[int, float]:
    """The checked ``(max_level, official_max_d)`` as an int and a float."""
    if magnitude_mode not in MAGNITUDE_MODES:
        raise ValueError(f"magnitude_mode: expected one of {MAGNITUDE_MODES}, got {magnitude_mode!r}")
    if strongest and magnitude_mode != "monotone":
        raise ValueError("strongest: only used with magnitude_mode='monotone'; official mode takes the paper's "
                         "op ranges (official_max_d scales the levels)")
    max_level = int_arg(max_level, "max_level")
    d = real(official_max_d)
    if d is None or not (math.isfinite(d) and d > 0):
        raise ValueError(f"official_max_d: expected a positive number, got {official_max_d!r}")
    return max_level, d


def _warn_past_official_ranges(max_level: int, magnitude_mode: str, official_max_d: float) -> None:
    """A configuration the domains allow (checked before) but past the paper's op ranges."""
    if magnitude_mode == "official" and max_level > official_max_d:
        warnings.warn(
            f"max_level={max_level} > official_max_d={official_max_d:g}: official mode maps level s to "
            f"lo + (s / {official_max_d:g}) (hi - lo), so levels above {official_max_d:g} leave the paper's "
            "op ranges (e.g. rotations past 30 degrees, Solarize thresholds past 256, the identity)",
            UserWarning, stacklevel=3)


def _image_size(image_size) -> Optional[tuple[int, int]]:
    if image_size is None:
        return None
    try:
        ok = not isinstance(image_size, (str, bytes)) and len(image_size) == 2 and not any(
            isinstance(v, (bool, str, bytes)) for v in image_size)
        h, w = (int(v) for v in image_size)
        ok = ok and all(float(v) == int(v) for v in image_size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1:
        raise ValueError(f"image_size: expected (H, W) with H, W >= 1, got {image_size!r}")
    return h, w


def _chain_lengths(strengths: TensorLike, num_ops, max_level: int, max_ops: Optional[int], dev: torch.device,
                   batch: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Checked levels [B] and ops per sample [B] (int64, on ``dev``) and the padded length K.

    ``batch``: the number of levels expected (None: any).
    """
    levels = _levels_tensor(strengths, "strengths", batch).to(dev)
    b = levels.shape[0]
    lo, hi = (int(v) for v in torch.aminmax(levels)) if b else (0, 0)
    if lo < 0 or hi > max_level:
        raise ValueError(f"strengths: expected levels in [0, max_level={max_level}], got min {lo}, max {hi}")
    if not isinstance(num_ops, torch.Tensor) or num_ops.dim() == 0:
        num_ops = as_int(num_ops)
    if num_ops is None:
        n, kmax = levels, hi
    elif isinstance(num_ops, int) and not isinstance(num_ops, bool):
        if num_ops < 0:
            raise ValueError(f"num_ops: expected >= 0, got {num_ops}")
        n, kmax = torch.full((b,), num_ops, dtype=torch.int64, device=dev), num_ops if b else 0
    elif not isinstance(num_ops, (torch.Tensor, Sequence)) or isinstance(num_ops, (str, bytes)):
        raise ValueError(f"num_ops: expected an int or one int per sample [B], got {num_ops!r}")
    else:
        n = _levels_tensor(num_ops, "num_ops", b).to(dev)
        if b and int(n.min()) < 0:
            raise ValueError(f"num_ops: expected >= 0, got min {int(n.min())}")
        kmax = int(n.max()) if b else 0
    if max_ops is None:
        k = kmax
    else:
        k = int_arg(max_ops, f"max_ops (at least the largest num_ops, {kmax})", kmax)
    return levels, n, k


@dataclass
class _ChainTable:
    """Constant per-op tables of :func:`sample_chains` for one configuration (cached).

    ``pool``: op ids drawn from; ``base``, ``span``, ``div``: value of op i at level L is
    ``(L / div) * span[i] + base[i]``, at most ``cap[i]``; ``valueless``, ``randomly_signed``:
    per-op masks. ``values()`` is the same arithmetic done once for every (level, pool entry,
    sign draw).
    """

    pool: torch.Tensor
    base: torch.Tensor
    span: torch.Tensor
    div: float
    valueless: torch.Tensor
    randomly_signed: torch.Tensor
    max_level: int
    cap: torch.Tensor
    _values: Optional[torch.Tensor] = None

    def magnitudes(self, lvl: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """float64 values of ops ``idx`` at float64 levels ``lvl`` (same shape), 0 for value-less ops.

        Official mode: ``lo + level / d * (hi - lo)``; monotone: ``identity + level / max_level *
        (strongest - identity)``.
        """
        mag = torch.minimum((lvl / self.div) * self.span[idx] + self.base[idx], self.cap[idx])
        return torch.where(self.valueless[idx], torch.zeros_like(mag), mag)

    def values(self) -> torch.Tensor:
        """float64 [(max_level + 1), P, 2] signed op values at ``[level, choice, sign_draw]``.

        Bit for bit what :func:`sample_chains` followed by :meth:`Chains.values` computes for an
        active slot: the same float64 expressions, element by element.
        """
        if self._values is None:
            self._values = self._signed(torch.arange(self.max_level + 1, device=self.pool.device))
        return self._values

    def _signed(self, levels: torch.Tensor) -> torch.Tensor:
        """float64 [len(levels), P, 2] signed values at ``levels`` (int), as :meth:`values`."""
        dev = self.pool.device
        p = self.pool.numel()
        n = levels.numel()
        idx = self.pool.unsqueeze(0).expand(n, p)
        lvl = levels.to(torch.float64).unsqueeze(1).expand(-1, p)
        mag = self.magnitudes(lvl, idx).unsqueeze(-1).expand(-1, -1, 2)
        ops = idx.unsqueeze(-1).expand(-1, -1, 2)
        draw = torch.tensor([0, 1], device=dev).expand(n, p, 2)
        signs = torch.where(self.randomly_signed[ops], draw * 2 - 1, torch.ones_like(draw))
        return O.signed_values(ops, mag, signs).contiguous()

    def check_domains(self, magnitude_mode: str, sized: bool) -> None:
        """Raise if a configured value (any level, either sign) lies outside its op's domain;
        TranslateX/Y only when ``sized`` (monotone values scale with the image side). Each op's
        value is monotone in the level, so levels 0 and ``max_level`` bound all the others."""
        ends = torch.tensor([0, self.max_level], device=self.pool.device)
        v = self._signed(ends)
        if not v.numel():
            return
        ops = self.pool.view(1, -1, 1).expand_as(v)
        t = O.tables(v.device)
        bad = (v < t.lo[ops]) | (v > t.hi[ops]) | torch.isnan(v)
        if not sized:
            bad &= (ops != O.TRANSLATE_X) & (ops != O.TRANSLATE_Y)
        if bool(bad.any()):
            e, j, sgn = (int(x) for x in bad.nonzero()[0])
            op = int(self.pool[j])
            lo, hi = O.DOMAIN[op]
            name = "strongest" if magnitude_mode == "monotone" else "max_level/official_max_d"
            raise ValueError(f"{name}: {O.OP_NAMES[op]} reaches {float(v[e, j, sgn])!r} at level {int(ends[e])}, "
                             f"outside its domain [{lo}, {hi}]")


def _draw_slots(tab: _ChainTable, n: torch.Tensor, b: int, k: int, generator: Optional[torch.Generator],
                dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of B x K chain slots, in the documented order (op indices, then signs):
    pool index, sign draw (0/1), whether the slot is used (position < n[i]) and its op id (-1 if not)."""
    choice = torch.randint(0, tab.pool.numel(), (b, k), generator=generator, device=dev)
    sign_draw = torch.randint(0, 2, (b, k), generator=generator, device=dev)
    active = torch.arange(k, device=dev).unsqueeze(0) < n.unsqueeze(1)
    return choice, sign_draw, active, torch.where(active, tab.pool[choice], O.NONE)


# constant per-op tables of sample_chains, by (ops, mode, strongest, image size, levels, device)
_CHAIN_TABLES: dict = {}


def _chain_table(ops, magnitude_mode, strongest, image_size, max_level, official_max_d, dev) -> _ChainTable:
    """The (cached) :class:`_ChainTable` of a sampler configuration."""
    # ops as given (ids or names): a different spelling of the same set only costs another entry
    key = (None if ops is None else tuple(ops), magnitude_mode, tuple((strongest or {}).items()), image_size, max_level,
           float(official_max_d), dev)
    try:
        tab = _CHAIN_TABLES.get(key)
    except TypeError:  # unhashable arguments: no caching
        key, tab = None, None
    if tab is None:
        tab = _build_chain_table(ops, magnitude_mode, strongest, image_size, max_level, official_max_d, dev)
        if key is not None:
            if len(_CHAIN_TABLES) > 64:
                _CHAIN_TABLES.clear()
            _CHAIN_TABLES[key] = tab
    return tab


def _build_chain_table(ops, magnitude_mode, strongest, image_size, max_level, official_max_d, dev) -> _ChainTable:
    pool = torch.tensor(O.op_ids(ops), dtype=torch.int64, device=dev)
    cap = torch.full((O.NUM_OPS,), math.inf, dtype=torch.float64, device=dev)
    if magnitude_mode == "official":
        lo = torch.tensor([r[0] for r in O.OFFICIAL_RANGES], dtype=torch.float64, device=dev)
        hi = torch.tensor([r[1] for r in O.OFFICIAL_RANGES], dtype=torch.float64, device=dev)
        base, span, div = lo, hi - lo, float(official_max_d)
        randomly_signed = {O.ROTATE, O.SHEAR_X, O.SHEAR_Y, O.TRANSLATE_X, O.TRANSLATE_Y}
        # past level 2 d, Posterize's bits pass 8: the identity for Pillow as at 8, so held there
        cap[O.POSTERIZE] = O.DOMAIN[O.POSTERIZE][1]
    else:
        table = dict(O.MONOTONE_STRONGEST)
        if strongest:
            for name, v in strongest.items():
                try:
                    key = O.OP_NAMES[O.op_id(name)]
                except (ValueError, TypeError) as e:
                    raise ValueError(f"strongest: {e}") from None
                if key not in table:
                    raise ValueError(f"strongest: op {key!r} has no magnitude")
                if not math.isfinite(float(v)):
                    raise ValueError(f"strongest: expected a finite value for {key}, got {v!r}")
                table[key] = float(v)
        h, w = (image_size if image_size is not None else (1, 1))
        strong = [0.0] * O.NUM_OPS
        for name, v in table.items():
            strong[O.OP_IDS[name]] = v
        strong[O.TRANSLATE_X] *= float(w)
        strong[O.TRANSLATE_Y] *= float(h)
        base = torch.tensor([v if v is not None else 0.0 for v in O.IDENTITY], dtype=torch.float64, device=dev)
        span, div = torch.tensor(strong, dtype=torch.float64, device=dev) - base, float(max_level)
        randomly_signed = set(O.SIGNED_OPS)
    valueless = torch.tensor([not O.takes_value(i) for i in range(O.NUM_OPS)], device=dev)
    signed = torch.tensor([i in randomly_signed for i in range(O.NUM_OPS)], device=dev)
    tab = _ChainTable(pool, base, span, div, valueless, signed, max_level, cap)
    tab.check_domains(magnitude_mode, sized=image_size is not None)
    return tab


class ChainSampler:
    """A configured :func:`sample_chains` (all arguments but the per-call ones).

    Example:
        >>> sampler = ChainSampler(max_level=10, magnitude_mode="official")
        >>> g = torch.Generator().manual_seed(0)
        >>> chains = sampler(torch.tensor([2, 5]), image_size=(32, 32), generator=g)
        >>> chains.num_ops().tolist()
        [2, 5]
    """

    def __init__(
        self,
        *,
        max_level: int = 10,
        magnitude_mode: str = "monotone",
        ops: Optional[Sequence[O.OpLike]] = None,
        strongest: Optional[Mapping[str, float]] = None,
        official_max_d: float = 30.0,
    ) -> None:
        max_level, official_max_d = _check_sampler(max_level, magnitude_mode, official_max_d, strongest)
        self.max_level = max_level
        self.magnitude_mode = magnitude_mode
        self.ops = O.op_ids(ops)
        self.strongest = dict(strongest) if strongest else None
        self.official_max_d = official_max_d
        # the configuration's values, checked now (TranslateX/Y once the image size is known)
        _chain_table(self.ops, magnitude_mode, self.strongest, None, max_level, official_max_d, torch.device("cpu"))
        _warn_past_official_ranges(max_level, magnitude_mode, official_max_d)

    def __call__(
        self,
        strengths: TensorLike,
        *,
        image_size: Optional[tuple[int, int]] = None,
        num_ops: Optional[Union[int, TensorLike]] = None,
        max_ops: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Chains:
        """Chains for per-sample ``strengths`` (int [B] levels) with this configuration.

        Args and draws as :func:`sample_chains`. Returns :class:`Chains` [B, K] (K: ``max_ops``,
        else the largest chain length).

        Example:
            >>> chains = ChainSampler()(torch.tensor([0, 3, 10]), image_size=(32, 32))
            >>> chains.ops.shape
            torch.Size([3, 10])
        """
        return _sample_chains(strengths, image_size, num_ops, self.max_level, self.magnitude_mode, self.ops,
                              self.strongest, self.official_max_d, max_ops, generator)

    def __repr__(self) -> str:
        return (f"ChainSampler(max_level={self.max_level}, magnitude_mode={self.magnitude_mode!r}, "
                f"ops={[O.OP_NAMES[i] for i in self.ops]})")


# ----------------------------------------------------------------------------- pipeline draws


@dataclass(frozen=True)
class PipelineDraws:
    """Per-sample draws of the base pipeline.

    Attributes:
        crop: int32 [B, 2] (dy, dx) in ``[-padding, padding]``: output pixel (y, x) is input pixel
            (y + dy, x + dx), zero outside (``RandomCrop(size, padding)``).
        flip: bool [B]: mirror left-right after the crop (``RandomHorizontalFlip``).
        cutout: int32 [B, 4] (y1, y2, x1, x2): the Cutout box (empty when y1 >= y2 or x1 >= x2).
    """

    crop: torch.Tensor
    flip: torch.Tensor
    cutout: torch.Tensor


def draw_pipeline(
    batch_size: int,
    height: int,
    width: int,
    *,
    crop_padding: int = 0,
    flip_prob: float = 0.0,
    cutout: int = 0,
    generator: Optional[torch.Generator] = None,
) -> PipelineDraws:
    """Draw random crop offsets, flips and Cutout boxes, as the paper's pipeline does.

    Cutout follows the paper's code: a centre (cy, cx) uniform over the image, the box
    ``[cy - L//2, cy + L//2) x [cx - L//2, cx + L//2)`` clipped to the image.

    Args:
        batch_size, height, width: the batch geometry.
        crop_padding: zero padding of the random crop (0: no crop).
        flip_prob: probability of a horizontal flip.
        cutout: Cutout side L (0: none).
        generator: source of randomness.
    Returns:
        :class:`PipelineDraws` on the generator's device. Draw order: crop [B, 2], flips [B],
        cutout centres y [B] then x [B]; a disabled stage draws nothing.

    Example:
        >>> d = draw_pipeline(128, 32, 32, crop_padding=4, flip_prob=0.5, cutout=16,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> d.crop.shape, d.flip.shape, d.cutout.shape
        (torch.Size([128, 2]), torch.Size([128]), torch.Size([128, 4]))
    """
    b, h, w, crop_padding, flip_prob, cutout = _pipeline_args(batch_size, height, width, crop_padding, flip_prob, cutout)
    return _pipeline_draws(b, h, w, crop_padding, flip_prob, cutout, generator)


def _pipeline_args(batch_size, height, width, crop_padding, flip_prob, cutout) -> tuple[int, int, int, int, float, int]:
    """The checked arguments of :func:`draw_pipeline` (integer-likes as ints)."""
    return (int_arg(batch_size, "batch_size", 0), int_arg(height, "height"), int_arg(width, "width"),
            int_arg(crop_padding, "crop_padding", 0), probability(flip_prob, "flip_prob"),
            int_arg(cutout, "cutout (hole side)", 0))


# (edge offsets, upper bounds) of Cutout boxes, by (half side, H, W, device)
_BOX_BOUNDS: dict = {}


def _pipeline_draws(b: int, height: int, width: int, crop_padding: int, flip_prob: float, cutout: int,
                    generator: Optional[torch.Generator]) -> PipelineDraws:
    """The draws of :func:`draw_pipeline` (arguments already checked)."""
    dev = _as_generator_device(generator)
    if crop_padding > 0:
        crop = torch.randint(-crop_padding, crop_padding + 1, (b, 2), generator=generator, device=dev)
    else:
        crop = torch.zeros(b, 2, dtype=torch.int64, device=dev)
    if flip_prob > 0:
        flip = torch.rand(b, generator=generator, device=dev) < float(flip_prob)
    else:
        flip = torch.zeros(b, dtype=torch.bool, device=dev)
    if cutout > 0:
        cy = torch.randint(0, height, (b,), generator=generator, device=dev)
        cx = torch.randint(0, width, (b,), generator=generator, device=dev)
        half = cutout // 2
        # (cy - half, cy + half, cx - half, cx + half) clipped to [0, H] and [0, W]
        key = (half, height, width, dev)
        bounds = _BOX_BOUNDS.get(key)
        if bounds is None:
            if len(_BOX_BOUNDS) > 64:
                _BOX_BOUNDS.clear()
            bounds = _BOX_BOUNDS[key] = (torch.tensor([-half, half, -half, half], device=dev),
                                         torch.tensor([height, height, width, width], device=dev))
        box = (torch.stack([cy, cy, cx, cx], 1) + bounds[0]).clamp_(min=0)
        box = torch.minimum(box, bounds[1])
    else:
        box = torch.zeros(b, 4, dtype=torch.int64, device=dev)
    return PipelineDraws(crop.to(torch.int32), flip, box.to(torch.int32))


# ----------------------------------------------------------------------------- application


def _real_vector(x, name: str) -> torch.Tensor:
    """A Normalize setting as a flat float64 tensor on the CPU (named errors)."""
    t = as_tensor(x, name, torch.float64)
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected real numbers, got dtype {t.dtype}")
    return t.to("cpu", torch.float64).flatten()


def _channel_vector(x, c: int, name: str, device: torch.device) -> torch.Tensor:
    t = _real_vector(x, name)
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise ValueError(f"{name}: expected {c} {'value' if c == 1 else 'values'} (one per channel), got {t.numel()}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite float32 values")
    return t.to(device).contiguous()


def _per_channel(x, name: str) -> Optional[tuple[float, ...]]:
    """A Normalize setting as a tuple of 1 (all channels) or 3 (per channel) floats."""
    if x is None:
        return None
    t = _real_vector(x, name)
    if t.numel() not in (1, 3):
        raise ValueError(f"{name}: expected 1 value or 3 (one per channel), got {t.numel()}")
    return tuple(float(v) for v in t)


def _int_param(x: Optional[TensorLike], shape: tuple[int, ...], name: str, device: torch.device,
               lo: int, hi: int) -> torch.Tensor:
    """int32 ``x`` clamped to ``[lo, hi]`` (before narrowing, so no value wraps around); callers
    pass bounds beyond which every value means the same (a crop past the image side: all padding;
    a box edge past it: the side)."""
    if x is None:
        return torch.zeros(shape, dtype=torch.int32, device=device)
    t = as_tensor(x, name, torch.int64 if _empty(x) else None)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    return t.to(device=device, dtype=torch.int64).clamp(lo, hi).to(torch.int32).contiguous()


def _op_names_to_ids(ops):
    """Nested lists with op names (or None) -> the same lists of ids; anything else unchanged."""
    if isinstance(ops, (list, tuple)) and any(
            isinstance(v, (str, type(None))) for row in ops if isinstance(row, (list, tuple)) for v in row):
        for i, row in enumerate(ops):
            if not isinstance(row, (list, tuple)):
                raise ValueError(f"ops: expected a [B, K] nested list, got row {i} = {row!r}")
        return [[_slot_id(v, i, j, "ops: ") for j, v in enumerate(row)] for i, row in enumerate(ops)]
    return ops


def _empty(x) -> bool:
    """Whether a (nested) Python sequence holds no number at all: ``torch.as_tensor`` would make it float32."""
    if isinstance(x, (list, tuple)):
        return all(_empty(v) for v in x)
    return False


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images: expected dtype torch.uint8 (0..255 pixels), got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"images: expected shape [B, C, H, W] (rank 4), got rank {images.dim()} {list(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected 1 (L) or 3 (RGB) channels, got C={images.shape[1]}")
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"images: expected H, W >= 1, got {list(images.shape)}")
    if images.is_meta:
        raise ValueError("images: a meta tensor holds no pixels; expected a CPU or CUDA tensor")


def _canonical_chain(
    images: torch.Tensor, ops: TensorLike, magnitudes: TensorLike, signs: Optional[TensorLike], validate: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    b = images.shape[0]
    dev = images.device
    o = as_tensor(_op_names_to_ids(ops), "ops", torch.int64 if _empty(ops) else None)
    if b == 0 and o.dim() == 1 and o.numel() == 0:  # [] for an empty batch
        o = o.reshape(0, 0)
    if o.dtype.is_floating_point or o.dtype == torch.bool or o.dtype.is_complex:
        raise TypeError(f"ops: expected an integer tensor of op ids, got dtype {o.dtype}")
    if o.dim() != 2 or o.shape[0] != b:
        raise ValueError(f"ops: expected shape [B={b}, K], got {list(o.shape)}")
    k = o.shape[1]
    m = as_tensor(magnitudes, "magnitudes", torch.float64)
    if m.numel() == 0 and tuple(m.shape) != (b, k):
        m = m.reshape(b, k)
    if m.dtype == torch.bool or m.dtype.is_complex:
        raise TypeError(f"magnitudes: expected a real tensor, got dtype {m.dtype}")
    if tuple(m.shape) != (b, k):
        raise ValueError(f"magnitudes: expected shape [B={b}, K={k}] like ops, got {list(m.shape)}")
    o = o.to(device=dev, dtype=torch.int64)  # ids are checked (or sanitized) before narrowing
    m = m.to(device=dev, dtype=torch.float64)
    s = None
    if signs is not None:
        s = as_tensor(signs, "signs")
        if s.numel() == 0 and tuple(s.shape) != (b, k):
            s = s.reshape(b, k)
        if s.dtype.is_complex:
            raise TypeError(f"signs: expected a real tensor of +1/-1, got dtype {s.dtype}")
        if tuple(s.shape) != (b, k):
            raise ValueError(f"signs: expected shape [B={b}, K={k}] like ops, got {list(s.shape)}")
        s = s.to(device=dev, dtype=torch.float64)  # unsigned 255 stays 255 (not -1)
    bad_id = (o < O.NONE) | (o >= O.NUM_OPS)
    if validate and o.numel():
        if bool(bad_id.any()):
            i, j = (int(v) for v in bad_id.nonzero()[0])
            raise ValueError(f"ops: unknown op id {int(o[i, j])} at [{i}, {j}], expected -1..{O.NUM_OPS - 1}")
        if not bool(torch.isfinite(m).all()):
            raise ValueError("magnitudes: expected finite values (got NaN or inf)")
        if s is not None and not bool(((s == 1) | (s == -1)).all()):
            raise ValueError("signs: expected +1 or -1 entries")
    elif o.numel():
        o = torch.where(bad_id, O.NONE, o)  # unchecked: unknown ids act as none
    o = o.to(torch.int32)
    v = O.signed_values(o, m, s)
    t = O.tables(dev)
    idx = o.long().clamp(min=0)
    lo, hi = t.lo[idx], t.hi[idx]
    if validate and o.numel():
        out = (o >= 0) & ((v < lo) | (v > hi))
        if bool(out.any()):
            i, j = (int(x) for x in out.nonzero()[0])
            op = int(o[i, j])
            raise ValueError(
                f"magnitudes: value {float(v[i, j])!r} of {O.OP_NAMES[op]} at [{i}, {j}] is outside its domain "
                f"[{O.DOMAIN[op][0]}, {O.DOMAIN[op][1]}]"
            )
    elif o.numel():
        # unchecked (no host sync): unknown ids are no-ops and values are pulled into their op's
        # domain, so the kernels never see a value they cannot index with
        v = torch.where(torch.isnan(v), 0.0, v).clamp(lo, hi)
        v = torch.where(torch.isfinite(v), v, 0.0)  # value-less ops (unbounded) read no value
    return o.contiguous(), v.contiguous()


def apply_chains(
    images: torch.Tensor,
    ops: TensorLike,
    magnitudes: TensorLike,
    signs: Optional[TensorLike] = None,
    *,
    crop: Optional[TensorLike] = None,
    flip: Optional[TensorLike] = None,
    cutout: Optional[TensorLike] = None,
    mean: Optional[Union[Sequence[float], torch.Tensor]] = None,
    std: Optional[Union[Sequence[float], torch.Tensor]] = None,
    out_dtype: Optional[torch.dtype] = None,
    validate: bool = True,
) -> torch.Tensor:
    """Apply each sample's own chain of ops, with explicit crop/flip/cutout draws.

    Per sample, in order (the paper's pipeline): crop with zero padding, horizontal flip, the
    ops of its chain left to right, then (float output) ``x / 255``, Cutout, Normalize. Every op
    reproduces Pillow's pixels (see :mod:`fastorals.augment.opset`).

    Args:
        images: uint8 [B, C, H, W], C = 1 or 3; CPU (C++ kernel) or CUDA (Triton kernel).
        ops: int [B, K] op ids, -1 = none.
        magnitudes: float [B, K] op values (PIL units, see :mod:`.opset`).
        signs: [B, K] of +1/-1 or None; -1 maps a signed op's value v to ``2 * identity - v``.
        crop: int [B, 2] (dy, dx) offsets (see :class:`PipelineDraws`), None = no crop.
        flip: bool [B] horizontal flips, None = none.
        cutout: int [B, 4] (y1, y2, x1, x2) boxes, None = none.
        mean, std: per-channel Normalize (after ``x / 255``); a scalar applies to all channels.
        out_dtype: torch.uint8 or torch.float32 (default: float32 when mean/std are given).
        validate: check op ids, finiteness and each value's domain (one host sync on CUDA), raising
            ``ValueError``; with False nothing is checked on the host: unknown op ids act as none
            and values are clamped into their op's domain (NaN as 0), so the kernels stay in bounds.
            Crop offsets and Cutout edges are clamped either way to the image side, beyond which
            they all mean the same.
    Returns:
        uint8 or float32 [B, C, H, W] on the images' device.

    Example:
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> ops = torch.tensor([[10, 7], [5, -1]])          # Rotate+Invert, AutoContrast
        >>> y = apply_chains(x, ops, torch.tensor([[15.0, 0.0], [0.0, 0.0]]))
    """
    _check_images(images)
    b, c, h, w = images.shape
    dev = images.device
    o, v = _canonical_chain(images, ops, magnitudes, signs, validate)
    side = max(h, w)
    crop_t = _int_param(crop, (b, 2), "crop", dev, -side, side)
    cut_t = _int_param(cutout, (b, 4), "cutout", dev, 0, side)
    if flip is None:
        flip_t = torch.zeros(b, dtype=torch.uint8, device=dev)
    else:
        f = as_tensor(flip, "flip")
        if f.dtype.is_floating_point or f.dtype.is_complex:
            raise TypeError(f"flip: expected a bool tensor, got dtype {f.dtype}")
        if tuple(f.shape) != (b,):
            raise ValueError(f"flip: expected shape [B={b}], got {list(f.shape)}")
        flip_t = (f != 0).to(device=dev, dtype=torch.uint8)
    mean_t, std_t, float_out = _output_spec(mean, std, out_dtype, c, dev)
    return _launch(images.contiguous(), o, v, crop_t, flip_t, cut_t, mean_t, std_t, float_out, direct=True)


def _output_spec(mean, std, out_dtype: Optional[torch.dtype], c: int,
                 dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Checked Normalize vectors (float32 [C]) and whether the output is float32."""
    normalize = mean is not None or std is not None
    if normalize and (mean is None or std is None):
        raise ValueError("mean, std: give both or neither")
    if out_dtype is None:
        out_dtype = torch.float32 if normalize else torch.uint8
    if out_dtype not in (torch.uint8, torch.float32):
        raise TypeError(f"out_dtype: expected torch.uint8 or torch.float32, got {out_dtype}")
    if normalize and out_dtype == torch.uint8:
        raise ValueError("out_dtype: Normalize (mean/std) needs out_dtype=torch.float32")
    mean_t = _channel_vector(mean if normalize else 0.0, c, "mean", dev)
    std_t = _channel_vector(std if normalize else 1.0, c, "std", dev)
    if normalize and not bool(torch.isfinite(1.0 / std_t).all()):  # 0, or so small that 1/std overflows
        raise ValueError(f"std: expected non-zero values whose float32 inverse is finite, got {std_t.tolist()}")
    mean_t, std_t = torch.stack([mean_t, std_t])  # rows of one tensor: a graph replay loads both with one copy
    return mean_t, std_t, out_dtype == torch.float32


def _launch(images, o, v, crop_t, flip_t, cut_t, mean_t, std_t, float_out: bool, direct: bool = False) -> torch.Tensor:
    """Run the backend's kernel on canonical arguments (see :mod:`.ops`).

    ``direct``: skip the registered op's dispatch (tens of microseconds per call) unless a
    ``torch.compile`` or ``torch.jit`` trace or a dispatch mode needs the op: on the C++ backend call the launcher,
    on the Triton backend replay the op's CUDA graph when one is already captured for the call.
    """
    backend = select_backend("augment", images.device, _BACKENDS)
    direct = (direct and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
              and not torch._C._len_torch_dispatch_stack())
    if backend == "cpp":
        if direct:
            return augment_apply_cpp(images, o, v, crop_t, flip_t, cut_t, mean_t, std_t, float_out)
        return augment_apply(images, o, v, crop_t, flip_t, cut_t, mean_t, std_t, float_out)
    if backend == "triton":
        from .triton import augment_apply_triton, replay_cached

        if direct:
            out = replay_cached(images, o, v, crop_t, flip_t, cut_t, mean_t, std_t, float_out)
            if out is not None:
                return out
        return augment_apply_triton(images, o, v, crop_t, flip_t, cut_t, mean_t, std_t, float_out)
    return augment_apply_reference(images, o, v, crop_t, flip_t, cut_t, mean_t, std_t, float_out)


def batch_augment(
    images: torch.Tensor,
    ops: TensorLike,
    magnitudes: TensorLike,
    signs: Optional[TensorLike] = None,
    generator: Optional[torch.Generator] = None,
    *,
    crop_padding: int = 0,
    flip_prob: float = 0.0,
    cutout: int = 0,
    mean: Optional[Union[Sequence[float], torch.Tensor]] = None,
    std: Optional[Union[Sequence[float], torch.Tensor]] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Per-sample chains plus the random base pipeline, drawn from ``generator``.

    Args:
        images: uint8 [B, C, H, W].
        ops, magnitudes, signs: the chains, as in :func:`apply_chains` (e.g. a :class:`Chains`'s).
        generator: draws the crop offsets, flips and Cutout boxes (:func:`draw_pipeline`).
        crop_padding, flip_prob, cutout: the base pipeline (``RandomCrop(H, padding)``,
            ``RandomHorizontalFlip(p)``, ``Cutout(1 hole, side)``); 0 disables a stage.
        mean, std, out_dtype: as in :func:`apply_chains`.
    Returns:
        uint8 or float32 [B, C, H, W].

    Example:
        >>> images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
        >>> g = torch.Generator().manual_seed(0)
        >>> chains = sample_chains(torch.full((128,), 3), image_size=(32, 32), generator=g)
        >>> x = batch_augment(images, chains.ops, chains.magnitudes, chains.signs, g,
        ...                   crop_padding=4, flip_prob=0.5, cutout=16,
        ...                   mean=CIFAR10_MEAN, std=CIFAR10_STD)
        >>> x.dtype, x.shape
        (torch.float32, torch.Size([128, 3, 32, 32]))
    """
    _check_images(images)
    _refuse_host_draws_in_capture(_as_generator_device(generator), "batch_augment")
    b, _, h, w = images.shape
    d = draw_pipeline(b, h, w, crop_padding=crop_padding, flip_prob=flip_prob, cutout=cutout, generator=generator)
    return apply_chains(images, ops, magnitudes, signs, crop=d.crop, flip=d.flip, cutout=d.cutout,
                        mean=mean, std=std, out_dtype=out_dtype)


class BatchAugment(nn.Module):
    """Per-sample strengths in, augmented (and normalized) batch out: sampler + pipeline + kernel.

    Args:
        max_level, magnitude_mode, ops, strongest, official_max_d: the :class:`ChainSampler`.
        crop_padding, flip_prob, cutout: the base pipeline (0 disables a stage).
        mean, std: Normalize (None: none).
        out_dtype: torch.uint8 or torch.float32 (default: float32 when mean/std are given).

    Example:
        >>> images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
        >>> aug = BatchAugment.cifar(cutout=16)            # crop 4, flip 0.5, CIFAR mean/std
        >>> g = torch.Generator().manual_seed(0)
        >>> x = aug(images, strengths=torch.randint(0, 11, (128,)), generator=g)
        >>> x.dtype, x.shape
        (torch.float32, torch.Size([128, 3, 32, 32]))
    """

    def __init__(
        self,
        *,
        max_level: int = 10,
        magnitude_mode: str = "monotone",
        ops: Optional[Sequence[O.OpLike]] = None,
        strongest: Optional[Mapping[str, float]] = None,
        official_max_d: float = 30.0,
        crop_padding: int = 0,
        flip_prob: float = 0.0,
        cutout: int = 0,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        out_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.sampler = ChainSampler(max_level=max_level, magnitude_mode=magnitude_mode, ops=ops,
                                    strongest=strongest, official_max_d=official_max_d)
        _, _, _, self.crop_padding, self.flip_prob, self.cutout = _pipeline_args(0, 1, 1, crop_padding, flip_prob, cutout)
        self._spec_cache: dict = {}
        self.set_output(mean, std, out_dtype)

    def set_output(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   out_dtype: Optional[torch.dtype] = None) -> None:
        """Change Normalize and the output dtype (checked now, as in the constructor)."""
        if (mean is None) != (std is None):
            raise ValueError("mean, std: give both or neither")
        m, sd = _per_channel(mean, "mean"), _per_channel(std, "std")
        n = max(len(m), len(sd)) if m is not None and sd is not None else 1
        _output_spec(m, sd, out_dtype, n, torch.device("cpu"))  # checks values and out_dtype now
        self._mean, self._std, self._out_dtype = m, sd, out_dtype
        self._spec_cache.clear()

    def __setstate__(self, state: dict) -> None:
        # objects pickled before Normalize became read-only properties kept plain attributes
        for k in ("mean", "std", "out_dtype"):
            if k in state:
                state["_" + k] = state.pop(k)
        super().__setstate__(state)

    @property
    def mean(self) -> Optional[tuple[float, ...]]:
        """Normalize's mean (1 value for all channels, or 3), or None; set with :meth:`set_output`."""
        return self._mean

    @property
    def std(self) -> Optional[tuple[float, ...]]:
        """Normalize's std (1 value for all channels, or 3), or None; set with :meth:`set_output`."""
        return self._std

    @property
    def out_dtype(self) -> Optional[torch.dtype]:
        """The output dtype (None: float32 with Normalize, else uint8); set with :meth:`set_output`."""
        return self._out_dtype

    @classmethod
    def cifar(cls, **kwargs) -> BatchAugment:
        """The paper's CIFAR pipeline: crop 32 with padding 4, flip 0.5, CIFAR mean/std (float32)."""
        kw = dict(crop_padding=4, flip_prob=0.5, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        kw.update(kwargs)
        return cls(**kw)

    @property
    def max_level(self) -> int:
        return self.sampler.max_level

    @property
    def magnitude_mode(self) -> str:
        return self.sampler.magnitude_mode

    def sample(self, strengths: TensorLike, image_size: tuple[int, int],
               generator: Optional[torch.Generator] = None, num_ops: Optional[Union[int, TensorLike]] = None) -> Chains:
        """Chains for per-sample strengths (see :func:`sample_chains`)."""
        return self.sampler(strengths, image_size=image_size, num_ops=num_ops, generator=generator)

    def forward(self, images: torch.Tensor, strengths: TensorLike, generator: Optional[torch.Generator] = None,
                num_ops: Optional[Union[int, TensorLike]] = None) -> torch.Tensor:
        """Augment ``images`` (uint8 [B, C, H, W]) at per-sample ``strengths`` (int [B]).

        Draw order from ``generator``: the chains (:func:`sample_chains`), then the pipeline
        (:func:`draw_pipeline`). The result is bit for bit that of :meth:`sample` followed by
        :func:`batch_augment`; the chain values come from a per-configuration table of every
        (level, op, sign) value, checked against the ops' domains once, so a call costs a few
        small tensor ops besides the kernel.
        """
        _check_images(images)
        b, c, h, w = images.shape
        sp = self.sampler
        dev = _as_generator_device(generator)
        _refuse_host_draws_in_capture(dev, "BatchAugment")
        levels, n, k = _chain_lengths(strengths, num_ops, sp.max_level, None, dev, batch=b)
        tab = _chain_table(sp.ops, sp.magnitude_mode, sp.strongest, (h, w), sp.max_level, sp.official_max_d, dev)
        table = tab.values().view(-1)  # every value checked against its op's domain when the table was built
        if k:
            choice, sign_draw, active, op = _draw_slots(tab, n, b, k, generator, dev)
            o = op.to(torch.int32)
            v = torch.where(active, table[(levels.unsqueeze(1) * tab.pool.numel() + choice) * 2 + sign_draw], 0.0)
        else:  # no op slot in the batch: nothing to draw (empty draws take nothing from the generator)
            o = torch.empty(b, 0, dtype=torch.int32, device=dev)
            v = torch.empty(b, 0, dtype=torch.float64, device=dev)
        d = _pipeline_draws(b, h, w, self.crop_padding, self.flip_prob, self.cutout, generator)
        crop = d.crop if self.crop_padding <= max(h, w) else d.crop.clamp(-max(h, w), max(h, w))  # as apply_chains
        img_dev = images.device
        key = (c, img_dev, self.mean, self.std, self.out_dtype)
        spec = self._spec_cache.get(key)
        if spec is None:
            spec = self._spec_cache[key] = _output_spec(self.mean, self.std, self.out_dtype, c, img_dev)
        mean_t, std_t, float_out = spec
        parts = [(o, torch.int32), (crop, torch.int32), (d.flip, torch.uint8), (d.cutout, torch.int32),
                 (v, torch.float64)]
        if dev.type == "cpu" and img_dev.type != "cpu" and not torch.compiler.is_compiling():
            # drawn on the host, applied on a device: one copy (asynchronous to a GPU), whose views
            # a graph replay also loads with one copy (a compiled graph makes its own copies)
            o, crop, flip, cut, v = to_device_packed(parts, img_dev)
        else:
            o, crop, flip, cut, v = (t.to(device=img_dev, dtype=dt).contiguous() for t, dt in parts)
        return _launch(images.contiguous(), o, v, crop, flip, cut, mean_t, std_t, float_out, direct=True)

    def extra_repr(self) -> str:
        return (f"max_level={self.max_level}, magnitude_mode={self.magnitude_mode!r}, "
                f"crop_padding={self.crop_padding}, flip_prob={self.flip_prob}, cutout={self.cutout}, "
                f"normalize={self.mean is not None}")
