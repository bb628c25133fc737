"""GraphCache's bookkeeping on the CPU, with stand-ins for the CUDA primitives it calls.

The real capture and replay run in the ``gpu`` tests (``tests/augment/test_triton.py``); here the
stand-in graph records what a captured function computes and recomputes it on replay, so every
branch of the cache (capture, replay on new values, empty inputs, eviction, failure, clear) runs
without a GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fastorals import _graphs
from fastorals._graphs import GraphCache


class _FakeGraph:
    capturing: _FakeGraph | None = None
    fail_next = False
    fail_with: type = RuntimeError

    def __init__(self):
        self.replays = []
        self.count = 0

    def capture_begin(self, capture_error_mode="global"):
        assert capture_error_mode == "thread_local"
        _FakeGraph.capturing = self

    def capture_end(self):
        _FakeGraph.capturing = None
        if _FakeGraph.fail_next:
            _FakeGraph.fail_next = False
            raise _FakeGraph.fail_with("operation not permitted when stream is capturing")

    def replay(self):
        self.count += 1
        for step in self.replays:
            step()


class _FakeEvent:
    log: list[str] = []

    def record(self, stream):
        _FakeEvent.log.append("record")

    def synchronize(self):
        _FakeEvent.log.append("synchronize")


class _FakeStream:
    def wait_stream(self, other):
        pass

    def wait_event(self, event):
        _FakeEvent.log.append("wait")


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "Stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(GraphCache, "usable", lambda self, tensors: self.active)
    _FakeEvent.log.clear()
    _FakeGraph.capturing = None
    _FakeGraph.fail_next = False
    _FakeGraph.fail_with = RuntimeError
    return monkeypatch


def _fn(calls):
    def fn(a, b):
        calls.append(1)
        out = a * 2 + b
        g = _FakeGraph.capturing
        if g is not None:  # what the captured kernels would recompute on replay
            g.replays.append(lambda: out.copy_(a * 2 + b))
        return out

    return fn


def _setup(capacity: int = 4):
    """A cache, the list of the function's calls, and the function (``a * 2 + b``)."""
    calls: list = []
    return GraphCache(capacity=capacity), calls, _fn(calls)


def test_capture_then_replay_on_new_values(fake_cuda):
    cache, calls, fn = _setup(2)
    a, b = torch.arange(4.0), torch.ones(4)
    first = cache(fn, (a, b))
    assert torch.equal(first, a * 2 + b) and len(cache) == 1 and len(calls) == 2  # warm-up + capture
    outs = []
    for _ in range(3):
        a2, b2 = torch.randn(4), torch.randn(4)
        outs.append((cache(fn, (a2, b2)), a2 * 2 + b2))
    assert len(calls) == 2  # replays, no new calls
    for got, want in outs:  # each result is its own copy, not the static output
        assert torch.equal(got, want)
    assert torch.equal(first, a * 2 + b)
    # a call after the capture waits for the warm-up's use of the buffers; each replay records
    assert _FakeEvent.log[:3] == ["record", "wait", "record"]


def test_strided_and_empty_inputs(fake_cuda):
    cache, calls, fn = _setup()
    cache(fn, (torch.zeros(2, 3), torch.zeros(2, 3)))
    x = torch.randn(3, 2).t()  # strided view: copied into the contiguous static buffer
    assert torch.equal(cache(fn, (x, torch.ones(2, 3))), x * 2 + 1)
    e = torch.zeros(2, 0)
    assert cache(fn, (e, e)).shape == (2, 0) and cache(fn, (e, e)).shape == (2, 0)


def test_signatures_evict_least_recently_used(fake_cuda):
    cache, calls, fn = _setup(2)
    for n in (3, 4, 3, 5):  # 4 is least recently used when 5 arrives
        cache(fn, (torch.ones(n), torch.ones(n)))
    assert len(cache) == 2 and len(calls) == 6
    assert "synchronize" in _FakeEvent.log  # the evicted entry's last use finished first
    cache(fn, (torch.ones(3), torch.ones(3)))
    assert len(calls) == 6  # 3 still cached
    cache(fn, (torch.ones(4), torch.ones(4)))
    assert len(calls) == 8  # 4 captured again
    assert cache(fn, (torch.ones(4), torch.ones(4)), key="other").shape == (4,)  # the key is part of it
    assert len(calls) == 10
    cache.clear()
    assert len(cache) == 0


def test_failed_capture_runs_eagerly_from_then_on(fake_cuda):
    cache, calls, fn = _setup()
    _FakeGraph.fail_next = True
    a = torch.ones(3)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        assert torch.equal(cache(fn, (a, a)), a * 3)
    assert len(cache) == 0 and len(cache.failures) == 1
    assert "not permitted" in next(iter(cache.failures.values()))
    assert not cache.enabled  # a failed capture may leave allocator state behind: no more captures
    b = torch.full((3,), 2.0)
    assert torch.equal(cache(fn, (b, b)), b * 3) and len(calls) == 3  # eager, no second capture


