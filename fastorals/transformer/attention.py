"""Functional attention API: :func:`flash_attention` (training) and :func:`decode_attention` (KV cache).

Backends (see :func:`fastorals._ext.select_backend`):

``"triton"``     the Triton kernels of :mod:`fastorals.transformer.triton` (CUDA; CPU only under
                 ``TRITON_INTERPRET=1`` and only when asked for explicitly)
``"torch"``      ``torch.nn.functional.scaled_dot_product_attention`` with an explicit lower-right
                 causal / length mask where needed (the CPU path)
``"reference"``  :mod:`fastorals.transformer.reference` (materialises the score matrix)
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Optional

import torch
import torch.nn.functional as F

from .._ext import BackendUnavailableError, ext_topic, has_triton, requested_backend, select_backend
from . import reference as _ref

__all__ = ["decode_attention", "flash_attention"]

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
CPP_MAX_T = 16  # the C++ decode kernel keeps a (T, L) score block per thread; longer blocks use SDPA
_TRITON: Optional[ModuleType] = None


def _triton() -> ModuleType:
    """The Triton kernels module (imports triton on first use)."""
    global _TRITON
    if _TRITON is None:
        from . import triton as mod

        _TRITON = mod
    return _TRITON


def _preload_triton() -> None:
    """Register the Triton ops at import time on CUDA machines, so ``torch.compile`` finds them."""
    if torch.cuda.is_available() and has_triton():
        try:
            _triton()
        except Exception:  # a broken triton install: the torch path still works
            pass


# ----------------------------------------------------------------------------- argument checks


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, name: str, cache_dtype: bool = False) -> None:
    """``cache_dtype``: ``k``/``v`` are a cache that may be stored in a lower precision than a
    float32 ``q`` (as :meth:`GPT.step` uses it)."""
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: {arg} must be 4-D (batch, heads, seq_len, head_dim), got shape {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name}: {arg} must be a floating point tensor, got dtype {t.dtype}")
    mixed = cache_dtype and q.dtype == torch.float32 and k.dtype == v.dtype and k.dtype in (torch.bfloat16,
                                                                                          torch.float16)
    if not (q.dtype == k.dtype == v.dtype) and not mixed:
        also = " (or float32 q with a bfloat16/float16 cache)" if cache_dtype else ""
        raise TypeError(f"{name}: q, k, v must share one dtype{also}, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{name}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{name}: head dim mismatch: q has head_dim {q.shape[-1]}, k and v have {k.shape[-1]}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"{name}: batch mismatch: q has batch {q.shape[0]}, k and v have {k.shape[0]}")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"{name}: heads mismatch: q has {q.shape[1]} heads, k and v have {k.shape[1]}")
    if q.shape[-1] == 0:
        raise ValueError(f"{name}: head_dim must be >= 1, got 0")


def _check_lens(lens: Optional[torch.Tensor], arg: str, batch: int, limit: int, device: torch.device,
                name: str, check_values: bool) -> Optional[torch.Tensor]:
    if lens is None:
        return None
    if not isinstance(lens, torch.Tensor):
        lens = torch.as_tensor(lens, device=device)
    if lens.dtype.is_floating_point or lens.dtype == torch.bool or lens.is_complex():
        raise TypeError(f"{name}: {arg} must be an integer tensor of lengths, got dtype {lens.dtype}")
    if lens.dim() != 1 or lens.shape[0] != batch:
        raise ValueError(f"{name}: {arg} must have shape ({batch},) (one length per sequence of the batch), "
                         f"got {tuple(lens.shape)}")
    if lens.device != device:
        raise ValueError(f"{name}: {arg} must be on {device} like q, got {lens.device}")
    if check_values and lens.numel() and not torch.compiler.is_compiling():
        lo, hi = int(lens.min()), int(lens.max())
        if lo < 0 or hi > limit:
            raise ValueError(f"{name}: {arg} must lie in [0, {limit}] (the padded length), got values in [{lo}, {hi}]")
    return lens.to(torch.int32) if lens.dtype != torch.int32 else lens


def _scale(softmax_scale: Optional[float], head_dim: int, name: str) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    s = float(softmax_scale)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"{name}: softmax_scale must be a positive finite number, got {softmax_scale}")
    return s


# ----------------------------------------------------------------------------- torch (SDPA) path


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
          q_lens: Optional[torch.Tensor], kv_lens: Optional[torch.Tensor], dropout_p: float) -> torch.Tensor:
    """SDPA with the module's semantics (lower-right causal, lengths, empty rows give 0)."""
    B, _, Lq, _ = q.shape
    Lk = k.shape[2]
    if q_lens is None and kv_lens is None and (not causal or Lq == Lk):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    mask = _ref.attention_mask(B, Lq, Lk, causal=causal, q_lens=q_lens, kv_lens=kv_lens, device=q.device)
    has_key = mask.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, dropout_p=dropout_p, scale=scale)
    return out.masked_fill(~has_key, 0.0)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
               q_lens: Optional[torch.Tensor], kv_lens: Optional[torch.Tensor], dropout_p: float) -> torch.Tensor:
    keep = None
    if dropout_p > 0:
        B, H, Lq, _ = q.shape
        keep = torch.rand((B, H, Lq, k.shape[2]), device=q.device) >= dropout_p
    return _ref.attention(q, k, v, causal=causal, softmax_scale=scale, q_lens=q_lens, kv_lens=kv_lens,
                          dropout_p=dropout_p, keep=keep)


