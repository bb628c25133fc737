"""Procedural sprite sequences: an offline stand-in for the Sprites benchmark.

Every sequence shows one character performing one motion for ``num_frames`` frames. The
ground truth is kept for the judge:

* four static factors with 6 values each: ``skin``, ``hair`` (colour and one of three
  styles), ``top`` (shirt and sleeves), ``bottom`` (trousers);
* one dynamic factor, the ``motion`` (9 classes) = ``action`` (walk, spellcast, slash) x
  ``direction`` (left, front, right). Every sequence starts from the same rest pose facing the
  viewer; from frame 1 the character faces its direction and performs its action. Frame 0 thus
  shows only the appearance, and everything about the motion unfolds over time.

That is 6**4 = 1296 characters x 9 motions = 11664 distinct sequences, the sizes of the
original Sprites set (1000 training characters and 296 test characters, 9 motions each).

Rendering is vectorized and cheap: the geometry depends only on (hair style, motion, frame),
so the per-pixel coverage of each body part is rasterized once per frame size (signed
distances, supersampled for anti-aliasing) and cached; a batch of sequences is then one
gather plus one ``einsum`` against each sequence's palette.

Example:
    >>> from fastorals.koopman import sprites
    >>> labels = sprites.all_labels()                    # (11664, 6) int64
    >>> x = sprites.render(labels[:32], size=64)          # (32, 8, 3, 64, 64) float32 in [0, 1]
    >>> train, test = sprites.sprite_splits(seed=0)       # 9000 / 2664 sequences, by character
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

__all__ = [
    "ACTIONS",
    "COLUMNS",
    "DIRECTIONS",
    "NUM_MOTIONS",
    "NUM_VALUES",
    "PALETTES",
    "STATIC_FACTORS",
    "SpriteSet",
    "all_labels",
    "motion_of",
    "render",
    "sprite_splits",
]

STATIC_FACTORS = ("skin", "hair", "top", "bottom")
ACTIONS = ("walk", "spellcast", "slash")
DIRECTIONS = ("left", "front", "right")
NUM_VALUES = 6
NUM_MOTIONS = len(ACTIONS) * len(DIRECTIONS)
#: Columns of a label tensor: the four static factors, then action and direction.
COLUMNS = (*STATIC_FACTORS, "action", "direction")

# RGB palettes in [0, 1], one row per factor value (chosen to be distinct within a factor).
PALETTES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "skin": ((1.00, 0.85, 0.72), (0.55, 0.35, 0.20), (0.45, 0.80, 0.35),
             (0.45, 0.60, 0.95), (0.78, 0.55, 0.92), (0.62, 0.62, 0.62)),
    "hair": ((0.10, 0.08, 0.08), (0.50, 0.28, 0.08), (0.98, 0.85, 0.25),
             (0.90, 0.20, 0.10), (0.92, 0.92, 0.95), (0.20, 0.35, 0.95)),
    "top": ((0.88, 0.10, 0.12), (0.12, 0.65, 0.18), (0.12, 0.25, 0.85),
            (0.98, 0.85, 0.10), (0.60, 0.18, 0.72), (0.10, 0.80, 0.85)),
    "bottom": ((0.10, 0.10, 0.12), (0.80, 0.80, 0.80), (0.55, 0.35, 0.15),
               (0.10, 0.15, 0.50), (0.70, 0.10, 0.10), (0.82, 0.72, 0.45)),
}
_BACKGROUND = (1.0, 1.0, 1.0)
_FIXED = {"eyes": (0.08, 0.08, 0.12), "shoes": (0.30, 0.18, 0.10), "sword": (0.62, 0.64, 0.70)}

# Part indices of the coverage maps.
_BG, _SKIN, _HAIR, _TOP, _BOTTOM, _EYES, _SHOES, _SWORD = range(8)
_NUM_PARTS = 8
_NUM_STYLES = 3


def motion_of(labels: torch.Tensor) -> torch.Tensor:
    """The 9-way motion class ``3 * action + direction`` of a (N, 6) label tensor."""
    _check_labels(labels)
    return labels[:, 4] * len(DIRECTIONS) + labels[:, 5]


def all_labels() -> torch.Tensor:
    """Every (skin, hair, top, bottom, action, direction) combination: (11664, 6) int64.

    Rows are ordered by character (the four static factors, lexicographically), then motion.
    """
    grids = torch.meshgrid(*[torch.arange(NUM_VALUES)] * 4, torch.arange(3), torch.arange(3), indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 2 or labels.shape[1] != len(COLUMNS):
        raise ValueError(f"labels: expected shape (N, {len(COLUMNS)}) with columns {COLUMNS}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor, got {labels.dtype}")
    if labels.numel():
        hi = torch.tensor([NUM_VALUES] * 4 + [len(ACTIONS), len(DIRECTIONS)], device=labels.device)
        if bool(((labels < 0) | (labels >= hi)).any()):
            raise ValueError(f"labels: values out of range; expected 0 <= labels[:, j] < {hi.tolist()}")


# ------------------------------------------------------------------------------ geometry
#
# Every motion starts from the same rest pose, facing the viewer (frame 0 is identical for all
# 9 motions of a character: everything visible at t = 0 is appearance). From frame 1 on the
# character faces its direction (left, front, right) and performs its action, periodically over
# the remaining frames. Coordinates are normalized to [0, 1] (x right, y down). Arm angles are
# measured from straight down (0) towards the facing direction (pi/2 forward, pi straight up).

_REST = 0.12  # arm angle at rest


def _pose(action: int, direction: int, t: int, num_frames: int) -> dict[str, object]:
    """Joint positions of one frame."""
    side = 0 if t == 0 else {0: -1, 1: 0, 2: 1}[direction]  # facing: -1 left, 0 viewer, +1 right
    u = 0.0 if t == 0 else (t - 1) / max(num_frames - 1, 1)  # action progress in [0, 1)
    phase = 2 * math.pi * u
    s, c = math.sin(phase), math.cos(phase)
    fwd = side if side != 0 else 1
    bob = -0.012 * abs(math.sin(2 * phase)) if action == 0 and t > 0 else 0.0
    hip_y, sh_y = 0.62 + bob, 0.40 + bob
    if side == 0:
        hips_x, shoulders_x = [0.44, 0.56], [0.35, 0.65]
    else:  # index 0 is the far limb
        hips_x, shoulders_x = [0.5 - 0.02 * side, 0.5 + 0.02 * side], [0.5 - 0.02 * side, 0.5 + 0.03 * side]
    reach = 0.20

    def hand(i: int, theta: float) -> tuple[float, float]:
        dx = fwd if side != 0 else (1 if i == 1 else -1)
        return (shoulders_x[i] + dx * reach * math.sin(theta), sh_y + reach * math.cos(theta))

    feet = [(hips_x[0], 0.86), (hips_x[1], 0.86)]
    hands = [hand(0, _REST), hand(1, _REST)]
    sword = None
    if t > 0:
        if action == 0:  # walk: legs and arms swing in opposition
            if side == 0:
                feet = [(hips_x[0], 0.86 - 0.05 * max(s, 0.0)), (hips_x[1], 0.86 - 0.05 * max(-s, 0.0))]
                hands = [hand(0, _REST + 0.5 * max(-s, 0.0)), hand(1, _REST + 0.5 * max(s, 0.0))]
            else:
                feet = [(hips_x[0] + 0.09 * s * side, 0.86 - 0.015 * abs(c)),
                        (hips_x[1] - 0.09 * s * side, 0.86 - 0.015 * abs(c))]
                hands = [hand(0, -0.45 * s), hand(1, 0.45 * s)]
        elif action == 1:  # spellcast: the arms rise above the head and come back down
            lift = 0.5 * (1 - c) if u > 0 else 0.0
            lift = max(lift, 0.35)
            if side == 0:
                hands = [hand(0, 0.25 + 2.45 * lift), hand(1, 0.25 + 2.45 * lift)]
            else:
                hands = [hand(0, 0.2 + 2.0 * lift), hand(1, 0.2 + 2.6 * lift)]
        else:  # slash: draw the sword up behind the head, then swing it down to the front
            top = 1.15 * math.pi
            theta = _REST + (top - _REST) * min(u / 0.5, 1.0) if u <= 0.5 else top - 0.9 * math.pi * (u - 0.5) / 0.5
            hands[1] = hand(1, theta)
            dx = fwd * math.sin(theta)
            sword = (hands[1], (hands[1][0] + 0.21 * dx, hands[1][1] + 0.21 * math.cos(theta)))
    return {"side": side, "bob": bob, "hips": [(x, hip_y) for x in hips_x], "feet": feet,
            "shoulders": [(x, sh_y) for x in shoulders_x], "hands": hands, "sword": sword}


def _seg(px: torch.Tensor, py: torch.Tensor, a: tuple[float, float], b: tuple[float, float], r: float) -> torch.Tensor:
    """Pixels within distance ``r`` of the segment a-b (a capsule)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    den = max(dx * dx + dy * dy, 1e-12)
    h = (((px - ax) * dx + (py - ay) * dy) / den).clamp(0, 1)
    return torch.hypot(px - ax - h * dx, py - ay - h * dy) <= r