def test_out_of_memory_during_capture_is_not_remembered(fake_cuda):
    cache, calls, fn = _setup()
    _FakeGraph.fail_next, _FakeGraph.fail_with = True, torch.cuda.OutOfMemoryError
    a = torch.ones(3)
    assert torch.equal(cache(fn, (a, a)), a * 3)
    assert len(cache) == 0 and not cache.failures and cache.enabled
    cache(fn, (a, a))  # tried again, captured this time
    assert len(cache) == 1


def test_the_function_may_call_the_cache_and_other_threads_are_not_blocked(fake_cuda):
    import threading

    cache, calls, fn = _setup()
    inner = lambda x: cache(lambda y: y + 1, (x,), key="inner")  # the lock is not held while fn runs
    done = []

    def run():
        done.append(cache(lambda x: inner(x) * 2, (torch.ones(2),), key="outer"))

    t = threading.Thread(target=run, daemon=True)  # a deadlock fails the test instead of hanging it
    t.start()
    t.join(10)
    assert not t.is_alive() and torch.equal(done[0], torch.full((2,), 4.0))


def test_disabled_cache_calls_the_function(fake_cuda):
    cache, calls, fn = _setup()
    with cache.disabled():
        for _ in range(3):
            cache(fn, (torch.ones(2), torch.ones(2)))
    assert len(calls) == 3 and len(cache) == 0 and cache.enabled
    cache.enabled = False
    with cache.disabled():  # the setting before comes back, whatever it was
        pass
    assert not cache.enabled
    for _ in range(2):
        cache(fn, (torch.ones(2), torch.ones(2)))
    assert len(calls) == 5 and len(cache) == 0


def test_disabled_is_per_thread_and_nests(fake_cuda):
    import threading

    cache, calls, fn = _setup()
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other():
        try:
            inside.wait(10)
            seen["active"] = cache.active
            cache(fn, (torch.ones(2), torch.ones(2)))  # captures: this thread is not inside disabled()
        finally:
            release.set()

    t = threading.Thread(target=other, daemon=True)  # a regression fails the test instead of hanging it
    t.start()
    try:
        with cache.disabled():
            with cache.disabled():
                pass
            assert not cache.active  # the inner block ending does not re-enable the outer one
            inside.set()
            release.wait(10)
            assert not cache.active
    finally:
        inside.set()
        t.join(10)
    assert seen["active"] is True and len(cache) == 1 and cache.active


def test_cpu_calls_pass_through_and_capacity_is_checked():
    cache = GraphCache()
    a = torch.arange(3)
    assert not cache.usable((a,))
    assert torch.equal(cache(lambda x: x + 1, (a,)), a + 1) and len(cache) == 0
    with pytest.raises(ValueError, match="capacity"):
        GraphCache(capacity=0)


def test_environment_switch(monkeypatch):
    monkeypatch.setenv("FASTORALS_CUDA_GRAPHS", "0")
    assert not GraphCache().enabled
    monkeypatch.setenv("FASTORALS_CUDA_GRAPHS", "1")
    assert GraphCache().enabled
    assert _graphs.__all__ == ["GraphCache"]


def _packed(a_vals, b_vals, gap: int = 3):
    """int32 ``a`` and float64 ``b`` as views of one byte buffer (as a packed host-to-device copy makes)."""
    n = len(a_vals)
    buf = torch.zeros(64 + 8 * n + 8 * gap, dtype=torch.uint8)
    a = buf[:4 * n].view(torch.int32)
    b = buf[32 + 8 * gap:32 + 8 * gap + 8 * n].view(torch.float64)
    a.copy_(torch.tensor(a_vals))
    b.copy_(torch.tensor(b_vals))
    return a, b


class _CountingSpanCopies:
    def __init__(self, monkeypatch):
        self.spans = 0
        real = _graphs._byte_span

        def span(t, lo, hi):
            self.spans += 1
            return real(t, lo, hi)

        monkeypatch.setattr(_graphs, "_byte_span", span)


def test_views_of_one_buffer_are_copied_as_one_span(fake_cuda):
    count = _CountingSpanCopies(fake_cuda)
    cache, calls, fn = _setup()
    a, b = _packed([1, 2, 3], [0.5, 0.25, 4.0])
    assert torch.equal(cache(fn, (a, b)), a * 2 + b)
    entry = next(iter(cache._entries.values()))
    assert entry.layout.singles == [] and len(entry.spans) == 1
    assert entry.statics[0].dtype == torch.int32 and entry.statics[1].dtype == torch.float64
    # the buffers are views of the span with the callers' offsets: the int32s start at byte 0, the
    # float64s after the gap
    assert entry.statics[1].data_ptr() - entry.statics[0].data_ptr() == b.data_ptr() - a.data_ptr()
    before = count.spans
    for k in range(3):
        a2, b2 = _packed([k, -k, 7 * k], [k / 3, -1.5, 1e9])
        assert torch.equal(cache(fn, (a2, b2)), a2 * 2 + b2)
    assert len(calls) == 2 and count.spans - before == 3  # one span copy per call, no new capture


