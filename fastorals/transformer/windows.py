"""Measure a sliding-window policy against a full recompute of the window."""

from __future__ import annotations

import torch

from .model import GPT

__all__ = ["window_error"]


@torch.no_grad()
def window_error(model: GPT, x: torch.Tensor, max_len: int, slide: int, window: str = "shift") -> torch.Tensor:
    """Per-step error of KV-cache decoding with a window policy against recomputing the window.

    Feeds ``x`` one token per step to ``model.step`` with a cache of capacity ``max_len`` and the
    given policy, and at every step compares the new token's output with ``model(window)``, the
    full recompute over the tokens the cache holds (positions from 0). ``"reprefill"`` gives
    zeros up to floating point; ``"shift"`` (rotary positions) measures the approximation.

    Args:
        model: a :class:`GPT` (evaluated in eval mode semantics; no dropout).
        x: ``(B, N)`` token ids or ``(B, N, F)`` features; all sequences advance together.
        max_len: cache capacity (the window).
        slide: tokens dropped when the window is full.
        window: "shift" or "reprefill".
    Returns:
        ``(N,)`` max absolute difference over the batch and output features at each step.

    Example:
        >>> err = window_error(model, torch.randn(8, 2000, 12), max_len=240, slide=60)
        >>> err.max(), err[240:].mean()
    """
    if window not in ("shift", "reprefill"):
        raise ValueError(f"window_error: window must be 'shift' or 'reprefill', got {window!r}")
    was_training = model.training
    model.eval()
    try:
        B, N = x.shape[:2]
        cache = model.make_cache(B, max_len, window=window, slide=slide, device=x.device)
        errs = torch.zeros(N, dtype=torch.float64)
        for t in range(N):
            out = model.step(x[:, t : t + 1], cache)[:, 0]
            L = int(cache.lens[0])
            ref = model(x[:, t + 1 - L : t + 1])[:, -1]
            errs[t] = (out - ref).abs().max().double()
        return errs
    finally:
        model.train(was_training)
