"""One-Pixel Shortcut search: fastorals vs its reference vs the official loop structure.

The official search loops in Python over classes, positions and colours, calling NumPy for
the mean and std of every (position, colour) deviation (~82k calls on CIFAR-10). It is
re-created here (our code, same loop structure) as the peer a user would otherwise run.
"""

from __future__ import annotations

import numpy as np
import torch

import fastorals
from benchmarks.harness import Case, Suite
from fastorals.onepixel import ops, search_shortcut


def official_loop_search(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[tuple[int, int, int]]:
    """The official loop structure: per class, per position, per colour, np.mean / np.std."""
    x = images.numpy().astype(np.float32) / 255.0 if images.dtype == torch.uint8 else images.numpy()
    y = labels.numpy()
    C, H, W = x.shape[1:]
    colours = [np.array([(j >> (C - 1 - c)) & 1 for c in range(C)], dtype=np.float32) for j in range(2**C)]
    used: set[tuple[int, int, int]] = set()
    out = []
    for k in range(num_classes):
        xk = x[y == k]
        best, best_key = -1.0, None
        for h in range(H):
            for w in range(W):
                pix = xk[:, :, h, w]
                for j, col in enumerate(colours):
                    if (h, w, j) in used:
                        continue
                    d = np.abs(pix - col)
                    score = np.mean(d) / np.std(d)
                    if score > best:
                        best, best_key = score, (h, w, j)
        used.add(best_key)
        out.append(best_key)
    return out


def _keys(p) -> list[tuple[int, int, int]]:
    C = p.image_shape[0]
    keys = []
    for k in range(p.num_classes):
        j = int(sum(int(v) << (C - 1 - c) for c, v in enumerate(p.colors[k, 0].tolist())))
        keys.append((int(p.positions[k, 0, 0]), int(p.positions[k, 0, 1]), j))
    return keys


def _verify(fast_out, other, name):
    if name == "official-loop":
        assert _keys(fast_out) == other, f"official loop picked {other}, fastorals {_keys(fast_out)}"
    else:
        assert torch.equal(fast_out.positions, other.positions) and torch.equal(fast_out.colors, other.colors), name


def _verify_sums(fast_out, other, name):
    assert all(torch.equal(a, b) for a, b in zip(fast_out, other)), f"class sums differ from {name}"


def _with(backend, x, y):
    def run():
        with fastorals.use_backend(backend):
            return search_shortcut(x, y)

    return run


def _data(n, size, k, seed=0):
    # random-looking but structured images: the procedural set at size 32, uniform noise above
    if size <= 64:
        x, y = fastorals.data.synthetic_images(n, num_classes=k, size=size, seed=seed)
    else:
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        y = torch.arange(n) % k
    return x, y


def cases(mode: str, device: str):
    sizes = {
        "smoke": [(600, 16, 10, True), (40, 64, 4, False)],
        "quick": [(50_000, 32, 10, True), (500, 224, 10, False)],
        "full": [(50_000, 32, 10, True), (2_000, 224, 10, True)],
    }[mode]
    for n, size, k, official in sizes:
        x, y = _data(n, size, k)
        shape = f"{n}x3x{size}x{size}"
        if device == "cuda":
            xc, yc = x.cuda(), y.cuda()
            yield Case(op="search_shortcut", shape=shape, dtype="uint8", device="cuda",
                       fast={"fastorals": _with("triton", xc, yc)}, reference=_with("reference", x, y),
                       peers={"fastorals-torch": _with("torch", xc, yc)}, backend="triton", bytes=x.numel(),
                       verify=_verify, max_time_s=3.0)
            continue
        fast = {"fastorals": _with("cpp", x, y)} if fastorals._ext.HAS_EXT else {}
        fast["fastorals-torch"] = _with("torch", x, y)
        backends = {"fastorals": "cpp", "fastorals-torch": "torch"}
        peers = {"official-loop": (lambda x=x, y=y, k=k: official_loop_search(x, y, k))}
        skip = {} if official else {"official-loop": "Python loop over H*W*8 (position, colour) pairs per class: minutes"}
        yield Case(op="search_shortcut", shape=shape, dtype="uint8", device="cpu", fast=fast,
                   reference=_with("reference", x, y), peers=peers, backend=backends,
                   bytes=x.numel(), verify=_verify, skip=skip, max_time_s=3.0)
        if fastorals._ext.HAS_EXT:
            # the reduction pass alone (the bandwidth goal): one read of the data set
            yield Case(op="class_sums", shape=shape, dtype="uint8", device="cpu",
                       fast={"fastorals": lambda x=x, y=y, k=k: ops.class_sums_cpp(x, y, k)},
                       reference=lambda x=x, y=y, k=k: ops.class_sums_torch(x, y, k), backend="cpp",
                       bytes=x.numel() + y.numel() * 8, verify=_verify_sums, max_time_s=3.0,
                       note="reduction pass only: exact per-class S1, S2 (score and argmax excluded)")
        if size <= 64:
            xf = x.float() / 255
            ff = {"fastorals": _with("cpp", xf, y)} if fastorals._ext.HAS_EXT else {}
            ff["fastorals-torch"] = _with("torch", xf, y)
            yield Case(op="search_shortcut", shape=shape, dtype="float32", device="cpu", fast=ff,
                       reference=_with("reference", xf, y), backend=backends,
                       bytes=xf.numel() * 4, verify=_verify, max_time_s=3.0)


SUITE = Suite("onepixel", cases, "OPS search: fast vs reference vs the official per-(position, colour) NumPy loop")
