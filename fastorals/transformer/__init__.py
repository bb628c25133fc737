"""Shared causal transformer: Triton flash attention, KV-cache decoding, a GPT module.

Used by :mod:`fastorals.behavior` (C-BeT) and :mod:`fastorals.distillation` (Algorithm
Distillation). Public API:

* :func:`flash_attention` ``(q, k, v, causal=True, softmax_scale=None, dropout_p=0.0, *, q_lens,
  kv_lens)``: fused attention, Triton forward/backward on CUDA (op
  ``torch.ops.fastorals.transformer_flash_attn_fwd_triton``), SDPA on CPU. Lower-right causal
  alignment, per-sequence lengths, Philox attention dropout.
* :func:`decode_attention` ``(q, k_cache, v_cache, kv_lens, *, q_lens)``: a few new tokens per
  sequence against a KV cache (Triton decode kernel on CUDA).
* :class:`KVCache`: keys/values of many independent sequences; per-sequence lengths, reset of
  selected sequences, sliding-window policies ("error", "reprefill", "shift").
* :class:`GPT`, :class:`GPTConfig`: pre-norm causal transformer over token ids, continuous
  features or pre-embedded vectors; learned, rotary or no positions; ``forward`` for training,
  ``step`` for incremental decoding with a :class:`KVCache`.
* :func:`window_error`: per-step error of a sliding-window policy against full recompute.
* :mod:`fastorals.transformer.reference`: the obvious math, the oracle of the tests.

Example:
    >>> import torch
    >>> from fastorals.transformer import GPT
    >>> model = GPT(input_dim=12, output_dim=5, n_layer=4, n_head=4, n_embd=256, block_size=960).eval()
    >>> cache = model.make_cache(batch=256, window="reprefill", slide=80)
    >>> out = model.step(torch.randn(256, 1, 12), cache)   # (256, 1, 5)
    >>> cache.reset(torch.tensor([3, 17]))                 # two environments start a new task
"""

from . import reference
from .attention import _preload_triton, decode_attention, flash_attention
from .cache import WINDOW_POLICIES, KVCache
from .model import GPT, Block, CausalSelfAttention, GPTConfig, Rotary, apply_rotary
from .windows import window_error

__all__ = [
    "GPT",
    "WINDOW_POLICIES",
    "Block",
    "CausalSelfAttention",
    "GPTConfig",
    "KVCache",
    "Rotary",
    "apply_rotary",
    "decode_attention",
    "flash_attention",
    "reference",
    "window_error",
]

_preload_triton()
