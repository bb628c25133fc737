"""Batched per-sample augmentation: fastorals vs per-image PIL (the official pipeline) vs kornia.

Every case augments a batch with per-sample chains of ``n`` ops at level ``n`` (the CUDA paper's
strength ``n``; ops drawn uniformly per sample) inside the paper's pipeline: random crop with
padding 4, horizontal flip, the chain, ToTensor, Cutout 16, Normalize.

* ``fastorals``: :class:`fastorals.augment.BatchAugment` (sampling, draws and the fused kernel),
  all threads (``torch.get_num_threads()``); ``fastorals-1t``: the same on one thread.
* ``reference``: the per-image PIL pipeline of :mod:`fastorals.augment.reference` on the same
  draws (what the official code runs per image in its DataLoader workers, with one torch thread
  as in a worker); verified equal. With N workers on N cores it would scale up to N times.
* ``kornia``: kornia's functional ops applied per sample in a loop, since kornia draws one op
  sequence per call for the whole batch (float images, its own pixel semantics).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Optional

import torch

from benchmarks.harness import Case, Suite
from fastorals import augment
from fastorals.augment import api as augment_api
from fastorals.augment import opset as O
from fastorals.augment import reference

MEAN = torch.tensor(augment.CIFAR10_MEAN)
STD = torch.tensor(augment.CIFAR10_STD)


def _images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth random images (blocky noise upsampled) rather than white noise: closer to photos
    low = torch.randint(0, 256, (b, 3, max(2, size // 8), max(2, size // 8)), generator=g).float()
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


class _Draws:
    """The exact draws BatchAugment makes for a seed, for the reference and kornia."""

    def __init__(self, aug: augment.BatchAugment, images: torch.Tensor, strengths: torch.Tensor, seed: int):
        g = torch.Generator().manual_seed(seed)
        b, _, h, w = images.shape
        self.chains = aug.sample(strengths, (h, w), generator=g)
        self.pipe = augment.draw_pipeline(b, h, w, crop_padding=aug.crop_padding, flip_prob=aug.flip_prob,
                                          cutout=aug.cutout, generator=g)
        self.values = self.chains.values()

    def canonical(self, images: torch.Tensor) -> tuple:
        """The registered ops' canonical arguments for these draws (float output), on ``images``' device."""
        dev = images.device
        p = self.pipe
        return (images, self.chains.ops.to(dev, torch.int32), self.values.to(dev, torch.float64),
                p.crop.to(dev, torch.int32), p.flip.to(dev, torch.uint8), p.cutout.to(dev, torch.int32),
                MEAN.to(dev, torch.float32), STD.to(dev, torch.float32), True)


@contextlib.contextmanager
def _torch_threads(n: Optional[int]) -> Iterator[None]:
    """torch ops on ``n`` threads inside the block (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _reference(images: torch.Tensor, d: _Draws) -> torch.Tensor:
    """Per-image PIL pipeline with one torch thread, as in a DataLoader worker (torch sets 1 there)."""
    with _torch_threads(1):
        return reference.augment_batch(*d.canonical(images))


# ----------------------------------------------------------------------------- kornia peer

_KERNELS = {
    O.EDGE_ENHANCE: ([-1, -1, -1, -1, 10, -1, -1, -1, -1], 2.0),
    O.DETAIL: ([0, -1, 0, -1, 10, -1, 0, -1, 0], 6.0),
    O.SMOOTH: ([1, 1, 1, 1, 5, 1, 1, 1, 1], 13.0),
}


def _kornia_op(x: torch.Tensor, op: int, v: float) -> torch.Tensor:
    import kornia.enhance as E
    import kornia.filters as F
    import kornia.geometry.transform as T

    h, w = x.shape[-2:]
    dev = x.device
    if op == O.FLIP:
        return T.vflip(x)
    if op == O.MIRROR:
        return T.hflip(x)
    if op in _KERNELS:
        k, s = _KERNELS[op]
        kern = torch.tensor(k, dtype=x.dtype, device=dev).view(1, 3, 3) / s
        return F.filter2d(x, kern, border_type="replicate").clamp(0, 1)
    if op == O.AUTOCONTRAST:
        return E.normalize_min_max(x)
    if op == O.EQUALIZE:
        return E.equalize(x)
    if op == O.INVERT:
        return E.invert(x)
    if op == O.GAUSSIAN_BLUR:
        if v <= 0:
            return x
        ks = 2 * math.ceil(3 * v) + 1
        return F.gaussian_blur2d(x, (ks, ks), (v, v))
    if op == O.RESIZE_CROP:
        big = T.resize(x, (int(h * v), int(w * v)), interpolation="bilinear", antialias=True)
        top, left = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
        return big[..., top:top + h, left:left + w]
    if op == O.ROTATE:
        return T.rotate(x, torch.tensor([v], dtype=x.dtype, device=dev), mode="nearest")
    if op == O.POSTERIZE:
        return E.posterize(x, int(min(max(math.floor(v), 1), 8)))
    if op == O.SOLARIZE:
        return E.solarize(x, v / 256.0)
    if op == O.SOLARIZE_ADD:
        return E.solarize(x, 0.5, v / 255.0)
    if op == O.COLOR:
        return E.adjust_saturation(x, v)
    if op == O.CONTRAST:
        return E.adjust_contrast(x, v)
    if op == O.BRIGHTNESS:
        return (x * v).clamp(0, 1)  # PIL's brightness scales; kornia's adjust_brightness adds
    if op == O.SHARPNESS:
        return E.sharpness(x, v)
    if op in (O.SHEAR_X, O.SHEAR_Y):
        sh = torch.tensor([[v, 0.0]] if op == O.SHEAR_X else [[0.0, v]], dtype=x.dtype, device=dev)
        return T.shear(x, sh, mode="nearest")
    if op in (O.TRANSLATE_X, O.TRANSLATE_Y):
        t = torch.tensor([[-v, 0.0]] if op == O.TRANSLATE_X else [[0.0, -v]], dtype=x.dtype, device=dev)
        return T.translate(x, t, mode="nearest")
    return x


def _kornia(images: torch.Tensor, d: _Draws) -> torch.Tensor:
    import kornia.enhance as E

    b, c, h, w = images.shape
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    ops, vals = d.chains.ops.tolist(), d.values.tolist()
    crop, flip, cut = d.pipe.crop.tolist(), d.pipe.flip.tolist(), d.pipe.cutout.tolist()
    mean, std = MEAN.to(images.device), STD.to(images.device)
    for i in range(b):
        x = images[i:i + 1].float() / 255.0
        dy, dx = crop[i]
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))[..., 4 + dy:4 + dy + h, 4 + dx:4 + dx + w]
        if flip[i]:
            x = x.flip(-1)
        for op, v in zip(ops[i], vals[i]):
            if op >= 0:
                x = _kornia_op(x, op, v)
        y1, y2, x1, x2 = cut[i]
        x = x.clone()
        x[..., y1:y2, x1:x2] = 0.0
        out[i:i + 1] = E.normalize(x, mean, std)
    return out