# ----------------------------------------------------------------------------- public API


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    dropout_p: float = 0.0,
    *,
    q_lens: Optional[torch.Tensor] = None,
    kv_lens: Optional[torch.Tensor] = None,
    seed: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Scaled dot-product attention, fused (Triton flash attention on CUDA, SDPA on CPU).

    Causal masking is aligned to the lower right (query ``i`` sees keys
    ``j <= i + kv_len - q_len``), unlike SDPA's ``is_causal`` when ``Lq != Lk``; see
    :mod:`fastorals.transformer.reference` for the exact semantics of lengths and empty rows.
    Differentiable with respect to ``q``, ``k``, ``v``. Inputs may be non-contiguous (e.g. views
    of a fused QKV projection): the kernels take strides.

    Args:
        q: ``(B, H, Lq, D)`` queries (float16, bfloat16, float32 or float64).
        k: ``(B, H, Lk, D)`` keys.
        v: ``(B, H, Lk, D)`` values.
        causal: lower-right aligned causal mask.
        softmax_scale: scale of ``q @ k^T``; default ``1 / sqrt(D)``.
        dropout_p: attention dropout probability in ``[0, 1)`` (applied whenever > 0; pass 0 in eval).
        q_lens: ``(B,)`` integer valid query rows per sequence (right padding); padded rows give 0.
        kv_lens: ``(B,)`` integer valid keys per sequence (right padding).
        seed: optional ``(1,)`` int64 tensor on the device: the Philox seed of the Triton dropout
            mask (default: drawn from torch's generator, so ``torch.manual_seed`` reproduces it).
    Returns:
        ``(B, H, Lq, D)`` attention output in ``q``'s dtype.
    Raises:
        ValueError / TypeError: mismatched shapes, dtypes, devices, lengths or parameters.

    Example:
        >>> q, k, v = (torch.randn(8, 4, 128, 64) for _ in range(3))
        >>> out = flash_attention(q, k, v, causal=True)          # (8, 4, 128, 64)
    """
    name = "flash_attention"
    _check_qkv(q, k, v, name)
    B, _H, Lq, D = q.shape
    Lk = k.shape[2]
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name}: dropout_p must be in [0, 1), got {dropout_p}")
    scale = _scale(softmax_scale, D, name)
    q_lens = _check_lens(q_lens, "q_lens", B, Lq, q.device, name, True)
    kv_lens = _check_lens(kv_lens, "kv_lens", B, Lk, q.device, name, True)
    return _flash_attention(q, k, v, bool(causal), scale, dropout_p, q_lens, kv_lens, seed)


def _flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float,
                     dropout_p: float, q_lens: Optional[torch.Tensor], kv_lens: Optional[torch.Tensor],
                     seed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`flash_attention` after argument checks (lengths int32 or None)."""
    if torch.compiler.is_compiling():  # no thread-local / environment lookups inside a traced graph
        backend = "triton" if q.device.type == "cuda" and _TRITON is not None else "torch"
    else:
        backend = select_backend("flash_attention", q.device, ("triton", "torch", "reference"))
    if backend == "triton" and q.dtype not in _TRITON_DTYPES:
        backend = "torch"
    if backend == "triton" and q.dtype == torch.float64 and q.device.type == "cuda":
        backend = "torch"  # tensor cores have no float64 path worth taking; SDPA's math kernel is exact
    if q.shape[2] == 0 or k.shape[2] == 0:
        backend = "reference"  # empty attention: the reference handles it (zeros, graph kept)
    if backend == "triton":
        if dropout_p > 0 and seed is None:
            seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=q.device)
        elif seed is not None:
            if not isinstance(seed, torch.Tensor) or seed.numel() != 1 or seed.dtype != torch.int64:
                raise ValueError("flash_attention: seed must be a one-element int64 tensor")
            seed = seed.reshape(1).to(q.device)
        out, _ = _triton().flash_attn_fwd(q, k, v, q_lens, kv_lens, seed if dropout_p > 0 else None,
                                          causal, scale, dropout_p)
        return out
    if backend == "torch":
        return _sdpa(q, k, v, causal, scale, q_lens, kv_lens, dropout_p)
    return _reference(q, k, v, causal, scale, q_lens, kv_lens, dropout_p)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_lens: torch.Tensor,
    *,
    q_lens: Optional[torch.Tensor] = None,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
) -> torch.Tensor:
    """Attention of a few new tokens per sequence against a KV cache (inference; no dropout).

    The ``T`` new queries of sequence ``b`` are the *last* ``q_lens[b]`` tokens of its
    ``kv_lens[b]`` cached keys (their own keys must already be written to the cache): query ``t``
    sees keys ``j <= kv_lens[b] - q_lens[b] + t`` (lower-right causal alignment). Keys past
    ``kv_lens[b]`` are never read, so sequences of different lengths share one call.

    On CUDA, ``T <= 4`` runs a decode kernel with one program per (sequence, head); longer query
    blocks run the flash-attention forward kernel with per-sequence lengths. On CPU the C++
    decode kernel runs float32 queries against a float32 or bfloat16 cache for ``T <= 16``
    without gradients; other calls run SDPA on the cache prefix up to ``max(kv_lens)``.

    Args:
        q: ``(B, H, T, D)`` queries of the new tokens; the cache's dtype, or float32 with a
            bfloat16/float16 cache.
        k_cache: ``(B, H, L_max, D)`` cached keys (any strides).
        v_cache: ``(B, H, L_max, D)`` cached values.
        kv_lens: ``(B,)`` integer valid cache length per sequence, new tokens included.
        q_lens: ``(B,)`` integer number of valid new tokens per sequence (default ``T``); padded
            query rows give 0.
        causal: lower-right causal masking among the new tokens (False: every new token sees
            the whole valid cache).
        softmax_scale: default ``1 / sqrt(D)``.
    Returns:
        ``(B, H, T, D)`` in ``q``'s dtype.

    Example:
        >>> k_cache = v_cache = torch.randn(256, 4, 960, 64)
        >>> q = torch.randn(256, 4, 1, 64)
        >>> out = decode_attention(q, k_cache, v_cache, kv_lens=torch.full((256,), 500))
    """
    name = "decode_attention"
    _check_qkv(q, k_cache, v_cache, name, cache_dtype=True)
    B, _H, T, D = q.shape
    if kv_lens is None:
        raise ValueError(f"{name}: kv_lens is required (valid cache length per sequence)")
    kv_lens = _check_lens(kv_lens, "kv_lens", B, k_cache.shape[2], q.device, name, True)
    q_lens = _check_lens(q_lens, "q_lens", B, T, q.device, name, True)
    return _decode_attention(q, k_cache, v_cache, kv_lens, q_lens, bool(causal),
                             _scale(softmax_scale, D, name))


