"""to_device_packed: several host tensors in one copy, each cast and reshaped as asked."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastorals._transfer import to_device_packed

_DTYPES = [torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64, torch.bool]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 4), min_size=0, max_size=3), st.sampled_from(_DTYPES),
                          st.sampled_from(_DTYPES)), min_size=0, max_size=6), st.integers(0, 2**31))
def test_parts_arrive_cast_contiguous_and_aligned(spec, seed):
    g = torch.Generator().manual_seed(seed)
    parts = []
    for shape, src, dst in spec:
        t = torch.randint(0, 100, shape, generator=g).to(src)
        parts.append((t, dst))
    out = to_device_packed(parts, "cpu")
    assert len(out) == len(parts)
    for (t, dt), o in zip(parts, out):
        assert o.dtype == dt and o.shape == t.shape and o.is_contiguous()
        assert torch.equal(o, t.to(dt))
        if o.numel():
            assert o.data_ptr() % 16 == 0
    storages = {o.untyped_storage().data_ptr() for o in out if o.numel()}
    assert len(storages) <= 1  # one buffer, so one copy (and one graph load)


def test_writes_to_one_part_leave_the_others():
    a, b = torch.arange(5), torch.ones(3, dtype=torch.float64)
    x, y = to_device_packed([(a, torch.int32), (b, torch.float64)], "cpu")
    x.fill_(-1)
    assert torch.equal(y, b) and torch.equal(a, torch.arange(5))


def test_non_cpu_parts_are_refused():
    with pytest.raises(ValueError, match="parts: expected CPU tensors"):
        to_device_packed([(torch.empty(2, device="meta"), torch.int32)], "cpu")


@pytest.mark.gpu
def test_gpu_copy_is_asynchronous_and_exact():
    a = torch.randint(-5, 5, (64, 7))
    v = torch.randn(64, 7, dtype=torch.float64)
    f = torch.rand(64) < 0.5
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, y, z = to_device_packed([(a, torch.int32), (v, torch.float64), (f, torch.uint8)], "cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x.is_cuda and torch.equal(x.cpu(), a.int()) and torch.equal(y.cpu(), v)
    assert torch.equal(z.cpu(), f.to(torch.uint8))


def test_the_host_buffer_ignores_the_default_device():
    parts = [(torch.arange(3), torch.int32), (torch.ones(2), torch.float64)]
    with torch.device("meta"):  # as torch.set_default_device("cuda") would: the staging buffer stays on the host
        x, y = to_device_packed(parts, "cpu")
    assert x.device.type == "cpu" and torch.equal(x, torch.arange(3, dtype=torch.int32))
    assert torch.equal(y, torch.ones(2, dtype=torch.float64))