def _kornia_available() -> Optional[str]:
    try:
        import kornia  # noqa: F401
    except ImportError as exc:  # optional peer
        return f"kornia not installed ({exc})"
    return None


# ----------------------------------------------------------------------------- cases


def _verify(fast_out, other, name, level: float = 0.0):
    """CPU: exactly equal. CUDA (``level`` = one intensity level in output units): the device's
    sin/cos may round differently in rare pixels, so the acceptance bar is within one level on
    >= 99% of the values."""
    if name == "reference" or name.startswith("fastorals"):
        a, b = fast_out.cpu(), other.cpu()
        if fast_out.device.type == "cpu" or level == 0.0:
            assert torch.equal(a, b), f"{name} differs from the fast path"
        else:
            close = ((a.double() - b.double()).abs() <= level * 1.001).double().mean().item()
            assert a.shape == b.shape and close >= 0.99, f"{name}: only {close:.4f} within one level"
    else:  # kornia: different pixel semantics, same shapes
        assert other.shape == fast_out.shape and other.dtype == fast_out.dtype, name


def _fast(aug, images, strengths, seed, threads: Optional[int] = None):
    def run():
        with _torch_threads(threads):
            return aug(images, strengths, torch.Generator().manual_seed(seed))

    return run


def _no_graphs(run):
    """``run`` with the Triton op launching its kernels one by one (no CUDA graph replay)."""
    from fastorals.augment import triton as T

    def call():
        with T._GRAPHS.disabled():
            return run()

    return call


