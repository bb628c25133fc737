"""A procedural CIFAR-like image set, generated offline, deterministic per seed.

Each class is a (shape, texture, palette) combination: 10 shapes x 10 textures x 10 colour
palettes, so up to 1,000 classes stay distinguishable. Every image draws its own pose
(rotation, scale, position), colours (the class only shifts the hue distribution, it does
not fix it), a smooth random background, clutter blobs and pixel noise. A small CNN
separates the classes well above chance but not perfectly.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch

from .dataset import DatasetSplits, ImageDataset

SHAPES = ("disk", "square", "triangle", "cross", "ring", "bar", "half-disk", "star", "crescent", "two-dots")
TEXTURES = ("solid", "stripes", "checker", "dots", "radial", "rings", "diagonal", "grid", "gradient", "outline")
PALETTES = ("warm", "cool", "pastel", "dark", "vivid", "earth", "neon", "grey", "sea", "sunset")
_CHUNK = 2048  # images rendered per vectorized step (bounds memory; part of the seed -> data map)
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * len(PALETTES)


def class_names(num_classes: int) -> list[str]:
    names = []
    for c in range(num_classes):
        s, t, p = c % 10, (c // 10) % 10, c // 100
        names.append(f"{SHAPES[s]}/{TEXTURES[t]}" + (f"/{PALETTES[p]}" if num_classes > 100 else ""))
    return names


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """h, s, v in [0, 1], same shape [...]; returns [..., 3]."""
    h6 = (h % 1.0) * 6.0
    k = torch.stack([(5.0 + h6) % 6.0, (3.0 + h6) % 6.0, (1.0 + h6) % 6.0], dim=-1)
    f = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v.unsqueeze(-1) * (1.0 - s.unsqueeze(-1) * f)


def _shape_mask(sid: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Soft coverage in [0, 1] of shape ``sid`` [B] at local coordinates x, y [B, H, W]."""
    r = torch.sqrt(x * x + y * y)
    phi = torch.atan2(y, x)
    ax, ay = x.abs(), y.abs()
    d = torch.stack(
        [
            r - 0.8,  # disk
            torch.maximum(ax, ay) - 0.65,  # square
            torch.maximum(y * 0.5 + ax * 0.866, -y) - 0.42,  # triangle (equilateral)
            torch.minimum(torch.maximum(ax - 0.25, ay - 0.8), torch.maximum(ay - 0.25, ax - 0.8)),  # cross
            (r - 0.62).abs() - 0.18,  # ring
            torch.maximum(ax - 0.85, ay - 0.28),  # bar
            torch.maximum(r - 0.8, -y - 0.05),  # half disk
            r - (0.5 + 0.28 * torch.cos(5.0 * phi)),  # star
            torch.maximum(r - 0.8, 0.6 - torch.sqrt((x - 0.38) ** 2 + y * y)),  # crescent
            torch.sqrt((ax - 0.45) ** 2 + y * y) - 0.33,  # two dots
        ],
        dim=1,
    )  # [B, 10, H, W]
    dist = d.gather(1, sid.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[1:])).squeeze(1)
    return torch.sigmoid(-dist * 18.0)


