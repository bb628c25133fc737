"""KV cache for many independent sequences decoded in lock-step (batch = environments)."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .._args import as_int, int_arg

__all__ = ["WINDOW_POLICIES", "KVCache"]

WINDOW_POLICIES = ("error", "reprefill", "shift")

Rows = Union[None, int, list, tuple, torch.Tensor]


class KVCache:
    """Preallocated keys and values of every layer for ``batch`` independent sequences.

    Each sequence ``b`` holds ``lens[b]`` valid tokens; sequences advance by one or a few
    tokens per :meth:`fastorals.transformer.GPT.step` and are reset independently (an
    environment that finishes its episode or task starts over while the others go on).

    What happens when a sequence would grow past ``max_len`` is the window policy:

    ``"error"`` (default)
        raise: the caller resets the sequence (e.g. at each episode boundary, C-BeT style).
    ``"reprefill"``
        exact sliding window. The cache also keeps the model's inputs; when a sequence is full,
        its oldest ``slide`` tokens (a multiple of ``slide``, enough to fit the new tokens) are
        dropped and the model re-runs over the kept inputs with positions restarting at 0. The
        outputs then equal a full recompute over the current window at every step; the cost is
        one prefill of ``max_len - slide`` tokens every ``slide`` tokens. With ``slide`` = the
        episode length in tokens the window always starts at an episode boundary (the policy
        Algorithm Distillation evaluations use).
    ``"shift"``
        approximate sliding window for rotary positions (``GPT(pos="rope")``): drop the oldest
        tokens' keys and values in place and rotate the kept keys back by the number dropped.
        Exact for a one-layer model (relative positions are preserved); deeper layers keep
        keys/values computed while the dropped tokens were still visible, so outputs differ
        from a full recompute of the window (measured in the tests and the README).

    Args:
        batch: number of sequences B.
        layers: number of transformer layers.
        heads: attention heads per layer H.
        head_dim: head dimension D.
        max_len: capacity in tokens per sequence.
        device: device of the buffers.
        dtype: dtype of keys and values (the model's compute dtype).
        window: "error", "reprefill" or "shift" (see above).
        slide: tokens dropped per window move (multiple of it when more are needed); default
            ``max(1, max_len // 4)``.

    Attributes:
        k, v: ``(layers, B, H, max_len, D)`` buffers.
        lens: ``(B,)`` int64 valid tokens per sequence.
        inputs: ``(B, max_len, ...)`` the inputs of the current window ("reprefill" only;
            allocated by the first ``GPT.step``).

    Example:
        >>> model = GPT(GPTConfig(input_dim=12, output_dim=5, n_layer=4, n_head=4, n_embd=256))
        >>> cache = model.make_cache(batch=256, max_len=960)
        >>> out = model.step(obs[:, None], cache)      # (256, 1, 5); cache.lens == 1
        >>> cache.reset(done)                          # done: (256,) bool, sequences that restart
    """

    def __init__(
        self,
        batch: int,
        layers: int,
        heads: int,
        head_dim: int,
        max_len: int,
        device: Optional[Union[str, torch.device]] = None,
        dtype: torch.dtype = torch.float32,
        *,
        window: str = "error",
        slide: Optional[int] = None,
    ) -> None:
        batch, layers, heads, head_dim, max_len = (
            int_arg(val, f"KVCache: {arg}") for arg, val in (("batch", batch), ("layers", layers), ("heads", heads),
                                                              ("head_dim", head_dim), ("max_len", max_len)))
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"KVCache: dtype must be a floating point torch.dtype, got {dtype!r}")
        if window not in WINDOW_POLICIES:
            raise ValueError(f"KVCache: window must be one of {WINDOW_POLICIES}, got {window!r}")
        if slide is None:
            slide = max(1, max_len // 4)
        slide = as_int(slide)
        if not isinstance(slide, int) or isinstance(slide, bool) or not 1 <= slide <= max_len:
            raise ValueError(f"KVCache: slide must be an int in [1, max_len={max_len}], got {slide!r}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        shape = (layers, batch, heads, max_len, head_dim)
        # zeros, not empty: padding is never attended, but a NaN bit pattern times a 0 weight
        # would still poison a matmul-based (SDPA) path.
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lens = torch.zeros(batch, dtype=torch.long, device=device)
        self.window = window
        self.slide = slide
        self.inputs: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ shape
    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def layers(self) -> int:
        return self.k.shape[0]

    @property
    def heads(self) -> int:
        return self.k.shape[2]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def head_dim(self) -> int:
        return self.k.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    def __repr__(self) -> str:
        return (f"KVCache(batch={self.batch}, layers={self.layers}, heads={self.heads}, head_dim={self.head_dim}, "
                f"max_len={self.max_len}, dtype={self.dtype}, device={self.device}, window={self.window!r}, "
                f"slide={self.slide})")

    # ------------------------------------------------------------------ rows
    def rows(self, which: Rows) -> torch.Tensor:
        """Normalise a row selection (None = all, bool mask, indices, int) to an int64 index tensor."""
        if which is None:
            return torch.arange(self.batch, device=self.device)
        empty = not isinstance(which, torch.Tensor) and hasattr(which, "__len__") and len(which) == 0
        t = torch.as_tensor(which, device=self.device, dtype=torch.long if empty else None)  # [] selects no row
        if t.dtype == torch.bool:
            if t.shape != (self.batch,):
                raise ValueError(f"KVCache: a boolean row mask must have shape ({self.batch},), got {tuple(t.shape)}")
            return t.nonzero().flatten()
        if t.dtype.is_floating_point or t.is_complex():
            raise TypeError(f"KVCache: rows must be indices or a boolean mask, got dtype {t.dtype}")
        t = t.reshape(-1).long()
        if t.numel() and (int(t.min()) < -self.batch or int(t.max()) >= self.batch):
            raise ValueError(f"KVCache: row indices must lie in [0, {self.batch}), got {t.tolist()}")
        return t % self.batch

    # ------------------------------------------------------------------ state
    def reset(self, which: Rows = None) -> None:
        """Empty the selected sequences (None: all; a ``(B,)`` bool mask; indices). Others are untouched."""
        if which is None:
            self.lens.zero_()
        else:
            self.lens[self.rows(which)] = 0

    def write(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, new_lens: Optional[torch.Tensor] = None,
              rows: Optional[torch.Tensor] = None, start: Optional[int] = None) -> None:
        """Write new keys/values of ``layer`` at positions ``lens[b], lens[b] + 1, ...`` (does not advance).

        Args:
            layer: layer index.
            k_new: ``(n, H, T, D)`` keys of the new tokens (n = B, or ``len(rows)``).
            v_new: ``(n, H, T, D)`` values.
            new_lens: ``(n,)`` number of valid new tokens per sequence (default T); rows past it
                are not written.
            rows: int64 indices of the sequences written (default all).
            start: when every sequence has this same length (and ``rows``/``new_lens`` are None),
                a plain slice copy replaces the scatter.
        """
        n, H, T, D = k_new.shape
        if start is not None and rows is None and new_lens is None:
            self.k[layer, :, :, start : start + T] = k_new
            self.v[layer, :, :, start : start + T] = v_new
            return
        lens = self.lens if rows is None else self.lens[rows]
        pos = lens.unsqueeze(1) + torch.arange(T, device=self.device)
        bidx = (torch.arange(self.batch, device=self.device) if rows is None else rows).unsqueeze(1).expand(n, T)
        kt = k_new.permute(0, 2, 1, 3).to(self.dtype)
        vt = v_new.permute(0, 2, 1, 3).to(self.dtype)
        if new_lens is not None:
            sel = torch.arange(T, device=self.device).unsqueeze(0) < new_lens.to(self.device).unsqueeze(1)
            bidx, pos, kt, vt = bidx[sel], pos[sel], kt[sel], vt[sel]
        else:
            bidx, pos, kt, vt = bidx.reshape(-1), pos.reshape(-1), kt.reshape(n * T, H, D), vt.reshape(n * T, H, D)
        self.k[layer][bidx, :, pos] = kt
        self.v[layer][bidx, :, pos] = vt

    def advance(self, n: Union[int, torch.Tensor], rows: Optional[torch.Tensor] = None) -> None:
        """Add ``n`` (an int, or a per-sequence tensor) to the lengths of ``rows`` (default all)."""
        if rows is None:
            self.lens += n
        else:
            self.lens[rows] += n if isinstance(n, int) else n.to(self.lens.device)

    def drop_oldest(self, rows: torch.Tensor, drop: torch.Tensor) -> None:
        """Remove the first ``drop[i]`` tokens of sequence ``rows[i]`` (keys, values, inputs), shifting the rest left."""
        if rows.numel() == 0:
            return
        L = self.max_len
        drop = drop.to(self.device)
        if bool((drop == drop[0]).all()):  # one shift for all rows (lock-step envs): slice copies
            d = int(drop[0])
            if d > 0:
                self.k[:, rows, :, : L - d] = self.k[:, rows, :, d:]
                self.v[:, rows, :, : L - d] = self.v[:, rows, :, d:]
                if self.inputs is not None:
                    self.inputs[rows, : L - d] = self.inputs[rows, d:]
                self.lens[rows] = (self.lens[rows] - d).clamp_(min=0)
            return
        src = (drop.to(self.device).unsqueeze(1) + torch.arange(L, device=self.device)).clamp_(max=L - 1)  # (n, L)
        idx = src.view(1, -1, 1, L, 1).expand(self.layers, rows.numel(), self.heads, L, self.head_dim)
        self.k[:, rows] = torch.gather(self.k[:, rows], 3, idx)
        self.v[:, rows] = torch.gather(self.v[:, rows], 3, idx)
        if self.inputs is not None:
            x = self.inputs[rows]
            ix = src.view(rows.numel(), L, *([1] * (x.dim() - 2))).expand_as(x)
            self.inputs[rows] = torch.gather(x, 1, ix)
        self.lens[rows] = (self.lens[rows] - drop.to(self.device)).clamp_(min=0)

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, Any]:
        """Buffers and settings (for checkpointing a long evaluation)."""
        return {"k": self.k, "v": self.v, "lens": self.lens, "inputs": self.inputs, "window": self.window,
                "slide": self.slide}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (shapes must match this cache)."""
        for key in ("k", "v", "lens"):
            if tuple(state[key].shape) != tuple(getattr(self, key).shape):
                raise ValueError(f"KVCache.load_state_dict: {key} has shape {tuple(state[key].shape)}, "
                                 f"expected {tuple(getattr(self, key).shape)}")
            getattr(self, key).copy_(state[key])
        self.inputs = None if state.get("inputs") is None else state["inputs"].to(self.device).clone()
        self.window = state.get("window", self.window)
        self.slide = state.get("slide", self.slide)
