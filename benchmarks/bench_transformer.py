"""Shared transformer: attention forward/backward, KV-cache decode attention, GPT decode steps.

Cases, at the shapes of Algorithm Distillation (4 layers, width 256, 4 heads of 64, contexts of
240-960 tokens, 256 parallel environments) and C-BeT (short windows, batch 64-512):

* ``attention_fwd`` / ``attention_fwd_bwd``: fastorals (Triton on CUDA; SDPA on CPU, so the
  CPU rows show the cost of the wrapper and of the lower-right mask) vs SDPA (on CUDA every
  backend: flash, efficient, cuDNN, math) vs the materialising reference.
* ``decode_attention``: one new token per sequence against a cache of 960 (C++ kernel on CPU,
  Triton decode kernel on CUDA) vs SDPA on the cache prefix; equal or ragged lengths; float32
  and bfloat16 caches. Bytes = the cache bytes that must be read; % of the copy bandwidth.
* ``gpt_decode_step``: ``GPT.step`` (one token for each of 256 sequences, cache at context
  240 / 960) vs the same step through SDPA vs a full recompute of the window
  (``GPT.forward``; the "reference" column, so ``ratio_vs_reference`` is the speed-up of KV-cache
  decoding over recomputation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import fastorals
from benchmarks.harness import Case, Suite
from fastorals.transformer import GPT, flash_attention
from fastorals.transformer import reference as R
from fastorals.transformer.attention import _decode_attention


def attention_flops(B: int, H: int, Lq: int, Lk: int, D: int, causal: bool) -> float:
    """Forward FLOPs (two matmuls over the visible query/key pairs, lower-right causal)."""
    if causal:
        shift = Lk - Lq
        # visible pairs: sum over rows i of clamp(i + shift + 1, 0, Lk)
        full_rows = max(0, Lq - max(0, Lk - shift))  # rows that see all Lk keys
        pairs = 0
        for i in range(Lq - full_rows):
            pairs += min(Lk, max(0, i + shift + 1))
        pairs += full_rows * Lk
    else:
        pairs = Lq * Lk
    return 4.0 * B * H * pairs * D


def _close(atol: float):
    def verify(fast_out: Any, other: Any, name: str) -> None:
        a = fast_out if isinstance(fast_out, (tuple, list)) else (fast_out,)
        b = other if isinstance(other, (tuple, list)) else (other,)
        for x, y in zip(a, b):
            torch.testing.assert_close(x.float(), y.float(), atol=atol, rtol=atol, msg=f"{name} disagrees")
    return verify


def _sdpa_backends(device: str) -> dict[str, Any]:
    if device != "cuda":
        return {"sdpa": None}
    from torch.nn.attention import SDPBackend

    return {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
            "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}


def _sdpa_call(backend: Any, q, k, v, causal: bool):
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _attention_cases(mode: str, device: str):
    if device == "cuda":
        sizes = {"smoke": [(8, 4, 128, 64)],
                 "quick": [(256, 4, 128, 64), (64, 8, 960, 64), (64, 4, 2048, 64)],
                 "full": [(512, 4, 128, 64), (256, 8, 240, 64), (64, 4, 960, 64), (64, 8, 960, 64),
                          (64, 4, 2048, 64), (128, 8, 2048, 64)]}[mode]
        dtypes = [torch.bfloat16] if mode != "full" else [torch.bfloat16, torch.float16]
    else:
        sizes = {"smoke": [(4, 4, 128, 64)], "quick": [(64, 4, 240, 64)],
                 "full": [(64, 4, 240, 64), (64, 4, 960, 64)]}[mode]
        dtypes = [torch.float32]
    for (B, H, L, D) in sizes:
        for dtype in dtypes:
            yield from _attention_size(mode, device, B, H, L, D, dtype)


def _attention_size(mode: str, device: str, B: int, H: int, L: int, D: int, dtype: torch.dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    g = torch.randn(B, H, L, D, device=device, dtype=dtype)
    shape = f"B{B} H{H} L{L} D{D}"
    causal = True
    flops = attention_flops(B, H, L, L, D, causal)
    ref_bytes = B * H * L * L * (8 if dtype == torch.float32 else 4)
    skip = {"reference": f"materialises {ref_bytes / 2**30:.1f} GiB of scores"} if ref_bytes > 2**31 else {}
    backend = "triton" if device == "cuda" else "torch"
    peers_fwd = {name: (lambda b=b: _sdpa_call(b, q, k, v, causal)) for name, b in _sdpa_backends(device).items()}

    def fwd_bwd(fn):
        def run():
            out = fn()
            return torch.autograd.grad(out, (q, k, v), g)
        return run

    tol = 2e-2 if dtype != torch.float32 else 2e-4
    yield Case(
        op="attention_fwd", shape=shape, dtype=str(dtype).replace("torch.", ""), device=device,
        fast={"fastorals": lambda: flash_attention(q, k, v, causal=causal)},
        reference=lambda: R.attention(q, k, v, causal=causal), peers=peers_fwd, backend=backend,
        flops=flops, verify=_close(tol), skip=dict(skip), name=f"attention_fwd {shape}",
    )
    yield Case(
        op="attention_fwd_bwd", shape=shape, dtype=str(dtype).replace("torch.", ""), device=device,
        fast={"fastorals": fwd_bwd(lambda: flash_attention(q, k, v, causal=causal))},
        reference=fwd_bwd(lambda: R.attention(q, k, v, causal=causal)),
        peers={n: fwd_bwd(f) for n, f in peers_fwd.items()}, backend=backend,
        flops=3.5 * flops, verify=_close(5 * tol), skip=dict(skip), name=f"attention_fwd_bwd {shape}",
        note="flops: forward + backward = 3.5 x forward",
    )


def _decode_cases(mode: str, device: str):
    B, H, L, D = {"smoke": (16, 4, 128, 64), "quick": (256, 4, 960, 64), "full": (256, 4, 960, 64)}[mode]
    torch.manual_seed(0)
    variants = [(torch.float32, "ragged")] if mode == "smoke" else \
        [(dt, kind) for dt in (torch.float32, torch.bfloat16) for kind in ("equal", "ragged")]
    for cache_dtype, lens_kind in variants:
        k = torch.randn(B, H, L, D, device=device).to(cache_dtype)
        v = torch.randn(B, H, L, D, device=device).to(cache_dtype)
        q = torch.randn(B, H, 1, D, device=device)
        kv = (torch.full((B,), L, device=device, dtype=torch.int32) if lens_kind == "equal"
              else torch.randint(1, L + 1, (B,), device=device, dtype=torch.int32))
        read = 2 * H * D * k.element_size() * int(kv.sum())
        shape = f"B{B} H{H} L{L} D{D} {lens_kind}"
        qc = q.to(cache_dtype)

        def sdpa(qc=qc, k=k, v=v, kv=kv):
            used = int(kv.max())
            mask = R.attention_mask(B, 1, used, causal=True, kv_lens=kv, device=qc.device)
            return F.scaled_dot_product_attention(qc, k[:, :, :used], v[:, :, :used], attn_mask=mask)

        def fast(q=q, k=k, v=v, kv=kv):
            return _decode_attention(q, k, v, kv, None, True, D**-0.5)

        yield Case(
            op="decode_attention", shape=shape, dtype=f"q float32, cache {str(cache_dtype)[6:]}", device=device,
            fast={"fastorals": fast}, reference=None, peers={"sdpa": sdpa},
            backend="triton" if device == "cuda" else "cpp", bytes=read,
            flops=4.0 * H * D * float(kv.sum()), verify=_close(2e-2 if cache_dtype != torch.float32 else 1e-4),
            name=f"decode_attention {shape} {cache_dtype}",
        )


def _step_cases(mode: str, device: str):
    if mode == "smoke":
        specs = [(16, 64)]
        width, layers = 64, 2
    else:
        specs = [(256, 240), (256, 960)]
        width, layers = 256, 4
    torch.manual_seed(0)
    model = GPT(input_dim=12, output_dim=5, n_layer=layers, n_head=4, n_embd=width, block_size=960,
                pos="rope").to(device).eval()
    for B, ctx in specs:
        x = torch.randn(B, ctx, 12, device=device)
        cache = model.make_cache(B, ctx)
        with torch.no_grad():
            model.step(x[:, : ctx - 1], cache)  # prefill the first ctx - 1 tokens
        last = x[:, ctx - 1 :]

        def step(cache=cache, last=last, ctx=ctx):
            cache.lens.fill_(ctx - 1)
            return model.step(last, cache)[:, -1]

        def step_sdpa(cache=cache, last=last, ctx=ctx):
            with fastorals.use_backend("torch"):
                cache.lens.fill_(ctx - 1)
                return model.step(last, cache)[:, -1]

        def recompute(x=x):
            with torch.no_grad():
                return model(x)[:, -1]

        shape = f"B{B} ctx{ctx} L{layers} W{width} H4"
        yield Case(
            op="gpt_decode_step", shape=shape, dtype="float32", device=device,
            fast={"fastorals": step}, reference=recompute, peers={"step-sdpa": step_sdpa},
            backend="triton" if device == "cuda" else "cpp", verify=_close(1e-3), max_time_s=4.0,
            name=f"gpt_decode_step {shape}",
            note="reference = full recompute of the window (GPT.forward); ratio_vs_reference = decode speed-up",
        )


def cases(mode: str, device: str):
    if device not in ("cpu", "cuda"):
        return
    yield from _attention_cases(mode, device)
    yield from _decode_cases(mode, device)
    yield from _step_cases(mode, device)


SUITE = Suite("transformer", cases, "flash attention fwd/bwd vs SDPA, KV-cache decode vs SDPA and vs recompute")
