"""Fixed, hand-designed binary label encodings (the BEL baselines) and their properties.

Every function returns a ``[Q, M]`` tensor of 0/1 values: row q is the code of level q.

===========  ====================  ==========================================================
code         bits M for Q levels   property
===========  ====================  ==========================================================
unary        Q - 1                 bit k is 1 iff q > k (ordinal / thermometer code)
johnson      ceil(Q / 2)           Johnson counter: neighbours differ in one bit, 2 transitions/bit
bcd          4 * digits(Q - 1)     binary-coded decimal of the level index (4 bits per digit)
binary       ceil(log2 Q)          plain base-2 of the level index (dense, many transitions)
===========  ====================  ==========================================================

Example:
    >>> from fastorals.label_encoding import make_code
    >>> make_code("johnson", 6)
    tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.uint8)
"""

from __future__ import annotations

import math

import torch

CODES = ("unary", "johnson", "bcd", "binary")


def _check_q(num_levels: int) -> int:
    if isinstance(num_levels, bool) or not isinstance(num_levels, int):
        raise TypeError(f"num_levels: expected an int, got {type(num_levels).__name__}")
    if num_levels < 2:
        raise ValueError(f"num_levels: expected at least 2 levels, got {num_levels}")
    return num_levels


def unary_code(num_levels: int) -> torch.Tensor:
    """Unary (thermometer) code: [Q, Q-1], bit k of level q is 1 iff q > k."""
    q = torch.arange(_check_q(num_levels))
    k = torch.arange(num_levels - 1)
    return (q[:, None] > k[None, :]).to(torch.uint8)


def johnson_code(num_levels: int) -> torch.Tensor:
    """Johnson-counter code: [Q, ceil(Q/2)]; consecutive levels differ in exactly one bit."""
    m = (_check_q(num_levels) + 1) // 2
    q = torch.arange(num_levels)[:, None]
    k = torch.arange(m)[None, :]
    first_half = (q <= m) & (k < q)
    second_half = (q > m) & (k >= q - m)
    return (first_half | second_half).to(torch.uint8)


def bcd_code(num_levels: int) -> torch.Tensor:
    """Binary-coded decimal of the level index: [Q, 4 * number of decimal digits of Q - 1]."""
    digits = len(str(_check_q(num_levels) - 1))
    q = torch.arange(num_levels)
    bits = []
    for d in reversed(range(digits)):  # most significant digit first
        digit = (q // 10**d) % 10
        bits += [(digit >> b) & 1 for b in (3, 2, 1, 0)]
    return torch.stack(bits, dim=1).to(torch.uint8)


def binary_code(num_levels: int) -> torch.Tensor:
    """Plain base-2 code of the level index: [Q, ceil(log2 Q)] (most significant bit first)."""
    m = max(1, math.ceil(math.log2(_check_q(num_levels))))
    q = torch.arange(num_levels)
    return torch.stack([(q >> b) & 1 for b in reversed(range(m))], dim=1).to(torch.uint8)


def make_code(name: str, num_levels: int) -> torch.Tensor:
    """The fixed code ``name`` ("unary", "johnson", "bcd", "binary") for ``num_levels`` levels: [Q, M] uint8."""
    builders = {"unary": unary_code, "johnson": johnson_code, "bcd": bcd_code, "binary": binary_code}
    if name not in builders:
        raise ValueError(f"code: expected one of {', '.join(CODES)}, got {name!r}")
    return builders[name](num_levels)


def bit_transitions(codes: torch.Tensor) -> torch.Tensor:
    """Number of 0/1 flips of every bit along the level axis.  codes [Q, M] -> [M] int64."""
    c = codes.to(torch.int64)
    return (c[1:] != c[:-1]).sum(dim=0)


def min_hamming_distance(codes: torch.Tensor) -> int:
    """Smallest Hamming distance between the codes of two different levels (error correction)."""
    c = codes.to(torch.float32)
    d = torch.cdist(c, c, p=1)
    d.fill_diagonal_(float("inf"))
    return int(d.min().item())
