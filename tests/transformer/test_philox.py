"""The attention-dropout generator is Philox4x32-10: Random123's known-answer vectors.

Runs where the Triton kernel tests run (CUDA, or ``TRITON_INTERPRET=1`` on the CPU).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from fastorals.transformer.triton import _philox  # noqa: E402

pytestmark = pytest.mark.interpret


@triton.jit
def _philox_kernel(SEED, C, OUT, N: tl.constexpr):
    i = tl.arange(0, N)
    seed = tl.load(SEED + i)
    r = _philox(seed, tl.load(C + i * 4).to(tl.uint32), tl.load(C + i * 4 + 1).to(tl.uint32),
                tl.load(C + i * 4 + 2).to(tl.uint32), tl.load(C + i * 4 + 3).to(tl.uint32))
    tl.store(OUT + i, r.to(tl.int64))


# (c0, c1, c2, c3, key0, key1) -> first output word (Random123 kat_vectors, philox4x32 10 rounds)
KAT = [
    ((0, 0, 0, 0, 0, 0), 0x6627E8D5),
    ((0xFFFFFFFF,) * 6, 0x408F276D),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0), 0xD16CFE09),
    ((0, 0, 0, 0, 0, 0), 0x6627E8D5),  # padding to a power of two
]


def test_philox_known_answers(triton_device):
    seeds = [(k[5] << 32) | k[4] for k, _ in KAT]
    seed = torch.tensor([s - (1 << 64) if s >= 1 << 63 else s for s in seeds], dtype=torch.int64)
    ctr = torch.tensor([list(k[:4]) for k, _ in KAT], dtype=torch.int64)
    out = torch.empty(len(KAT), dtype=torch.int64, device=triton_device)
    _philox_kernel[(1,)](seed.to(triton_device), ctr.to(triton_device), out, N=len(KAT))
    assert out.cpu().tolist() == [w for _, w in KAT]
