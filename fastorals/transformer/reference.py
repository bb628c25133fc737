"""Reference attention: the obvious math, the oracle of every test and the last-resort fallback.

Semantics shared by every attention path of :mod:`fastorals.transformer`:

* ``q``: ``(B, H, Lq, D)``, ``k`` and ``v``: ``(B, H, Lk, D)``.
* ``kv_lens[b]`` (default ``Lk``): keys ``j >= kv_lens[b]`` are padding and never attended.
* ``q_lens[b]`` (default ``Lq``): query rows ``i >= q_lens[b]`` are padding; their output is 0.
* Causal masking is aligned to the **lower right**: query ``i`` of sequence ``b`` is the token at
  position ``kv_lens[b] - q_lens[b] + i`` of the key sequence and attends to keys
  ``j <= i + kv_lens[b] - q_lens[b]``. With ``Lq == Lk`` and no lengths this is the usual causal
  mask; with fewer queries than keys (new tokens against a cache) the queries are the *last*
  tokens. (``torch.nn.functional.scaled_dot_product_attention(is_causal=True)`` aligns to the
  upper left instead when ``Lq != Lk``.)
* A query row that sees no key at all (e.g. causal with ``q_lens > kv_lens``) outputs 0 and has
  log-sum-exp ``-inf``.
* Dropout (``keep`` mask given): probabilities are multiplied by ``keep / (1 - dropout_p)`` after
  the softmax, before the product with ``v``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["attention", "attention_lse", "attention_mask"]


def attention_mask(
    batch: int,
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    q_lens: Optional[torch.Tensor] = None,
    kv_lens: Optional[torch.Tensor] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Boolean ``(B, 1, Lq, Lk)`` mask, True where query ``i`` may attend key ``j``.

    Args:
        batch: B.
        q_len: Lq (padded query length).
        k_len: Lk (padded key length).
        causal: lower-right aligned causal masking.
        q_lens: ``(B,)`` valid queries per sequence, or None for all ``Lq``.
        kv_lens: ``(B,)`` valid keys per sequence, or None for all ``Lk``.
        device: device of the mask.
    Returns:
        ``(B, 1, Lq, Lk)`` bool tensor.
    """
    if device is None:
        device = q_lens.device if q_lens is not None else (kv_lens.device if kv_lens is not None else None)
    ql = (q_lens.to(device=device, dtype=torch.long) if q_lens is not None
          else torch.full((batch,), q_len, dtype=torch.long, device=device))
    kl = (kv_lens.to(device=device, dtype=torch.long) if kv_lens is not None
          else torch.full((batch,), k_len, dtype=torch.long, device=device))
    i = torch.arange(q_len, device=device).view(1, q_len, 1)
    j = torch.arange(k_len, device=device).view(1, 1, k_len)
    ok = (i < ql.view(-1, 1, 1)) & (j < kl.view(-1, 1, 1))
    if causal:
        ok = ok & (j <= i + (kl - ql).view(-1, 1, 1))
    return ok.unsqueeze(1)


def attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    q_lens: Optional[torch.Tensor] = None,
    kv_lens: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    keep: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and the natural-log log-sum-exp of the scaled scores.

    Args:
        q: ``(B, H, Lq, D)``.
        k: ``(B, H, Lk, D)``.
        v: ``(B, H, Lk, D)``.
        causal: lower-right aligned causal mask (see the module docstring).
        softmax_scale: defaults to ``1 / sqrt(D)``.
        q_lens: ``(B,)`` valid query rows, or None.
        kv_lens: ``(B,)`` valid keys, or None.
        dropout_p: dropout probability used to rescale kept probabilities.
        keep: ``(B, H, Lq, Lk)`` bool dropout keep-mask, or None for no dropout.
    Returns:
        ``out`` ``(B, H, Lq, D)`` in ``q``'s dtype and ``lse`` ``(B, H, Lq)`` (float32, or float64
        for float64 inputs).
    """
    B, _H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if softmax_scale is None else float(softmax_scale)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(cdt), k.to(cdt).transpose(-1, -2)) * scale
    mask = attention_mask(B, Lq, Lk, causal=causal, q_lens=q_lens, kv_lens=kv_lens, device=q.device)
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = torch.isneginf(lse)
    p = torch.exp(s - torch.where(empty, torch.zeros_like(lse), lse).unsqueeze(-1))
    p = p.masked_fill(~mask, 0.0)
    if keep is not None:
        p = p * keep.to(cdt) / (1.0 - dropout_p)
    out = torch.matmul(p, v.to(cdt))
    return out.to(q.dtype), lse


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    q_lens: Optional[torch.Tensor] = None,
    kv_lens: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reference attention (see :func:`attention_lse`); returns ``(B, H, Lq, D)``.

    Example:
        >>> q = k = v = torch.randn(2, 4, 16, 32, dtype=torch.float64)
        >>> out = attention(q, k, v, causal=True)
    """
    return attention_lse(q, k, v, causal=causal, softmax_scale=softmax_scale, q_lens=q_lens,
                         kv_lens=kv_lens, dropout_p=dropout_p, keep=keep)[0]