def cases(mode: str, device: str):
    plan = {
        "smoke": [(32, 16, (0, 2))],
        "quick": [(32, 128, (0, 1, 2, 5, 10)), (224, 8, (0, 2, 5, 10))],
        "full": [(32, 128, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)), (224, 16, (0, 1, 2, 3, 5, 7, 10))],
    }[mode]
    kornia_missing = _kornia_available()
    aug = augment.BatchAugment.cifar(cutout=16)
    level = 1.0 / (255.0 * min(aug.std))  # one intensity level after normalize
    verify = functools.partial(_verify, level=level)
    if device == "cuda" and mode != "smoke":  # also a full ImageNet-sized batch: host costs amortized
        plan = [*plan, (224, 32, (0, 10), "-b256")]
    for size, batch, levels, *suffix in plan:
        if device == "cuda":
            batch = batch * 8
        images = _images(batch, size).to(device)
        images_cpu = images.cpu()
        for n in levels:
            strengths = torch.full((batch,), n, dtype=torch.int64)
            seed = 1000 + n
            d = _Draws(aug, images.cpu(), strengths, seed)
            fast = {"fastorals": _fast(aug, images, strengths, seed)}
            if device == "cpu":
                fast["fastorals-1t"] = _fast(aug, images, strengths, seed, threads=1)
            else:  # the same calls with every kernel launched from the host (no graph replay)
                fast["fastorals-nograph"] = _no_graphs(fast["fastorals"])
            peers = {}
            skip = {}
            if kornia_missing:
                skip["kornia"] = kornia_missing
            peers["kornia"] = (lambda im=images, dd=d: _kornia(im, dd))
            ref = (lambda im=images_cpu, dd=d: _reference(im, dd)) if device == "cpu" or size == 32 else None
            yield Case(
                op="augment_chain", name=f"{size}px-{n}ops{''.join(suffix)}", shape=f"{batch}x3x{size}x{size}", dtype="uint8",
                device=device, fast=fast, reference=ref, peers=peers,
                backend={"fastorals": "cpp" if device == "cpu" else "triton", "fastorals-1t": "cpp",
                         "fastorals-nograph": "triton"},
                bytes=images.numel() * 5.0,  # uint8 in, float32 out
                verify=verify, skip=skip, max_time_s=3.0 if size == 224 else 2.0,
                note=f"per-sample chains of {n} ops at level {n}; crop 4, flip, cutout 16, normalize",
            )


    if device == "cpu" and mode != "smoke":
        yield from _single_op_cases(8)


def _verify_single(fast_out, other, name):
    if name == "reference":  # PIL images, converted only here
        other = torch.stack([reference.from_pil(im) for im in other])
    _verify(fast_out, other, name)


def _on_one_thread(fn):
    def run():
        with _torch_threads(1):
            return fn()

    return run


def _single_op_cases(batch: int, size: int = 224):
    """Each op alone on 224 px RGB images, one thread: the kernel (load, op, uint8 store into a new
    tensor) against Pillow's call on images already converted to PIL (conversions not timed), at
    the op's strongest monotone value; "none" times the kernel's load and store alone (against
    ``Image.copy``), so an op's own cost is its row minus that one."""
    images = _images(batch, size)
    pil = [reference.to_pil(images[i]) for i in range(batch)]
    # each op's value at the top level, from the sampler's own table (monotone mode, this size)
    top = 10
    tab = augment_api._chain_table(None, "monotone", None, (size, size), top, 30.0, torch.device("cpu"))
    strongest = tab.magnitudes(torch.full((O.NUM_OPS,), float(top), dtype=torch.float64), torch.arange(O.NUM_OPS))
    for op in [O.NONE, *range(O.NUM_OPS)]:  # NONE: the kernel's load and store alone, against Image.copy
        name = O.OP_NAMES[op] if op >= 0 else "none"
        v = float(strongest[op]) if op >= 0 else 0.0
        ops = torch.full((batch, 1), op)
        mags = torch.full((batch, 1), v)
        fast = _on_one_thread(lambda o=ops, m=mags: augment.apply_chains(images, o, m, out_dtype=torch.uint8,
                                                                         validate=False))
        if op == O.NONE:
            ref = _on_one_thread(lambda: [im.copy() for im in pil])
        else:
            ref = _on_one_thread(lambda o=op, vv=v: [reference.apply_op(im, o, vv) for im in pil])
        yield Case(
            op="single_op", name=f"{size}px-{name}", shape=f"{batch}x3x{size}x{size}", dtype="uint8", device="cpu",
            fast={"fastorals-1t": fast}, reference=ref, backend="cpp", bytes=images.numel() * 2.0,
            verify=_verify_single, max_time_s=1.0, note=f"{name}({v:g}) alone, one thread; Pillow without its PIL conversions",
        )


SUITE = Suite("augment", cases, "per-sample augmentation chains: fused kernel vs per-image PIL vs kornia loop")
