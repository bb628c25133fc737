"""Triton kernel of the OPS search (GPU; CPU under ``TRITON_INTERPRET=1``).

``_class_sums_kernel``: grid (class, pixel block, split). Each program walks the images of one
class (a slice of them when split, so small class counts still fill the GPU), loads a
[C, BLOCK] tile of each and accumulates the exact integer sums S1 and S2 (int64; float images
are quantized to floor(x * 2^20) in the kernel, uint8 used as is). The splits are added in a
fixed order afterwards, so the result is deterministic and equal to the CPU kernels'.

The 2^C-way score is computed from these sums by the shared PyTorch function
(``ops.scores_from_sums``): elementwise and tiny, it gives bit-identical scores on every
backend, whereas a fused epilogue could contract multiply-subtract into FMA and change the
last bits (and with them a tie).

Registered as ``fastorals::onepixel_class_sums_triton`` (``triton_op``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .pattern import FLOAT_SCALE


@triton.jit
def _class_sums_kernel(
    x_ptr, order_ptr, offsets_ptr, s1_ptr, s2_ptr,
    P, K, per_split, scale,
    C: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr, IS_U8: tl.constexpr,
):
    k = tl.program_id(0)
    pb = tl.program_id(1)
    sp = tl.program_id(2)
    p = pb * BLOCK + tl.arange(0, BLOCK)
    c = tl.arange(0, C_PAD)
    mask = (c[:, None] < C) & (p[None, :] < P)
    tile = c[:, None] * P + p[None, :]
    start = tl.load(offsets_ptr + k)
    end = tl.load(offsets_ptr + k + 1)
    lo = start + sp * per_split
    hi = tl.minimum(end, lo + per_split)
    acc1 = tl.zeros((C_PAD, BLOCK), dtype=tl.int64)
    acc2 = tl.zeros((C_PAD, BLOCK), dtype=tl.int64)
    for i in range(lo, hi):
        n = tl.load(order_ptr + i).to(tl.int64)
        v = tl.load(x_ptr + n * C * P + tile, mask=mask, other=0)
        if IS_U8:
            q = v.to(tl.int64)
        else:
            q = tl.floor(v.to(tl.float64) * scale).to(tl.int64)
        acc1 += q
        acc2 += q * q
    out = ((sp * K + k) * C).to(tl.int64) * P + tile
    tl.store(s1_ptr + out, acc1, mask=mask)
    tl.store(s2_ptr + out, acc2, mask=mask)


def _split_for(K: int, blocks: int, max_per_class: int) -> int:
    target = 1024  # programs: enough to fill a large GPU
    return max(1, min(64, -(-target // max(K * blocks, 1)), max_per_class))


@triton_op("fastorals::onepixel_class_sums_triton", mutates_args=())
def class_sums_triton(images: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, num_classes: int,
                      max_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact sums (s1, s2), int64 [K, C, H*W], of validated images (uint8, or float32/float64 in [0, 1]).

    ``max_per_class`` is ``int(counts.max())``, read by the caller: the op itself reads nothing
    back to the host, so it traces under ``torch.compile`` and fake tensors."""
    images = images.contiguous()
    N, C, H, W = images.shape
    P = H * W
    K = num_classes
    order = torch.argsort(labels, stable=True).to(torch.int64)
    offsets = torch.zeros(K + 1, dtype=torch.int64, device=images.device)
    offsets[1:] = torch.cumsum(counts.to(torch.int64), 0)
    is_u8 = images.dtype == torch.uint8
    BLOCK = 128 if P >= 128 else triton.next_power_of_2(max(P, 16))
    blocks = triton.cdiv(P, BLOCK)
    max_per_class = max(int(max_per_class), 1)
    split = _split_for(K, blocks, max_per_class)
    per_split = -(-max_per_class // split)
    s1 = torch.empty(split, K, C, P, dtype=torch.int64, device=images.device)
    s2 = torch.empty_like(s1)
    wrap_triton(_class_sums_kernel)[(K, blocks, split)](
        images, order, offsets, s1, s2, P, K, per_split, float(FLOAT_SCALE),
        C=C, C_PAD=triton.next_power_of_2(C), BLOCK=BLOCK, IS_U8=is_u8,
    )
    return s1.sum(0), s2.sum(0)
