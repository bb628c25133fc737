"""GPT: a pre-norm causal transformer over token ids or continuous features, with KV-cache decoding."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Union

import torch
from torch import nn

from .._args import check_index_range, int_arg, real
from .attention import DecodePlan, _check_lens, _decode_attention, _flash_attention
from .cache import WINDOW_POLICIES, KVCache

__all__ = ["GPT", "Block", "CausalSelfAttention", "GPTConfig", "Rotary", "apply_rotary"]

POSITIONS = ("learned", "rope", "none")


@dataclass
class GPTConfig:
    """Hyper-parameters of :class:`GPT`.

    Inputs are either token ids (``vocab_size``), continuous features projected by a linear
    layer (``input_dim``), or, when both are None, vectors already of width ``n_embd``.

    Attributes:
        n_layer: number of blocks.
        n_head: attention heads (``n_embd % n_head == 0``; any head dim, e.g. 18 for 72/4).
        n_embd: model width.
        block_size: maximum sequence length (size of the learned position table; RoPE has no
            table but the cache capacity defaults to it).
        vocab_size: token inputs ``(B, T)`` int64 when set.
        input_dim: continuous inputs ``(B, T, input_dim)`` when set.
        output_dim: width of the output head; default ``vocab_size`` for token inputs and no head
            (normalised hidden states ``(B, T, n_embd)``) otherwise; 0 also means no head.
        pos: "learned" (absolute position table), "rope" (rotary, relative) or "none".
        dropout: dropout on the embeddings and on both residual branches.
        attn_dropout: dropout on the attention probabilities (Philox in the Triton kernel).
        bias: biases in the linear layers and LayerNorms.
        mlp_ratio: hidden width of the MLP as a multiple of ``n_embd``.
        rope_base: RoPE frequency base.
        tie_weights: share the token embedding with the output head (token inputs only).
        norm_eps: LayerNorm epsilon.
    """

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 1024
    vocab_size: Optional[int] = None
    input_dim: Optional[int] = None
    output_dim: Optional[int] = None
    pos: str = "learned"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    bias: bool = True
    mlp_ratio: float = 4.0
    rope_base: float = 10000.0
    tie_weights: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for arg in ("n_layer", "n_head", "n_embd", "block_size"):  # NumPy integers become ints; bools fail
            setattr(self, arg, int_arg(getattr(self, arg), f"GPTConfig: {arg}"))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.vocab_size is not None and self.input_dim is not None:
            raise ValueError("GPTConfig: give vocab_size (token inputs) or input_dim (continuous inputs), not both")
        for arg, least in (("vocab_size", 1), ("input_dim", 1), ("output_dim", 0)):
            val = getattr(self, arg)
            if val is not None:
                setattr(self, arg, int_arg(val, f"GPTConfig: {arg} (or None)", least))
        if self.pos not in POSITIONS:
            raise ValueError(f"GPTConfig: pos must be one of {POSITIONS}, got {self.pos!r}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: pos='rope' needs an even head dim, got n_embd/n_head = "
                             f"{self.n_embd // self.n_head}")
        for arg in ("dropout", "attn_dropout"):
            val = real(getattr(self, arg))
            if val is None or not 0.0 <= val < 1.0:
                raise ValueError(f"GPTConfig: {arg} must be a number in [0, 1), got {getattr(self, arg)!r}")
        ratio = real(self.mlp_ratio)
        if ratio is None or not 0 < ratio < math.inf:
            raise ValueError(f"GPTConfig: mlp_ratio must be a finite number > 0, got {self.mlp_ratio!r}")
        if self.tie_weights and (self.vocab_size is None or self.out_features != self.vocab_size):
            raise ValueError("GPTConfig: tie_weights needs token inputs (vocab_size) and output_dim == vocab_size")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def out_features(self) -> int:
        """Width of the head's output (0: no head, the model returns hidden states)."""
        if self.output_dim is not None:
            return self.output_dim
        return self.vocab_size or 0