def _texture(tid: torch.Tensor, x: torch.Tensor, y: torch.Tensor, freq: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Texture value in [0, 1] (0: colour A, 1: colour B) for texture ``tid`` [B]."""
    f = freq.view(-1, 1, 1)
    r = torch.sqrt(x * x + y * y)
    t = torch.stack(
        [
            torch.zeros_like(x),  # solid
            0.5 + 0.5 * torch.sin(f * x * math.pi),  # stripes
            ((torch.floor(f * x * 0.5) + torch.floor(f * y * 0.5)) % 2.0),  # checker
            (torch.sin(f * x * math.pi) * torch.sin(f * y * math.pi) > 0.55).float(),  # dots
            torch.clamp(r / 0.8, 0, 1),  # radial gradient
            0.5 + 0.5 * torch.sin(f * r * 2.0 * math.pi),  # concentric rings
            0.5 + 0.5 * torch.sin(f * (x + y) * math.pi * 0.7),  # diagonal stripes
            ((torch.sin(f * x * math.pi).abs() < 0.3) | (torch.sin(f * y * math.pi).abs() < 0.3)).float(),  # grid
            torch.clamp(0.5 + 0.6 * x, 0, 1),  # linear gradient
            torch.clamp((m - 0.05) * (1.0 - m) * 6.0, 0, 1),  # outline: the shape's soft edge band
        ],
        dim=1,
    )
    return t.gather(1, tid.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[1:])).squeeze(1)


_PALETTE_SV = torch.tensor(  # (sat lo, sat hi, val lo, val hi) per palette
    [
        [0.6, 0.9, 0.7, 1.0], [0.5, 0.9, 0.5, 0.9], [0.2, 0.4, 0.8, 1.0], [0.4, 0.8, 0.25, 0.5],
        [0.85, 1.0, 0.85, 1.0], [0.3, 0.6, 0.35, 0.65], [0.9, 1.0, 0.6, 1.0], [0.0, 0.1, 0.3, 0.95],
        [0.5, 0.8, 0.4, 0.8], [0.6, 1.0, 0.6, 0.9],
    ]
)


Uniform = Callable[..., torch.Tensor]


def _uniform(g: torch.Generator) -> Uniform:
    """``U(*shape, lo=0, hi=1)``: uniform draws from ``g`` (shared by the procedural renderers)."""

    def U(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    return U


def _grid(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1]: (gx, gy), each [B, size, size]."""
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    return gx.expand(batch, -1, -1), gy.expand(batch, -1, -1)


def _local(gx: torch.Tensor, gy: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor,
           ox: torch.Tensor, oy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates in the frame of an object rotated by ``theta`` [B], scaled, centred at (ox, oy)."""
    c, s = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    dx, dy = gx - ox.view(-1, 1, 1), gy - oy.view(-1, 1, 1)
    sc = scale.view(-1, 1, 1)
    return (c * dx + s * dy) / sc, (-s * dx + c * dy) / sc


def _over(img: torch.Tensor, alpha: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Alpha-composite ``colour`` ([B, 3, 1, 1] or [B, 3, H, W]) with coverage ``alpha`` [B, H, W]."""
    return img * (1 - alpha.unsqueeze(1)) + colour * alpha.unsqueeze(1)


def _background(U: Uniform, gx: torch.Tensor, gy: torch.Tensor, wave_along_y: bool = False) -> torch.Tensor:
    """A smooth two-colour gradient in a random direction plus a low-frequency wave: [B, 3, H, W]."""
    B = gx.shape[0]
    bg_a = _hsv_to_rgb(U(B), U(B, hi=0.6), U(B, lo=0.15, hi=0.9))
    bg_b = _hsv_to_rgb(U(B), U(B, hi=0.6), U(B, lo=0.15, hi=0.9))
    ang = U(B, hi=2 * math.pi)
    proj = 0.5 + 0.5 * (gx * torch.cos(ang).view(-1, 1, 1) + gy * torch.sin(ang).view(-1, 1, 1)) / math.sqrt(2)
    wave = 0.08 * torch.sin(U(B, lo=1, hi=4).view(-1, 1, 1) * math.pi * ((gy if wave_along_y else gx) + U(B).view(-1, 1, 1)))
    img = bg_a.view(B, 3, 1, 1) * (1 - proj).unsqueeze(1) + bg_b.view(B, 3, 1, 1) * proj.unsqueeze(1)
    return img + wave.unsqueeze(1)


def _clutter(img: torch.Tensor, U: Uniform, g: torch.Generator, gx: torch.Tensor, gy: torch.Tensor, *,
             ellipse_radius: float, ellipse_alpha: float, distractor_scale: tuple[float, float],
             distractor_offset: float, distractor_alpha: tuple[float, float]) -> torch.Tensor:
    """Three ellipses of random colour, then a distractor shape at a random pose (no label information)."""
    B = img.shape[0]
    for _ in range(3):
        cx, cy = U(B, lo=-1, hi=1).view(-1, 1, 1), U(B, lo=-1, hi=1).view(-1, 1, 1)
        rx, ry = U(B, lo=0.05, hi=ellipse_radius).view(-1, 1, 1), U(B, lo=0.05, hi=ellipse_radius).view(-1, 1, 1)
        e = torch.sigmoid((1.0 - ((gx - cx) / rx) ** 2 - ((gy - cy) / ry) ** 2) * 4.0) * U(B, hi=ellipse_alpha).view(-1, 1, 1)
        img = _over(img, e, _hsv_to_rgb(U(B), U(B), U(B, lo=0.2, hi=1.0)).view(B, 3, 1, 1))
    d_theta = U(B, hi=2 * math.pi)
    d_scale = U(B, lo=distractor_scale[0], hi=distractor_scale[1])
    d_ox, d_oy = U(B, lo=-distractor_offset, hi=distractor_offset), U(B, lo=-distractor_offset, hi=distractor_offset)
    dlx, dly = _local(gx, gy, d_theta, d_scale, d_ox, d_oy)
    d_sid = torch.randint(0, 10, (B,), generator=g)
    d_mask = _shape_mask(d_sid, dlx, dly) * U(B, lo=distractor_alpha[0], hi=distractor_alpha[1]).view(-1, 1, 1)
    return _over(img, d_mask, _hsv_to_rgb(U(B), U(B, lo=0.3, hi=1.0), U(B, lo=0.3, hi=1.0)).view(B, 3, 1, 1))


def _paint(img: torch.Tensor, U: Uniform, mask: torch.Tensor, tid: Union[torch.Tensor, Callable[[], torch.Tensor]], lx: torch.Tensor, ly: torch.Tensor,
           hue: torch.Tensor, sat: torch.Tensor, val: torch.Tensor, freq: tuple[float, float]) -> torch.Tensor:
    """Draw the object: texture ``tid`` between a colour and a darker complementary one, over ``img``.

    ``tid`` may be a callable drawing the texture ids (called after the colour draws).
    """
    B = img.shape[0]
    col_a = _hsv_to_rgb(hue, sat, val)
    col_b = _hsv_to_rgb((hue + U(B, lo=0.3, hi=0.7)) % 1.0, sat, torch.clamp(val * U(B, lo=0.3, hi=0.8), 0, 1))
    tex = _texture(tid() if callable(tid) else tid, lx, ly, U(B, lo=freq[0], hi=freq[1]), mask)
    fg = col_a.view(B, 3, 1, 1) * (1 - tex).unsqueeze(1) + col_b.view(B, 3, 1, 1) * tex.unsqueeze(1)
    return _over(img, mask, fg)


def _render(labels: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """float [B, 3, size, size] in [0, 1] for class ``labels`` [B]."""
    B = labels.shape[0]
    U = _uniform(g)
    gx, gy = _grid(B, size)
    sid, tid, pid = labels % 10, (labels // 10) % 10, (labels // 100) % 10
    img = _background(U, gx, gy)
    img = _clutter(img, U, g, gx, gy, ellipse_radius=0.25, ellipse_alpha=0.8, distractor_scale=(0.18, 0.32),
                   distractor_offset=0.75, distractor_alpha=(0.5, 1.0))
    # the object: pose
    theta = U(B, hi=2 * math.pi)
    scale = U(B, lo=0.36, hi=0.72)
    ox, oy = U(B, lo=-0.28, hi=0.28), U(B, lo=-0.28, hi=0.28)
    lx, ly = _local(gx, gy, theta, scale, ox, oy)
    mask = _shape_mask(sid, lx, ly)
    # colours: class-linked hue mean (a weak cue), palette-dependent saturation/value
    sv = _PALETTE_SV[pid]
    hue = (labels.float() * 0.618034 + torch.randn(B, generator=g) * 0.3) % 1.0
    sat = sv[:, 0] + (sv[:, 1] - sv[:, 0]) * U(B)
    val = sv[:, 2] + (sv[:, 3] - sv[:, 2]) * U(B)
    img = _paint(img, U, mask, tid, lx, ly, hue, sat, val, freq=(3.0, 5.0))
    # global illumination and sensor noise
    img = img * U(B, lo=0.75, hi=1.15).view(-1, 1, 1, 1)
    img = img + torch.randn(img.shape, generator=g) * U(B, lo=0.03, hi=0.10).view(-1, 1, 1, 1)
    return img.clamp_(0.0, 1.0)


def synthetic_images(
    n: int,
    num_classes: int = 10,
    size: int = 32,
    seed: int = 0,
    *,
    balanced: bool = True,
) -> ImageDataset:
    """Procedural CIFAR-like images.

    Args:
        n: number of images.
        num_classes: 2 ... 1000 (shape x texture x palette combinations).
        size: side length H = W (>= 8).
        seed: the same seed gives the same images and labels on every machine.
        balanced: labels cycle through the classes (then shuffled) so counts differ by at most 1;
            otherwise uniform random labels.

    Returns:
        ImageDataset with images uint8 [n, 3, size, size], labels int64 [n].

    Example:
        >>> x, y = synthetic_images(50_000, num_classes=10, seed=0)   # a few seconds on 2 cores
    """
    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes: expected 2 ... {MAX_CLASSES}, got {num_classes}")
    if size < 8:
        raise ValueError(f"size: expected at least 8 pixels, got {size}")
    g = torch.Generator().manual_seed(int(seed))
    if balanced:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
    else:
        labels = torch.randint(0, num_classes, (n,), generator=g)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    chunk = _CHUNK
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        gc = torch.Generator().manual_seed(int(seed) * 1_000_003 + start // chunk)
        imgs = _render(labels[sl], size, gc)
        images[sl] = imgs.mul_(255.0).round_().to(torch.uint8)
    return ImageDataset(images, labels.long(), class_names(num_classes))


def synthetic_splits(
    n_train: int, n_test: int, num_classes: int = 10, size: int = 32, seed: int = 0
) -> DatasetSplits:
    """Train and test sets from disjoint seeds (the test set never shares an image with train)."""
    train = synthetic_images(n_train, num_classes, size, seed=2 * seed)
    test = synthetic_images(n_test, num_classes, size, seed=2 * seed + 1)
    return DatasetSplits(train, test)