def _ellipse(px: torch.Tensor, py: torch.Tensor, cx: float, cy: float, rx: float, ry: float) -> torch.Tensor:
    return ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 <= 1.0


def _frame_label(px: torch.Tensor, py: torch.Tensor, action: int, direction: int, t: int, num_frames: int,
                 style: int) -> torch.Tensor:
    """Part index of every (supersampled) pixel of one frame, painter's order."""
    p = _pose(action, direction, t, num_frames)
    side, bob = p["side"], p["bob"]
    label = torch.zeros(px.shape, dtype=torch.long)

    def paint(part: int, mask: torch.Tensor) -> None:
        label.masked_fill_(mask, part)

    for i in range(2):  # legs and shoes
        paint(_BOTTOM, _seg(px, py, p["hips"][i], p["feet"][i], 0.045))
        fx, fy = p["feet"][i]
        paint(_SHOES, _seg(px, py, (fx - 0.012 + 0.0125 * side, fy + 0.02), (fx + 0.012 + 0.0375 * side, fy + 0.02),
                           0.026))
    arms = [0, 1]
    if side != 0:  # the far arm goes behind the torso
        paint(_TOP, _seg(px, py, p["shoulders"][0], p["hands"][0], 0.034))
        paint(_SKIN, _seg(px, py, p["hands"][0], p["hands"][0], 0.03))
        arms = [1]
    half_w = 0.13 if side == 0 else 0.09
    paint(_TOP, ((px - 0.5).abs() <= half_w) & (py >= 0.37 + bob) & (py <= 0.64 + bob))
    paint(_SKIN, ((px - 0.5).abs() <= 0.035) & (py >= 0.33 + bob) & (py <= 0.38 + bob))  # neck
    for i in arms:
        paint(_TOP, _seg(px, py, p["shoulders"][i], p["hands"][i], 0.036))
        paint(_SKIN, _seg(px, py, p["hands"][i], p["hands"][i], 0.032))
    if p["sword"] is not None:
        paint(_SWORD, _seg(px, py, p["sword"][0], p["sword"][1], 0.014))
    hy, hx = 0.24 + bob, 0.5 + 0.01 * side
    if style == 1:  # long hair behind the head
        paint(_HAIR, ((px - 0.5 + 0.03 * side).abs() <= 0.13) & (py >= 0.14 + bob) & (py <= 0.42 + bob))
    paint(_SKIN, _ellipse(px, py, hx, hy, 0.105, 0.115))
    if side != 0:  # nose
        paint(_SKIN, _ellipse(px, py, hx + 0.1 * side, hy + 0.02, 0.03, 0.025))
    if style == 0:  # short cap
        cap = _ellipse(px, py, hx - 0.01 * side, hy - 0.045, 0.115, 0.085) & (py <= hy - 0.02)
    elif style == 1:
        cap = _ellipse(px, py, hx - 0.01 * side, hy - 0.05, 0.12, 0.08) & (py <= hy - 0.03)
    else:  # tall, spiky crest
        cap = _ellipse(px, py, hx - 0.015 * side, hy - 0.085, 0.095, 0.10) & (py <= hy - 0.03)
        spikes = (torch.sin(px * 2 * math.pi * 14).abs() > 0.25) & (py <= hy - 0.12) & (py >= hy - 0.2)
        cap = (cap & ~spikes) | (cap & (py > hy - 0.12))
    paint(_HAIR, cap)
    if side == 0:
        eyes = _ellipse(px, py, 0.455, hy + 0.01, 0.018, 0.024) | _ellipse(px, py, 0.545, hy + 0.01, 0.018, 0.024)
    else:
        eyes = _ellipse(px, py, hx + 0.055 * side, hy + 0.01, 0.018, 0.024)
    paint(_EYES, eyes)
    return label


