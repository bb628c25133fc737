"""Procedural sprite sequences: an offline stand-in for the Sprites benchmark.

Every sequence shows one character performing one motion for ``num_frames`` frames. The
ground truth is kept for the judge:

* four static factors with 6 values each: ``skin``, ``hair`` (colour and one of three
  styles), ``top`` (shirt and sleeves), ``bottom`` (trousers);
* one dynamic factor, the ``motion`` (9 classes) = ``action`` (walk, spellcast, slash) x
  ``direction`` (left, front, right).

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
    "skin": ((1.00, 0.86, 0.74), (0.92, 0.70, 0.52), (0.76, 0.53, 0.34),
             (0.50, 0.32, 0.20), (0.56, 0.78, 0.46), (0.62, 0.70, 0.86)),
    "hair": ((0.10, 0.08, 0.08), (0.47, 0.27, 0.10), (0.96, 0.82, 0.30),
             (0.86, 0.24, 0.10), (0.85, 0.85, 0.88), (0.20, 0.35, 0.90)),
    "top": ((0.85, 0.12, 0.15), (0.15, 0.62, 0.20), (0.15, 0.30, 0.85),
            (0.95, 0.80, 0.10), (0.58, 0.20, 0.70), (0.96, 0.55, 0.10)),
    "bottom": ((0.12, 0.12, 0.14), (0.30, 0.42, 0.62), (0.52, 0.34, 0.18),
               (0.16, 0.40, 0.22), (0.55, 0.10, 0.22), (0.74, 0.68, 0.50)),
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

def _pose(action: int, direction: int, t: torch.Tensor, num_frames: int) -> dict[str, torch.Tensor]:
    """Joint positions for frames ``t``: normalized [0, 1] coordinates, x right, y down.

    Arm angles are measured from straight down (0) towards the facing direction (pi/2 is
    horizontal forward, pi straight up).
    """
    phase = 2 * math.pi * t.float() / num_frames
    s, c = torch.sin(phase), torch.cos(phase)
    zero = torch.zeros_like(phase)
    side = {0: -1, 1: 0, 2: 1}[direction]  # facing: -1 left, 0 front (towards the viewer), +1 right
    fwd = side if side != 0 else 1          # the swing direction on screen
    bob = -0.012 * c.abs() if action == 0 else zero
    hip_y, sh_y = 0.62 + bob, 0.40 + bob
    if side == 0:
        hips_x, shoulders_x = [0.44, 0.56], [0.35, 0.65]
    else:  # index 0 is the far limb
        hips_x, shoulders_x = [0.5 - 0.02 * side, 0.5 + 0.02 * side], [0.5 - 0.02 * side, 0.5 + 0.03 * side]
    reach = 0.20

    def hand(i: int, theta: torch.Tensor, splay: float = 0.0) -> torch.Tensor:
        direction_x = fwd if side != 0 else (1 if i == 1 else -1)
        return torch.stack([shoulders_x[i] + direction_x * reach * torch.sin(theta) + splay,
                            sh_y + reach * torch.cos(theta)], -1)

    feet = [torch.stack([hips_x[i] + zero, 0.86 + zero], -1) for i in range(2)]
    rest = 0.12 * torch.ones_like(phase)
    hands = [hand(0, rest), hand(1, rest)]
    extra: dict[str, torch.Tensor] = {}
    if action == 0:  # walk: legs and arms swing in opposition
        if side == 0:
            feet = [torch.stack([hips_x[0] + zero, 0.86 - 0.05 * s.clamp(min=0)], -1),
                    torch.stack([hips_x[1] + zero, 0.86 - 0.05 * (-s).clamp(min=0)], -1)]
            hands = [hand(0, 0.12 + 0.5 * (-s).clamp(min=0)), hand(1, 0.12 + 0.5 * s.clamp(min=0))]
        else:
            feet = [torch.stack([hips_x[0] + 0.09 * s * side, 0.86 - 0.015 * c.abs()], -1),
                    torch.stack([hips_x[1] - 0.09 * s * side, 0.86 - 0.015 * c.abs()], -1)]
            hands = [hand(0, -0.45 * s), hand(1, 0.45 * s)]
    elif action == 1:  # spellcast: arms rise above the head and come back down
        lift = 0.5 * (1 - c)
        if side == 0:
            hands = [hand(0, 0.25 + 2.45 * lift), hand(1, 0.25 + 2.45 * lift)]
        else:
            hands = [hand(0, 0.2 + 2.0 * lift), hand(1, 0.2 + 2.6 * lift)]
    else:  # slash: the sword arm swings from up-behind the head down to the front
        theta = 1.15 * math.pi - 0.9 * math.pi * 0.5 * (1 - c)
        hands[1] = hand(1, theta)
        dx = (fwd if side != 0 else 1) * torch.sin(theta)
        extra["sword0"] = hands[1]
        extra["sword1"] = hands[1] + 0.21 * torch.stack([dx, torch.cos(theta)], -1)
    return {
        "side": torch.full_like(phase, float(side)),
        "bob": bob + zero,
        "hips": torch.stack([torch.stack([hips_x[i] + zero, hip_y + zero], -1) for i in range(2)]),
        "feet": torch.stack(feet),
        "shoulders": torch.stack([torch.stack([shoulders_x[i] + zero, sh_y + zero], -1) for i in range(2)]),
        "hands": torch.stack(hands),
        **extra,
    }


def _seg_dist(px: torch.Tensor, py: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from pixels (H, W) to segments a->b given per frame (F, 2): (F, H, W)."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    bx, by = b[:, 0, None, None], b[:, 1, None, None]
    dx, dy = bx - ax, by - ay
    den = (dx * dx + dy * dy).clamp(min=1e-12)
    h = (((px - ax) * dx + (py - ay) * dy) / den).clamp(0, 1)
    return torch.hypot(px - ax - h * dx, py - ay - h * dy)


def _ellipse(px, py, cx, cy, rx, ry) -> torch.Tensor:
    cx = torch.as_tensor(cx, dtype=px.dtype)
    cy = torch.as_tensor(cy, dtype=px.dtype)
    cx = cx.reshape(-1, 1, 1) if cx.dim() else cx
    cy = cy.reshape(-1, 1, 1) if cy.dim() else cy
    return ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 <= 1.0


@functools.lru_cache(maxsize=8)
def _coverage(size: int, num_frames: int) -> torch.Tensor:
    """Part coverage maps: (styles=3, motions=9, frames, parts=8, size, size) float32, summing to 1."""
    ss = max(2, int(math.ceil(128 / size)))  # supersampling factor (>= 128 samples across)
    hr = size * ss
    coords = (torch.arange(hr, dtype=torch.float32) + 0.5) / hr
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    t = torch.arange(num_frames)
    out = torch.zeros(_NUM_STYLES, NUM_MOTIONS, num_frames, _NUM_PARTS, size, size, dtype=torch.float32)
    for a in range(len(ACTIONS)):
        for d in range(len(DIRECTIONS)):
            p = _pose(a, d, t, num_frames)
            side = int(p["side"][0])
            bob = p["bob"].reshape(-1, 1, 1)
            layers: list[tuple[int, torch.Tensor]] = []  # painter's order: (part, mask (F, hr, hr))
            # legs (trousers) and shoes
            for i in range(2):
                leg = _seg_dist(px, py, p["hips"][i], p["feet"][i]) <= 0.045
                layers.append((_BOTTOM, leg))
                foot = p["feet"][i]
                shoe_dx = 0.025 * side
                shoe = _seg_dist(px, py, foot + torch.tensor([-0.012 + shoe_dx * 0.5, 0.02]),
                                 foot + torch.tensor([0.012 + shoe_dx * 1.5, 0.02])) <= 0.026
                layers.append((_SHOES, shoe))
            # far arm behind the torso in side view
            arms = [0, 1]
            if side != 0:
                far = _seg_dist(px, py, p["shoulders"][0], p["hands"][0]) <= 0.034
                layers.append((_TOP, far))
                layers.append((_SKIN, _seg_dist(px, py, p["hands"][0], p["hands"][0]) <= 0.03))
                arms = [1]
            # torso
            half_w = 0.13 if side == 0 else 0.09
            torso_y0, torso_y1 = 0.37 + bob, 0.64 + bob
            torso = ((px - 0.5).abs() <= half_w) & (py >= torso_y0) & (py <= torso_y1)
            layers.append((_TOP, torso))
            # neck
            layers.append((_SKIN, ((px - 0.5).abs() <= 0.035) & (py >= 0.33 + bob) & (py <= 0.38 + bob)))
            # near arm(s) in front of the torso
            for i in arms:
                layers.append((_TOP, _seg_dist(px, py, p["shoulders"][i], p["hands"][i]) <= 0.036))
                layers.append((_SKIN, _seg_dist(px, py, p["hands"][i], p["hands"][i]) <= 0.032))
            if "sword0" in p:
                layers.append((_SWORD, _seg_dist(px, py, p["sword0"], p["sword1"]) <= 0.014))
            head_cy = 0.24 + bob
            head_cx = 0.5 + 0.01 * side
            per_style: list[list[tuple[int, torch.Tensor]]] = []
            for style in range(_NUM_STYLES):
                ls: list[tuple[int, torch.Tensor]] = []
                if style == 1:  # long hair behind the head
                    back = ((px - 0.5 + 0.03 * side).abs() <= 0.13) & (py >= 0.14 + bob) & (py <= 0.42 + bob)
                    ls.append((_HAIR, back))
                ls.append((_SKIN, _ellipse(px, py, head_cx, head_cy, 0.105, 0.115)))
                if side != 0:  # nose
                    ls.append((_SKIN, _ellipse(px, py, head_cx + 0.1 * side, head_cy + 0.02, 0.03, 0.025)))
                if style == 0:  # short cap
                    cap = _ellipse(px, py, head_cx - 0.01 * side, head_cy - 0.045, 0.115, 0.085) & (py <= head_cy - 0.02)
                elif style == 1:
                    cap = _ellipse(px, py, head_cx - 0.01 * side, head_cy - 0.05, 0.12, 0.08) & (py <= head_cy - 0.03)
                else:  # tall, spiky crest
                    cap = (_ellipse(px, py, head_cx - 0.015 * side, head_cy - 0.085, 0.095, 0.10) & (py <= head_cy - 0.03))
                    spikes = (torch.sin(px * 2 * math.pi * 14).abs() > 0.25) & (py <= head_cy - 0.12) & (py >= head_cy - 0.2)
                    cap = cap & ~spikes | (cap & (py > head_cy - 0.12))
                ls.append((_HAIR, cap))
                # eyes
                if side == 0:
                    eyes = (_ellipse(px, py, 0.455, head_cy + 0.01, 0.018, 0.024)
                            | _ellipse(px, py, 0.545, head_cy + 0.01, 0.018, 0.024))
                else:
                    eyes = _ellipse(px, py, head_cx + 0.055 * side, head_cy + 0.01, 0.018, 0.024)
                ls.append((_EYES, eyes))
                per_style.append(ls)
            m = a * len(DIRECTIONS) + d
            for style in range(_NUM_STYLES):
                label = torch.zeros(num_frames, hr, hr, dtype=torch.long)
                for part, mask in layers + per_style[style]:
                    label.masked_fill_(mask.expand(num_frames, hr, hr), part)
                onehot = torch.nn.functional.one_hot(label, _NUM_PARTS).permute(0, 3, 1, 2).float()
                out[style, m] = torch.nn.functional.avg_pool2d(onehot, ss)
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