def test_a_changed_layout_is_another_signature(fake_cuda):
    cache, calls, fn = _setup()
    a, b = _packed([1, 2], [3.0, 4.0])
    cache(fn, (a, b))
    # same shapes and dtypes: separate tensors, then views at other offsets of one buffer
    sep = (torch.tensor([5, 6], dtype=torch.int32), torch.tensor([7.0, 8.0], dtype=torch.float64))
    assert torch.equal(cache(fn, sep), sep[0] * 2 + sep[1])
    a3, b3 = _packed([9, 10], [11.0, 12.0], gap=1)
    assert torch.equal(cache(fn, (a3, b3)), a3 * 2 + b3)
    assert len(cache) == 3 and len(calls) == 6
    a4, b4 = _packed([-1, -2], [0.5, 0.5], gap=1)  # the third layout again: replayed
    assert torch.equal(cache(fn, (a4, b4)), a4 * 2 + b4) and len(calls) == 6


def test_same_tensor_twice_and_strided_views_of_one_buffer(fake_cuda):
    cache, calls, fn = _setup()
    base = torch.arange(12.0).view(3, 4)
    col, row = base[:2, :3], base.t()[1:3, :3]  # overlapping views [2, 3], one transposed
    assert torch.equal(cache(fn, (col, row)), col * 2 + row)
    entry = next(iter(cache._entries.values()))
    assert len(entry.spans) == 1 and entry.statics[1].stride() == row.stride()
    base2 = torch.randn(3, 4)
    c2, r2 = base2[:2, :3], base2.t()[1:3, :3]
    assert torch.equal(cache(fn, (c2, r2)), c2 * 2 + r2)
    x = torch.randn(5)
    assert torch.equal(cache(fn, (x, x)), x * 3)
    y = torch.randn(5)
    assert torch.equal(cache(fn, (y, y)), y * 3) and len(calls) == 4


def test_replay_only_serves_captured_signatures(fake_cuda):
    cache, calls, fn = _setup()
    a, b = torch.ones(3), torch.ones(3)
    assert cache.replay((a, b)) is None  # nothing captured
    cache(fn, (a, b))
    a2 = torch.arange(3.0)
    assert torch.equal(cache.replay((a2, b)), a2 * 2 + 1)
    assert cache.replay((a2, b), key="other") is None and cache.replay((torch.ones(4), torch.ones(4))) is None
    with cache.disabled():
        assert cache.replay((a2, b)) is None
    assert len(calls) == 2


def test_views_scattered_over_a_large_storage_are_copied_one_by_one(fake_cuda):
    cache, calls, fn = _setup()
    big = torch.randn(4, 1000)
    a, b = big[:, :2], big[:, 998:]  # 64 bytes viewed out of 16,000
    assert torch.equal(cache(fn, (a, b)), a * 2 + b)
    entry = next(iter(cache._entries.values()))
    assert entry.spans == [] and entry.layout.singles == [0, 1]
    big2 = torch.randn(4, 1000)
    assert torch.equal(cache(fn, (big2[:, :2], big2[:, 998:])), big2[:, :2] * 2 + big2[:, 998:])
    assert len(calls) == 2


def test_each_call_copies_its_own_span(fake_cuda):
    # the same layout further into another buffer: the signature matches, the bytes come from
    # where this call's views are
    cache, calls, fn = _setup()
    a, b = _packed([1, 2], [3.0, 4.0])
    cache(fn, (a, b))
    buf = torch.zeros(256, dtype=torch.uint8)
    a2 = buf[16:24].view(torch.int32)
    b2 = buf[16 + 32 + 24:16 + 32 + 24 + 16].view(torch.float64)
    assert b2.data_ptr() - a2.data_ptr() == b.data_ptr() - a.data_ptr()
    a2.copy_(torch.tensor([50, 60]))
    b2.copy_(torch.tensor([-20.0, 0.5]))
    size = buf.untyped_storage().nbytes()
    assert torch.equal(cache(fn, (a2, b2)), torch.tensor([80.0, 120.5], dtype=torch.float64))
    assert len(calls) == 2 and buf.untyped_storage().nbytes() == size  # replayed; the buffer untouched


def test_lazy_conj_and_neg_views_are_not_copied_as_raw_bytes(fake_cuda):
    cache, calls, fn = _setup()
    x = torch.tensor([1 + 2j, 3 - 1j])
    assert torch.equal(cache(fn, (x, x.conj())), x * 2 + x.conj())
    y = torch.tensor([2 - 1j, -1 + 4j])
    assert torch.equal(cache(fn, (y, y.conj())), y * 2 + y.conj())
    z = torch.tensor([1.0, -2.0])
    assert torch.equal(cache(fn, (z, torch._neg_view(z))), z * 2 - z)


def test_storages_that_start_at_one_address_are_not_one_group(fake_cuda):
    np = pytest.importorskip("numpy")
    cache, calls, fn = _setup()
    arr = np.arange(8, dtype=np.float32)
    a, b = torch.from_numpy(arr[:2]), torch.from_numpy(arr[:4])[2:]  # two storages over one allocation
    assert torch.equal(cache(fn, (a, b)), a * 2 + b)
    entry = next(iter(cache._entries.values()))
    assert entry.spans == [] and entry.layout.singles == [0, 1]