@functools.lru_cache(maxsize=8)
def _coverage(size: int, num_frames: int) -> torch.Tensor:
    """Part coverage maps: (styles=3, motions=9, frames, parts=8, size, size) float32, summing to 1."""
    ss = max(2, int(math.ceil(128 / size)))  # supersampling factor (>= 128 samples across)
    hr = size * ss
    coords = (torch.arange(hr, dtype=torch.float32) + 0.5) / hr
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.zeros(_NUM_STYLES, NUM_MOTIONS, num_frames, _NUM_PARTS, size, size, dtype=torch.float32)
    rest = [_frame_label(px, py, 0, 1, 0, num_frames, style) for style in range(_NUM_STYLES)]
    for style in range(_NUM_STYLES):
        labels = torch.empty(NUM_MOTIONS, num_frames, hr, hr, dtype=torch.long)
        for m in range(NUM_MOTIONS):
            a, d = divmod(m, len(DIRECTIONS))
            labels[m, 0] = rest[style]
            for t in range(1, num_frames):
                labels[m, t] = _frame_label(px, py, a, d, t, num_frames, style)
        onehot = torch.nn.functional.one_hot(labels.reshape(-1, hr, hr), _NUM_PARTS).permute(0, 3, 1, 2).float()
        out[style] = torch.nn.functional.avg_pool2d(onehot, ss).reshape(NUM_MOTIONS, num_frames, _NUM_PARTS, size,
                                                                          size)
    return out


