"""KVCache: writes at per-sequence positions, resets, window moves, (de)serialisation, errors."""

from __future__ import annotations

import torch

from fastorals.testing import assert_close, assert_raises
from fastorals.transformer import KVCache


def _kv(n, H, T, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, H, T, D, generator=g), torch.randn(n, H, T, D, generator=g)


def test_write_advance_per_sequence_positions():
    c = KVCache(3, 2, 2, 4, 10)
    c.lens[:] = torch.tensor([0, 4, 7])
    k, v = _kv(3, 2, 3, 4)
    c.write(1, k, v)
    for b, start in enumerate((0, 4, 7)):
        assert_close(c.k[1, b, :, start : start + 3], k[b])
        assert_close(c.v[1, b, :, start : start + 3], v[b])
    assert (c.k[0] == 0).all()  # other layer untouched
    c.advance(3)
    assert c.lens.tolist() == [3, 7, 10]


def test_write_ragged_rows_and_uniform_slice_path():
    c = KVCache(3, 1, 2, 4, 8)
    k, v = _kv(3, 2, 3, 4)
    new = torch.tensor([3, 0, 1])
    c.write(0, k, v, new_lens=new)
    assert_close(c.k[0, 0, :, :3], k[0])
    assert (c.k[0, 1] == 0).all()
    assert_close(c.k[0, 2, :, :1], k[2, :, :1]) and (c.k[0, 2, :, 1:] == 0).all()
    c.advance(new)
    assert c.lens.tolist() == [3, 0, 1]
    # rows subset
    k2, v2 = _kv(1, 2, 2, 4, 1)
    c.write(0, k2, v2, rows=torch.tensor([1]))
    assert_close(c.v[0, 1, :, :2], v2[0])
    c.advance(2, rows=torch.tensor([1]))
    assert c.lens.tolist() == [3, 2, 1]
    # uniform lengths: slice copy gives the same as the scatter
    a, b = KVCache(2, 1, 2, 4, 8), KVCache(2, 1, 2, 4, 8)
    a.lens[:] = 5
    b.lens[:] = 5
    a.write(0, k[:2], v[:2], start=5)
    b.write(0, k[:2], v[:2])
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)


def test_reset_selections():
    c = KVCache(4, 1, 1, 2, 6)
    c.lens[:] = torch.tensor([1, 2, 3, 4])
    c.reset(torch.tensor([False, True, False, True]))
    assert c.lens.tolist() == [1, 0, 3, 0]
    c.reset([0])
    c.reset(-2)
    assert c.lens.tolist() == [0, 0, 0, 0]
    c.lens[:] = 3
    c.reset()
    assert c.lens.tolist() == [0] * 4
    with assert_raises(ValueError, "boolean row mask", "(4,)"):
        c.reset(torch.tensor([True, False]))
    with assert_raises(ValueError, "row indices", "[0, 4)"):
        c.reset([4])
    with assert_raises(TypeError, "indices or a boolean mask"):
        c.reset(torch.tensor([0.5]))


def test_drop_oldest_uniform_and_ragged():
    for drops in ([2, 2], [1, 3]):
        c = KVCache(2, 2, 1, 3, 6)
        c.k.copy_(torch.arange(c.k.numel(), dtype=torch.float32).view_as(c.k))
        c.v.copy_(-c.k)
        c.inputs = torch.arange(12.0).view(2, 6)
        before_k, before_in = c.k.clone(), c.inputs.clone()
        c.lens[:] = torch.tensor([6, 5])
        c.drop_oldest(torch.tensor([0, 1]), torch.tensor(drops))
        assert c.lens.tolist() == [6 - drops[0], 5 - drops[1]]
        for b, d in enumerate(drops):
            n = int(c.lens[b])
            assert torch.equal(c.k[:, b, :, :n], before_k[:, b, :, d : d + n])
            assert torch.equal(c.v[:, b, :, :n], -before_k[:, b, :, d : d + n])
            assert torch.equal(c.inputs[b, :n], before_in[b, d : d + n])


def test_state_dict_roundtrip_and_repr():
    c = KVCache(2, 1, 2, 4, 5, window="reprefill", slide=2)
    k, v = _kv(2, 2, 3, 4)
    c.write(0, k, v)
    c.advance(3)
    d = KVCache(2, 1, 2, 4, 5)
    d.load_state_dict(c.state_dict())
    assert torch.equal(d.k, c.k) and torch.equal(d.lens, c.lens) and d.window == "reprefill" and d.slide == 2
    assert "window='reprefill'" in repr(c) and "max_len=5" in repr(c)
    with assert_raises(ValueError, "load_state_dict", "k", "shape"):
        KVCache(2, 1, 2, 4, 6).load_state_dict(c.state_dict())


def test_constructor_errors():
    with assert_raises(ValueError, "batch", "an int >= 1"):
        KVCache(0, 1, 1, 1, 1)
    with assert_raises(ValueError, "max_len"):
        KVCache(1, 1, 1, 1, 2.5)
    with assert_raises(TypeError, "dtype"):
        KVCache(1, 1, 1, 1, 4, dtype=torch.int32)
    with assert_raises(ValueError, "window", "reprefill"):
        KVCache(1, 1, 1, 1, 4, window="ring")
    with assert_raises(ValueError, "slide", "[1, max_len=4]"):
        KVCache(1, 1, 1, 1, 4, slide=5)
    c = KVCache(2, 3, 4, 8, 16, dtype=torch.bfloat16)
    assert (c.batch, c.layers, c.heads, c.head_dim, c.max_len, c.dtype) == (2, 3, 4, 8, 16, torch.bfloat16)
    assert c.slide == 4
