"""Launch-bound CUDA work replayed from cached CUDA graphs.

A fast path made of many small launches (the tiled augment path launches ``2 + 7 K`` Triton
kernels plus a few dozen small tensor ops) can cost more host time than GPU time: Triton's Python
launcher takes tens of microseconds per launch. :class:`GraphCache` captures such a function once
per input signature (shapes, dtypes, device and any extra key) on static input buffers, and later
calls copy their inputs into those buffers, replay the graph (one host call) and return a copy of
the static output. Results are the same bytes as calling the function: the same kernels run on the
same values.

Used only where it is safe: CUDA inputs that are plain tensors (not fake or functional tensors of
a ``torch.compile`` trace), not while the current stream is itself being captured, and while
enabled (``FASTORALS_CUDA_GRAPHS=0`` or ``cache.enabled = False`` turns it off). Each entry keeps
its graph's memory pool (scratch, static inputs and output) until it is evicted (least recently
used beyond ``capacity``) or :meth:`GraphCache.clear` is called.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Callable, Hashable, Optional, Sequence

import torch

__all__ = ["GraphCache"]


def _enabled_by_env() -> bool:
    return os.environ.get("FASTORALS_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")


class _Entry:
    __slots__ = ("done", "graph", "out", "statics")

    def __init__(self, statics: list[torch.Tensor], graph: Any, out: torch.Tensor, done: Any):
        self.statics = statics
        self.graph = graph
        self.out = out
        self.done = done  # a CUDA event recorded after the entry's last use (warm-up, or replay + copy)


class GraphCache:
    """Per-signature CUDA graphs of a function of tensors that returns one tensor.

    Args:
        capacity: graphs kept (least recently used evicted first); each holds its own memory.

    Example:
        >>> cache = GraphCache(capacity=2)
        >>> y = cache(lambda a, b: a * 2 + b, (x, y))  # doctest: +SKIP
        ...   # first call per signature: runs eagerly, then captures; later calls replay
    """

    def __init__(self, capacity: int = 4):
        if capacity < 1:
            raise ValueError(f"capacity: expected >= 1, got {capacity}")
        self.capacity = capacity
        self.enabled = _enabled_by_env()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._failed: dict[Hashable, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def failures(self) -> dict[Hashable, str]:
        """Signatures whose capture failed (they run eagerly), with the error."""
        return dict(self._failed)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Calls inside launch their work directly (no graph); the previous setting comes back after."""
        before = self.enabled
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = before

    def clear(self) -> None:
        """Drop every graph (and its memory, once its last use has finished)."""
        with self._lock:
            while self._entries:
                self._drop_oldest()
            self._failed.clear()

    def _drop_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        entry.done.synchronize()  # its buffers return to the allocator: no replay may still use them

    def usable(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether a call on these inputs would use a graph."""
        if not self.enabled or not tensors or not tensors[0].is_cuda:
            return False
        dev = tensors[0].device
        if any(t.device != dev for t in tensors):
            return False
        if any(type(t) is not torch.Tensor for t in tensors) or any(t.requires_grad for t in tensors):
            return False
        if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
            return False
        return True

    def __call__(self, fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor],
                 key: Hashable = ()) -> torch.Tensor:
        """``fn(*tensors)``, from a graph when :meth:`usable`. ``fn`` must be a pure function of the
        tensors' values (no host reads of them) for a given ``key`` and input signature."""
        if not self.usable(tensors):
            return fn(*tensors)
        sig = (key, *((tuple(t.shape), t.dtype, t.device) for t in tensors))
        with self._lock, torch.cuda.device(tensors[0].device):  # streams, capture and replay on that device
            entry = self._entries.get(sig)
            if entry is None:
                if sig in self._failed:
                    return fn(*tensors)
                return self._capture(sig, fn, tensors)
            self._entries.move_to_end(sig)
            cur = torch.cuda.current_stream(tensors[0].device)
            cur.wait_event(entry.done)  # the last use may have run on another stream
            for s, t in zip(entry.statics, tensors):
                if t.numel():
                    s.copy_(t)
            entry.graph.replay()
            out = entry.out.clone()
            entry.done.record(cur)
            return out

    def _capture(self, sig: Hashable, fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        dev = tensors[0].device
        cur = torch.cuda.current_stream(dev)
        with torch.inference_mode(False):  # buffers later calls may copy into outside inference mode
            statics = [torch.empty(t.shape, dtype=t.dtype, device=dev) for t in tensors]
        for s, t in zip(statics, tensors):
            s.copy_(t)
        side = torch.cuda.Stream(dev)
        side.wait_stream(cur)
        graph = torch.cuda.CUDAGraph()
        out: Optional[torch.Tensor] = None
        with torch.cuda.stream(side):
            result = fn(*statics)  # compiles what the function launches; also this call's answer
            try:
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    out = fn(*statics)
                finally:
                    graph.capture_end()
            except Exception as e:  # e.g. an op that cannot be captured: this signature runs eagerly
                self._failed[sig] = f"{type(e).__name__}: {e}"
                out = None
        cur.wait_stream(side)
        if result.is_cuda:
            result.record_stream(cur)
        if out is not None:
            done = torch.cuda.Event()
            done.record(cur)  # the warm-up read the static inputs: a next call waits for it
            self._entries[sig] = _Entry(statics, graph, out, done)
            while len(self._entries) > self.capacity:
                self._drop_oldest()
        return result