class DecodePlan:
    """What every layer's decode attention of one step shares (computed once per step).

    Picks the backend once: "triton" (CUDA kernel), "cpp" (the C++ kernel: CPU, float32
    queries, float32 or bfloat16 cache, ``T <= 16``, no gradient), "torch" (SDPA) or
    "reference". For SDPA it also holds the used cache prefix ``max(kv_lens)`` (one host read)
    and the additive mask (none at all when every sequence has the same length and one new token).
    """

    def __init__(self, kv_lens: torch.Tensor, q_lens: Optional[torch.Tensor], T: int, causal: bool,
                 q_dtype: torch.dtype, cache_dtype: torch.dtype, device: torch.device, requires_grad: bool = False,
                 cache_contiguous: bool = True) -> None:
        backend = select_backend("decode_attention", device, ("triton", "cpp", "torch", "reference"))
        if backend == "triton" and (cache_dtype not in _TRITON_DTYPES
                                    or (cache_dtype == torch.float64 and device.type == "cuda")):
            backend = "torch"
        if backend == "cpp":
            why = None
            if requires_grad:
                why = "gradients requested (the C++ decode kernel is inference-only)"
            elif q_dtype != torch.float32 or cache_dtype not in (torch.float32, torch.bfloat16):
                why = f"q dtype {q_dtype} / cache dtype {cache_dtype} (needs float32 q, float32 or bfloat16 cache)"
            elif T > CPP_MAX_T:
                why = f"{T} new tokens (the C++ decode kernel takes at most {CPP_MAX_T})"
            elif not cache_contiguous:
                why = "a non-contiguous cache"
            elif ext_topic("attention") is None:
                why = "the extension lacks the attention kernels"
            if why is not None:
                if requested_backend() == "cpp":
                    raise BackendUnavailableError(f"decode_attention: backend 'cpp' cannot run this call: {why}")
                backend = "torch"
        self.backend = backend
        self.kv_lens, self.q_lens, self.causal = kv_lens, q_lens, causal
        self.kernel = backend == "cpp" or (backend == "triton" and not requires_grad)
        self.used = 0
        self.mask: Optional[torch.Tensor] = None
        self.empty_rows: Optional[torch.Tensor] = None
        if backend == "cpp":
            self.kv32 = kv_lens.to(torch.int32).contiguous()
            self.q32 = (q_lens.to(torch.int32).contiguous() if q_lens is not None
                        else torch.full_like(self.kv32, T))
            return
        if backend == "reference" or self.kernel:
            return
        dtype = cache_dtype
        B = kv_lens.shape[0]
        lo, hi = (int(kv_lens.min()), int(kv_lens.max())) if B else (0, 0)
        self.used = max(hi, 1)
        if lo == hi and q_lens is None and (T == 1 or not causal) and lo >= 1:
            return  # every new token sees the whole (equal) prefix: no mask
        ok = _ref.attention_mask(B, T, self.used, causal=causal, q_lens=q_lens, kv_lens=kv_lens, device=device)
        has_key = ok.any(-1, keepdim=True)
        if not bool(has_key.all()):
            self.empty_rows = ~has_key
            ok = ok | self.empty_rows
        self.mask = torch.zeros(ok.shape, dtype=dtype, device=device).masked_fill_(~ok, float("-inf"))


