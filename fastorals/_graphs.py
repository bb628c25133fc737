"""Launch-bound CUDA work replayed from cached CUDA graphs.

A fast path made of many small launches (the tiled augment path launches ``2 + 7 K`` Triton
kernels plus a few dozen small tensor ops) can cost more host time than GPU time: Triton's Python
launcher takes tens of microseconds per launch. :class:`GraphCache` captures such a function once
per input signature (shapes, dtypes, device and any extra key) on static input buffers, and later
calls copy their inputs into those buffers, replay the graph (one host call) and return a copy of
the static output. Results are the same bytes as calling the function: the same kernels run on the
same values. Inputs that view one storage (several small arguments unpacked from one buffer) are
copied as one byte span, so a call costs one copy per distinct storage rather than one per tensor.

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
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Callable, Hashable, Optional, Sequence

import torch

__all__ = ["GraphCache"]


def _enabled_by_env() -> bool:
    return os.environ.get("FASTORALS_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")


_ALIGN = 16  # a byte span starts on this boundary: every dtype's views keep their alignment


class _Layout:
    """How a call's inputs reach the graph's buffers.

    ``singles``: indices of inputs copied on their own (into contiguous buffers). ``groups``:
    ``(lo, hi, indices)`` per storage that two or more non-empty, plain strided inputs view, when
    the views cover at least about half of the bytes between them: bytes ``[lo, hi)`` of that
    storage are copied with one copy, into a buffer where each input keeps its strides and its
    offset from ``lo``. ``sig``: the part of the signature this layout fixes (not ``lo`` itself:
    each call copies its own span).
    """

    __slots__ = ("groups", "sig", "singles")

    def __init__(self, tensors: Sequence[torch.Tensor]):
        by_storage: dict[tuple[int, int], list[int]] = {}
        spans: list[tuple[int, int]] = []
        for i, t in enumerate(tensors):
            if t.numel() == 0 or t.layout != torch.strided or t.is_quantized or t.is_conj() or t.is_neg():
                spans.append((0, 0))  # copied on its own (copy_ resolves lazy conj/neg bits)
                continue
            es = t.element_size()
            lo = t.storage_offset() * es
            hi = lo + es * (1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())))
            spans.append((lo, hi))
            # one storage: the same start and size (two imports of one allocation may differ in size)
            by_storage.setdefault((t.data_ptr() - lo, t.untyped_storage().nbytes()), []).append(i)
        member = [-1] * len(tensors)
        self.groups: list[tuple[int, int, tuple[int, ...]]] = []
        for idx in by_storage.values():
            if len(idx) < 2:
                continue
            lo = min(spans[i][0] for i in idx) // _ALIGN * _ALIGN
            hi = max(spans[i][1] for i in idx)
            if hi - lo > 2 * sum(tensors[i].nbytes for i in idx) + _ALIGN * len(idx):
                continue  # views scattered over a larger storage: copy each on its own
            for i in idx:
                member[i] = len(self.groups)
            self.groups.append((lo, hi, tuple(idx)))
        self.singles = [i for i in range(len(tensors)) if member[i] < 0]
        self.sig = tuple(
            (tuple(t.shape), t.dtype, t.device) if member[i] < 0 else
            (tuple(t.shape), t.dtype, t.device, member[i], t.stride(), spans[i][0] - self.groups[member[i]][0])
            for i, t in enumerate(tensors)
        ) + tuple(hi - lo for lo, hi, _ in self.groups)


def _byte_span(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Bytes ``[lo, hi)`` of ``t``'s storage, as a uint8 tensor (a slice of the whole storage, so a
    span past its end comes out short and fails the copy rather than resizing the storage)."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())[lo:hi]


class _Entry:
    __slots__ = ("done", "graph", "layout", "out", "spans", "statics")

    def __init__(self, layout: _Layout, statics: list[torch.Tensor], spans: list[torch.Tensor], graph: Any,
                 out: torch.Tensor, done: Any):
        self.layout = layout
        self.statics = statics  # one buffer (or view of a span buffer) per input
        self.spans = spans  # one byte buffer per group of the layout
        self.graph = graph
        self.out = out
        self.done = done  # a CUDA event recorded after the entry's last use (warm-up, or replay + copy)

    def load(self, tensors: Sequence[torch.Tensor], layout: _Layout) -> None:
        """Copy a call's inputs (laid out as ``layout``, of this entry's signature) into the
        buffers: one copy per single input, one per group, from this call's own spans."""
        for i in layout.singles:
            t = tensors[i]
            if t.numel():
                self.statics[i].copy_(t)
        for span, (lo, hi, idx) in zip(self.spans, layout.groups):
            span.copy_(_byte_span(tensors[idx[0]], lo, hi))


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
        self._capturing: set = set()  # signatures a thread is capturing now
        self._local = threading.local()  # per-thread depth of disabled() blocks

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def failures(self) -> dict[Hashable, str]:
        """Signatures whose capture failed (they run eagerly), with the error."""
        return dict(self._failed)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Calls made inside, by this thread, launch their work directly (no graph); other
        threads keep using graphs. Blocks nest."""
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1

    @property
    def active(self) -> bool:
        """Whether this thread's calls may use graphs: :attr:`enabled`, and not inside :meth:`disabled`."""
        return self.enabled and not getattr(self._local, "depth", 0)

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
        if not self.active or not tensors or not tensors[0].is_cuda:
            return False
        dev = tensors[0].device
        if any(t.device != dev for t in tensors):
            return False
        if any(type(t) is not torch.Tensor for t in tensors) or any(t.requires_grad for t in tensors):
            return False
        if torch.compiler.is_compiling():
            return False
        with torch.cuda.device(dev):  # the tensors' device may not be the current one
            if torch.cuda.is_current_stream_capturing():  # inside the caller's own capture: launch into it
                return False
        return True

    def __call__(self, fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor],
                 key: Hashable = ()) -> torch.Tensor:
        """``fn(*tensors)``, from a graph when :meth:`usable`. ``fn`` must be a pure function of the
        tensors' values (no host reads of them) for a given ``key`` and input signature."""
        if not self.usable(tensors):
            return fn(*tensors)
        layout = _Layout(tensors)
        sig = (key, *layout.sig)
        with torch.cuda.device(tensors[0].device):  # streams, capture and replay on that device
            with self._lock:
                out = self._replay(sig, layout, tensors)
                if out is not None:
                    return out
                eager = sig in self._failed or sig in self._capturing  # another thread is capturing it
                if not eager:
                    self._capturing.add(sig)
            if eager:
                return fn(*tensors)
            try:  # warm-up and capture outside the lock: other threads keep replaying (and fn may use the cache)
                return self._capture(sig, layout, fn, tensors)
            finally:
                with self._lock:
                    self._capturing.discard(sig)

    def replay(self, tensors: Sequence[torch.Tensor], key: Hashable = ()) -> Optional[torch.Tensor]:
        """The result of a graph already captured for this call (see :meth:`__call__`), else None:
        lets a caller skip its own dispatch when a graph will serve."""
        if not self._entries or not self.usable(tensors):
            return None
        layout = _Layout(tensors)
        sig = (key, *layout.sig)
        with self._lock, torch.cuda.device(tensors[0].device):
            return self._replay(sig, layout, tensors)

    def _replay(self, sig: Hashable, layout: _Layout, tensors: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
        entry = self._entries.get(sig)
        if entry is None:
            return None
        self._entries.move_to_end(sig)
        cur = torch.cuda.current_stream(tensors[0].device)
        cur.wait_event(entry.done)  # the last use may have run on another stream
        entry.load(tensors, layout)
        entry.graph.replay()
        out = entry.out.clone()
        entry.done.record(cur)
        return out

    def _capture(self, sig: Hashable, layout: _Layout, fn: Callable[..., torch.Tensor],
                 tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        dev = tensors[0].device
        cur = torch.cuda.current_stream(dev)
        with torch.inference_mode(False):  # buffers later calls may copy into outside inference mode
            statics: list[Any] = [None] * len(tensors)
            for i in layout.singles:
                statics[i] = torch.empty(tensors[i].shape, dtype=tensors[i].dtype, device=dev)
            spans = []
            for lo, hi, idx in layout.groups:
                span = torch.empty(hi - lo, dtype=torch.uint8, device=dev)
                for i in idx:
                    t = tensors[i]
                    off = (t.storage_offset() * t.element_size() - lo) // t.element_size()
                    statics[i] = torch.empty(0, dtype=t.dtype, device=dev).set_(
                        span.untyped_storage(), off, t.shape, t.stride())
                spans.append(span)
        entry = _Entry(layout, statics, spans, None, None, None)
        entry.load(tensors, layout)
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
            except torch.cuda.OutOfMemoryError:  # transient: a later call may capture it
                out = None
            except Exception as e:  # e.g. an op that syncs: this and every later call run eagerly
                # a capture that ends in an error can leave the caching allocator's capture state
                # and the graph's private pool behind (older torch): no further captures here
                self._failed[sig] = f"{type(e).__name__}: {e}"
                self.enabled = False
                warnings.warn(f"GraphCache: capture failed ({type(e).__name__}: {e}); this cache runs every call "
                              "eagerly from now on", RuntimeWarning, stacklevel=3)
                out = None
        cur.wait_stream(side)
        if result.is_cuda:
            result.record_stream(cur)
        if out is not None:
            done = torch.cuda.Event()
            done.record(cur)  # the warm-up read the static inputs: a next call waits for it
            entry.graph, entry.out, entry.done = graph, out, done
            with self._lock:
                self._entries[sig] = entry
                while len(self._entries) > self.capacity:
                    self._drop_oldest()
        return result