def _palette(labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Per-sequence colours of each part: (N, parts, 3)."""
    n = labels.shape[0]
    pal = torch.zeros(n, _NUM_PARTS, 3, device=device)
    pal[:, _BG] = torch.tensor(_BACKGROUND, device=device)
    for j, name in enumerate(STATIC_FACTORS):
        table = torch.tensor(PALETTES[name], device=device)
        pal[:, _SKIN + j] = table[labels[:, j]]
    for part, name in ((_EYES, "eyes"), (_SHOES, "shoes"), (_SWORD, "sword")):
        pal[:, part] = torch.tensor(_FIXED[name], device=device)
    return pal


def render(
    labels: torch.Tensor,
    size: int = 64,
    num_frames: int = 8,
    *,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Render sprite sequences for the given ground-truth labels.

    Args:
        labels: (N, 6) integer tensor, columns ``COLUMNS`` = (skin, hair, top, bottom, action,
            direction); static factors in [0, 6), action and direction in [0, 3).
        size: frame height and width in pixels (>= 16). 64 matches Sprites.
        num_frames: frames per sequence (>= 2); the motions are periodic over ``num_frames``.
        dtype: ``torch.float32``/``float64`` (values in [0, 1]) or ``torch.uint8`` (0..255).
        device: output device (default: the labels' device).

    Returns:
        (N, num_frames, 3, size, size) tensor.

    Example:
        >>> x = render(torch.tensor([[0, 1, 2, 3, 0, 2]]), size=64)   # one walking-right sprite
    """
    _check_labels(labels)
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size: expected an int >= 16, got {size!r}")
    if not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f"num_frames: expected an int >= 2, got {num_frames!r}")
    if dtype not in (torch.float32, torch.float64, torch.uint8):
        raise TypeError(f"dtype: expected torch.float32, torch.float64 or torch.uint8, got {dtype}")
    dev = torch.device(device) if device is not None else labels.device
    cov = _coverage(size, num_frames)
    if cov.device != dev:
        cov = _coverage_on(size, num_frames, str(dev))
    labels = labels.to(dev)
    style = labels[:, 1] % _NUM_STYLES
    motion = labels[:, 4] * len(DIRECTIONS) + labels[:, 5]
    maps = cov[style, motion]  # (N, T, P, H, W)
    pal = _palette(labels, dev)  # (N, P, 3)
    x = torch.einsum("ntphw,npc->ntchw", maps, pal).clamp_(0, 1)
    if dtype == torch.uint8:
        return x.mul_(255).round_().to(torch.uint8)
    return x.to(dtype)