def _cpp_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: DecodePlan,
                scale: float) -> torch.Tensor:
    mod = ext_topic("attention")
    q = q.contiguous()
    out = torch.empty(q.shape, dtype=torch.float32)
    if k_cache.dtype == torch.bfloat16:
        mod.decode_bf16(q.numpy(), k_cache.view(torch.int16).numpy(), v_cache.view(torch.int16).numpy(), out.numpy(),
                        plan.kv32.numpy(), plan.q32.numpy(), plan.causal, scale, torch.get_num_threads())
    else:
        mod.decode_f32(q.numpy(), k_cache.numpy(), v_cache.numpy(), out.numpy(), plan.kv32.numpy(),
                       plan.q32.numpy(), plan.causal, scale, torch.get_num_threads())
    return out


def _decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_lens: torch.Tensor,
                      q_lens: Optional[torch.Tensor], causal: bool, scale: float,
                      plan: Optional[DecodePlan] = None) -> torch.Tensor:
    """:func:`decode_attention` after argument checks (lengths int32); ``plan`` is shared across layers.

    ``q`` may be float32 with a lower-precision cache: the C++ kernel reads it as is, the other
    paths cast ``q`` to the cache dtype. Returns ``q``'s dtype.
    """
    if plan is None:
        plan = DecodePlan(kv_lens, q_lens, q.shape[2], causal, q.dtype, k_cache.dtype, q.device,
                          torch.is_grad_enabled() and (q.requires_grad or k_cache.requires_grad
                                                       or v_cache.requires_grad),
                          k_cache.is_contiguous() and v_cache.is_contiguous())
    if plan.backend == "cpp":
        return _cpp_decode(q, k_cache, v_cache, plan, scale).to(q.dtype)
    out_dtype = q.dtype
    q = q.to(k_cache.dtype)
    if plan.kernel:
        tri = _triton()
        if q.shape[2] <= tri.DECODE_MAX_T:
            return tri.decode_attn(q, k_cache, v_cache, q_lens, kv_lens, causal, scale).to(out_dtype)
        return tri.flash_attn_fwd(q, k_cache, v_cache, q_lens, kv_lens, None, causal, scale, 0.0)[0].to(out_dtype)
    if plan.backend == "reference":
        return _ref.attention(q, k_cache, v_cache, causal=causal, softmax_scale=scale, q_lens=q_lens,
                              kv_lens=kv_lens).to(out_dtype)
    # read only the used prefix of the cache
    k, v = k_cache[:, :, : plan.used], v_cache[:, :, : plan.used]
    if plan.backend == "triton":  # gradients wanted: the flash kernel has a backward
        return _triton().flash_attn_fwd(q, k, v, q_lens, kv_lens, None, causal, scale, 0.0)[0].to(out_dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, scale=scale)
    if plan.empty_rows is not None:
        out = out.masked_fill(plan.empty_rows, 0.0)
    return out.to(out_dtype)
