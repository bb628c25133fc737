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
            raise RuntimeError("operation not permitted when stream is capturing")

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
    monkeypatch.setattr(GraphCache, "usable", lambda self, tensors: self.enabled)
    _FakeEvent.log.clear()
    _FakeGraph.capturing = None
    _FakeGraph.fail_next = False
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


def test_capture_then_replay_on_new_values(fake_cuda):
    cache = GraphCache(capacity=2)
    calls = []
    fn = _fn(calls)
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
    cache = GraphCache()
    calls = []
    fn = _fn(calls)
    cache(fn, (torch.zeros(2, 3), torch.zeros(2, 3)))
    x = torch.randn(3, 2).t()  # strided view: copied into the contiguous static buffer
    assert torch.equal(cache(fn, (x, torch.ones(2, 3))), x * 2 + 1)
    e = torch.zeros(2, 0)
    assert cache(fn, (e, e)).shape == (2, 0) and cache(fn, (e, e)).shape == (2, 0)


def test_signatures_evict_least_recently_used(fake_cuda):
    cache = GraphCache(capacity=2)
    calls = []
    fn = _fn(calls)
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
    cache = GraphCache()
    calls = []
    fn = _fn(calls)
    _FakeGraph.fail_next = True
    a = torch.ones(3)
    assert torch.equal(cache(fn, (a, a)), a * 3)
    assert len(cache) == 0 and len(cache.failures) == 1
    assert "not permitted" in next(iter(cache.failures.values()))
    b = torch.full((3,), 2.0)
    assert torch.equal(cache(fn, (b, b)), b * 3) and len(calls) == 3  # eager, no second capture


def test_disabled_cache_calls_the_function(fake_cuda):
    cache = GraphCache()
    calls = []
    fn = _fn(calls)
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