@functools.lru_cache(maxsize=8)
def _coverage_on(size: int, num_frames: int, device: str) -> torch.Tensor:
    return _coverage(size, num_frames).to(device)


@dataclass
class SpriteSet:
    """Labels of a set of sprite sequences, rendered on demand (or all at once with :meth:`images`).

    Attributes:
        labels: (N, 6) int64 ground truth, columns ``COLUMNS``.
        size: frame size in pixels.
        num_frames: frames per sequence.
    """

    labels: torch.Tensor
    size: int = 64
    num_frames: int = 8

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def motion(self) -> torch.Tensor:
        """(N,) 9-way motion class."""
        return motion_of(self.labels)

    def images(self, index: Optional[torch.Tensor] = None, *, dtype: torch.dtype = torch.float32,
               device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
        """Rendered sequences (all, or ``index``): (n, T, 3, size, size)."""
        lab = self.labels if index is None else self.labels[index]
        return render(lab, self.size, self.num_frames, dtype=dtype, device=device)

    def batches(self, batch_size: int, *, shuffle: bool = True, generator: Optional[torch.Generator] = None,
                drop_last: bool = True, device: Optional[Union[str, torch.device]] = None):
        """Yield (images (B, T, 3, H, W) float32, labels (B, 6)) for one pass over the set."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            lab = self.labels[idx]
            yield render(lab, self.size, self.num_frames, device=device), lab.to(device or lab.device)


def sprite_splits(
    num_train_characters: int = 1000,
    *,
    size: int = 64,
    num_frames: int = 8,
    seed: int = 0,
) -> tuple[SpriteSet, SpriteSet]:
    """Train/test split by character, as in Sprites (1000 / 296 characters, all 9 motions each).

    Args:
        num_train_characters: characters (static factor combinations) in the training split,
            in [1, 1295]; the rest form the test split.
        size: frame size in pixels.
        num_frames: frames per sequence.
        seed: seed of the character permutation.

    Returns:
        (train, test) :class:`SpriteSet` with 9 sequences per character.
    """
    total = NUM_VALUES**4
    if not 1 <= num_train_characters < total:
        raise ValueError(f"num_train_characters: expected 1 <= n < {total}, got {num_train_characters}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(total, generator=g)
    labels = all_labels().reshape(total, NUM_MOTIONS, len(COLUMNS))
    tr = labels[perm[:num_train_characters]].reshape(-1, len(COLUMNS))
    te = labels[perm[num_train_characters:]].reshape(-1, len(COLUMNS))
    return SpriteSet(tr, size, num_frames), SpriteSet(te, size, num_frames)