# ----------------------------------------------------------------------------- rotary positions


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form) over the whole head dimension.

    No parameters or buffers: the frequencies ``base ** (-2i / D)`` are formed in float64 on use,
    so casting the model (``.half()``) cannot degrade them.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = float(base)

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``pos`` ``(B, T)`` integer positions (may be negative) -> cos, sin ``(B, 1, T, D/2)``.

        Angles are formed in float64 (exact for any practical position), then cast to ``dtype``
        (float32, or float64 for a float64 model).
        """
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=pos.device)
                                 / self.head_dim)
        ang = pos.to(torch.float64).unsqueeze(-1) * inv_freq
        return ang.cos().to(dtype).unsqueeze(1), ang.sin().to(dtype).unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, T, D)`` by the angles behind ``cos``/``sin`` ``(B, 1, T, D/2)`` (rotate-half form).

    Computed in float32 (float64 for float64 inputs), returned in ``x``'s dtype.
    """
    half = x.shape[-1] // 2
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    cos, sin = cos.to(xf.dtype), sin.to(xf.dtype)
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


# ----------------------------------------------------------------------------- blocks


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention on :func:`~fastorals.transformer.flash_attention`."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = float(cfg.attn_dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def heads(self, x: torch.Tensor, rope: Optional[tuple[torch.Tensor, torch.Tensor]]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``(B, T, C)`` -> q, k, v ``(B, H, T, D)`` (strided views of one projection; rotated if ``rope``)."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        """``(B, H, T, D)`` -> output projection ``(B, T, C)``."""
        B, H, T, D = o.shape
        return self.resid_dropout(self.proj(o.transpose(1, 2).reshape(B, T, H * D)))

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        q, k, v = self.heads(x, rope)
        p = self.attn_dropout if self.training else 0.0
        return self.merge(_flash_attention(q, k, v, True, self.scale, p, lengths, lengths))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        hidden = max(1, int(round(cfg.mlp_ratio * cfg.n_embd)))
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, hidden, bias=cfg.bias), nn.GELU(),
            nn.Linear(hidden, cfg.n_embd, bias=cfg.bias), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), lengths, rope)
        return x + self.mlp(self.ln2(x))

    def mlp_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP branch without its dropout (decoding)."""
        return self.mlp[2](self.mlp[1](self.mlp[0](x)))


# ----------------------------------------------------------------------------- GPT


class GPT(nn.Module):
    """Causal transformer: ``forward`` over whole sequences (training), ``step`` with a KV cache.

    Args:
        config: a :class:`GPTConfig`; or pass its fields as keyword arguments.

    Shapes:
        * token inputs (``vocab_size``): ``(B, T)`` int64;
        * continuous inputs (``input_dim``): ``(B, T, input_dim)`` float;
        * neither: ``(B, T, n_embd)`` float (already embedded);
        * output: ``(B, T, out_features)``, or ``(B, T, n_embd)`` hidden states without a head.

    Example:
        >>> model = GPT(input_dim=10, output_dim=5, n_layer=4, n_head=4, n_embd=128, block_size=240)
        >>> logits = model(torch.randn(32, 240, 10))                  # training: (32, 240, 5)
        >>> model.eval()
        >>> cache = model.make_cache(batch=256)
        >>> for t in range(240):
        ...     out = model.step(torch.randn(256, 1, 10), cache)      # (256, 1, 5)
    """

    def __init__(self, config: Optional[GPTConfig] = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = GPTConfig(**kwargs)
        elif kwargs:
            raise TypeError("GPT: pass either a GPTConfig or keyword fields, not both")
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        self.config = cfg = config
        if cfg.vocab_size is not None:
            self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        elif cfg.input_dim is not None:
            self.embed = nn.Linear(cfg.input_dim, cfg.n_embd, bias=cfg.bias)
        else:
            self.embed = nn.Identity()
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos == "learned" else None
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base) if cfg.pos == "rope" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        out = cfg.out_features
        self.head = nn.Linear(cfg.n_embd, out, bias=False) if out else None
        self.reset_parameters()
        if cfg.tie_weights:
            self.head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.proj.weight, 0.0, std)
            nn.init.normal_(blk.mlp[2].weight, 0.0, std)

    def extra_repr(self) -> str:
        c = self.config
        return (f"n_layer={c.n_layer}, n_head={c.n_head}, n_embd={c.n_embd}, pos={c.pos!r}, "
                f"block_size={c.block_size}, out_features={c.out_features}")

    # ------------------------------------------------------------------ inputs
    def _check_input(self, x: torch.Tensor, name: str) -> None:
        c = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"GPT.{name}: x must be a torch.Tensor, got {type(x).__name__}")
        if c.vocab_size is not None:
            if x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
                raise ValueError(f"GPT.{name}: x must be (B, T) integer token ids (vocab_size={c.vocab_size}), "
                                 f"got shape {tuple(x.shape)} dtype {x.dtype}")
        else:
            width = c.input_dim if c.input_dim is not None else c.n_embd
            what = "input_dim" if c.input_dim is not None else "n_embd (no input embedding)"
            if x.dim() != 3 or x.shape[-1] != width or not x.dtype.is_floating_point:
                raise ValueError(f"GPT.{name}: x must be (B, T, {width}) float features ({what}={width}), "
                                 f"got shape {tuple(x.shape)} dtype {x.dtype}")
            want = self.ln_f.weight.dtype
            if x.dtype != want:
                raise TypeError(f"GPT.{name}: x has dtype {x.dtype}, the model's parameters {want}: "
                                f"pass x.to({want}) or convert the model")

    def _embed(self, x: torch.Tensor, pos: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        if valid is not None and self.config.vocab_size is not None:
            x = x.masked_fill(~valid, 0)  # padded slots may hold any id
        if self.config.vocab_size is not None and x.device.type != "cuda":  # no host sync on CUDA
            self._check_ids(x)
        h = self.embed(x)
        if self.pos_embed is not None:
            h = h + self.pos_embed(pos.clamp(0, self.config.block_size - 1))
        return h

    def _check_ids(self, x: torch.Tensor) -> None:
        v = self.config.vocab_size
        check_index_range(x, "GPT: token ids", v, f"[0, vocab_size={v})")

    def _rope_dtype(self) -> torch.dtype:
        return torch.float64 if self.ln_f.weight.dtype == torch.float64 else torch.float32

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        h = self.ln_f(h)
        return self.head(h) if self.head is not None else h

    # ------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Outputs for every position of whole sequences (causal).

        Args:
            x: inputs, see the class docstring; ``T <= block_size`` with learned positions.
            lengths: ``(B,)`` valid tokens per sequence for right-padded batches (outputs at
                padded positions are unspecified).
        Returns:
            ``(B, T, out_features)`` (or hidden states ``(B, T, n_embd)`` without a head).
        """
        self._check_input(x, "forward")
        B, T = x.shape[:2]
        if self.pos_embed is not None and T > self.config.block_size:
            raise ValueError(f"GPT.forward: sequence length {T} exceeds block_size={self.config.block_size} "
                             "(learned positions)")
        lengths = _check_lens(lengths, "lengths", B, T, x.device, "GPT.forward", True)
        pos = torch.arange(T, device=x.device).unsqueeze(0).expand(B, T)
        valid = None if lengths is None else pos < lengths.unsqueeze(1)
        h = self.drop(self._embed(x, pos, valid))
        rope = self.rotary.cos_sin(pos, self._rope_dtype()) if self.rotary is not None else None
        for blk in self.blocks:
            h = blk(h, lengths, rope)
        return self._head(h)

    # ------------------------------------------------------------------ decoding
    def make_cache(self, batch: int, max_len: Optional[int] = None, *, window: str = "error",
                   slide: Optional[int] = None, device: Optional[Union[str, torch.device]] = None,
                   dtype: Optional[torch.dtype] = None) -> KVCache:
        """A :class:`KVCache` shaped for this model.

        Args:
            batch: number of independent sequences.
            max_len: capacity per sequence (default ``block_size``).
            window: "error", "reprefill" or "shift" (see :class:`KVCache`).
            slide: tokens dropped per window move (default ``max_len // 4``).
            device: default: the model's.
            dtype: default: the model's parameter dtype (a lower precision cache also works).
        Returns:
            an empty :class:`KVCache`.
        """
        p = next(self.parameters())
        max_len = self.config.block_size if max_len is None else max_len
        cache = KVCache(batch, self.config.n_layer, self.config.n_head, self.config.head_dim, max_len,
                        device=device or p.device, dtype=dtype or p.dtype, window=window, slide=slide)
        self._check_cache(cache, "make_cache")
        return cache

    def _check_cache(self, cache: KVCache, name: str) -> None:
        c = self.config
        if not isinstance(cache, KVCache):
            raise TypeError(f"GPT.{name}: cache must be a KVCache, got {type(cache).__name__}")
        if (cache.layers, cache.heads, cache.head_dim) != (c.n_layer, c.n_head, c.head_dim):
            raise ValueError(f"GPT.{name}: cache has layers/heads/head_dim {cache.layers}/{cache.heads}/"
                             f"{cache.head_dim}, the model needs {c.n_layer}/{c.n_head}/{c.head_dim}")
        if self.pos_embed is not None and cache.max_len > c.block_size:
            raise ValueError(f"GPT.{name}: cache max_len={cache.max_len} exceeds block_size={c.block_size} "
                             "(learned positions)")
        if cache.window == "shift" and self.rotary is None:
            raise ValueError(f"GPT.{name}: window='shift' needs rotary positions (pos='rope'); "
                             f"this model has pos={c.pos!r}: use window='reprefill'")
        assert cache.window in WINDOW_POLICIES

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: KVCache, new_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Append ``T`` new tokens per sequence to ``cache`` and return their outputs (inference).

        Equal, up to floating point, to ``forward`` over each sequence's cached window plus the
        new tokens, read at the new positions. Runs without gradients and without dropout,
        whatever ``self.training`` is.

        Args:
            x: new inputs ``(B, T)`` ids or ``(B, T, F)`` features, ``B == cache.batch``.
            cache: the sequences' :class:`KVCache`; advanced by ``new_lens`` (default ``T``).
            new_lens: ``(B,)`` valid new tokens per sequence (right padding, 0 allowed); outputs
                at padded slots are unspecified.
        Returns:
            ``(B, T, out_features)`` (or hidden states ``(B, T, n_embd)``).
        Raises:
            ValueError: a sequence would exceed ``cache.max_len`` under ``window="error"``, or
                shapes do not match the model or cache.
        """
        self._check_input(x, "step")
        self._check_cache(cache, "step")
        B, T = x.shape[:2]
        if B != cache.batch:
            raise ValueError(f"GPT.step: x has batch {B}, the cache holds {cache.batch} sequences")
        if x.device != cache.device:
            raise ValueError(f"GPT.step: x is on {x.device}, the cache on {cache.device}")
        if T > cache.max_len:
            raise ValueError(f"GPT.step: {T} new tokens exceed the cache capacity max_len={cache.max_len}")
        if new_lens is not None:
            new_lens = _check_lens(new_lens, "new_lens", B, T, x.device, "GPT.step", True).long()
            n_new = new_lens
        else:
            n_new = torch.full((B,), T, dtype=torch.long, device=x.device)
        if self.config.vocab_size is not None and x.device.type != "cuda":  # before any cache change
            valid = None if new_lens is None else torch.arange(T, device=x.device).unsqueeze(0) < new_lens.unsqueeze(1)
            self._check_ids(x if valid is None else x.masked_fill(~valid, 0))
        self._make_room(cache, n_new, x)
        if cache.window == "reprefill":
            self._store_inputs(cache, x, new_lens)
        return self._run(x, cache, new_lens)

    def _make_room(self, cache: KVCache, n_new: torch.Tensor, x: torch.Tensor) -> None:
        over = cache.lens + n_new > cache.max_len
        if not bool(over.any()):
            return
        rows = over.nonzero().flatten()
        if cache.window == "error":
            raise ValueError(
                f"GPT.step: sequences {rows.tolist()[:8]}{'...' if rows.numel() > 8 else ''} would exceed the "
                f"cache max_len={cache.max_len}; reset them (cache.reset(rows)) or create the cache with "
                "window='reprefill' (exact) or 'shift' (RoPE, approximate)")
        need = cache.lens[rows] + n_new[rows] - cache.max_len
        drop = torch.minimum((need + cache.slide - 1) // cache.slide * cache.slide, cache.lens[rows])
        cache.drop_oldest(rows, drop)
        if cache.window == "shift":
            cos, sin = self.rotary.cos_sin(-drop.unsqueeze(1), self._rope_dtype())  # (n, 1, 1, D/2)
            for layer in range(cache.layers):
                cache.k[layer, rows] = apply_rotary(cache.k[layer, rows], cos, sin)
        else:  # reprefill: recompute the kept window of those rows from their inputs
            self._prefill(cache, rows)

    def _store_inputs(self, cache: KVCache, x: torch.Tensor, new_lens: Optional[torch.Tensor]) -> None:
        B, T = x.shape[:2]
        if cache.inputs is None or cache.inputs.shape[2:] != x.shape[2:] or cache.inputs.dtype != x.dtype:
            if cache.inputs is not None and bool((cache.lens > 0).any()):
                raise ValueError("GPT.step: input shape/dtype changed while the reprefill cache holds tokens")
            cache.inputs = torch.zeros((B, cache.max_len, *x.shape[2:]), dtype=x.dtype, device=x.device)
        pos = cache.lens.unsqueeze(1) + torch.arange(T, device=x.device)
        bidx = torch.arange(B, device=x.device).unsqueeze(1).expand(B, T)
        sel = pos < cache.max_len
        if new_lens is not None:
            sel = sel & (torch.arange(T, device=x.device).unsqueeze(0) < new_lens.unsqueeze(1))
        cache.inputs[bidx[sel], pos[sel]] = x[sel]

    def _prefill(self, cache: KVCache, rows: torch.Tensor) -> None:
        lens = cache.lens[rows].clone()
        if rows.numel() == 0 or int(lens.max()) == 0:
            return
        x = cache.inputs[rows, : int(lens.max())]
        cache.lens[rows] = 0
        self._run(x, cache, lens, rows=rows, fresh=True)

    def _run(self, x: torch.Tensor, cache: KVCache, new_lens: Optional[torch.Tensor],
             rows: Optional[torch.Tensor] = None, fresh: bool = False) -> torch.Tensor:
        """Run new tokens through every layer, writing their keys/values; advances the cache."""
        n, T = x.shape[:2]
        lens = cache.lens if rows is None else cache.lens[rows]
        pos = lens.unsqueeze(1) + torch.arange(T, device=x.device)
        valid = None if new_lens is None else torch.arange(T, device=x.device).unsqueeze(0) < new_lens.unsqueeze(1)
        h = self._embed(x, pos, valid)
        rope = self.rotary.cos_sin(pos, self._rope_dtype()) if self.rotary is not None else None
        n_new = new_lens if new_lens is not None else T
        ql = None if new_lens is None else new_lens.to(torch.int32)
        kv_lens = (lens + n_new).to(torch.int32)
        start = None
        plan = None
        if not fresh:
            plan = DecodePlan(kv_lens, ql, T, True, h.dtype, cache.dtype, cache.device)
            if rows is None and new_lens is None and cache.device.type == "cpu":
                lo, hi = int(lens.min()), int(lens.max())  # lock-step sequences: slice writes
                start = lo if lo == hi else None
        for layer, blk in enumerate(self.blocks):
            q, k, v = blk.attn.heads(blk.ln1(h), rope)
            cache.write(layer, k, v, new_lens, rows, start=start)
            if fresh:  # the cache of these rows was empty: plain causal self-attention
                o = _flash_attention(q, k, v, True, blk.attn.scale, 0.0, ql, ql)
            else:
                o = _decode_attention(q, cache.k[layer], cache.v[layer], kv_lens, ql, True, blk.attn.scale, plan)
            h = h + blk.attn.proj(o.transpose(1, 2).reshape(n, T, o.shape[1] * o.shape[3]))  # T may be 0
            h = h + blk.mlp_eval(blk.ln2(h))
        cache.advance(n_new, rows)
        return self._head(h)

    def config_dict(self) -> dict:
        """The configuration as a plain dict (for checkpoints)."""
        return asdict(self.config)
