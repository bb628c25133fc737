"""GPT: KV-cache decoding equals full recompute at every step; windows, resets, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastorals
from fastorals.testing import assert_close, assert_raises
from fastorals.transformer import GPT, GPTConfig, KVCache

torch.set_default_dtype(torch.float32)


def _model(kind="feat", pos="learned", n_layer=2, n_head=2, n_embd=32, block_size=48, **kw):
    extra = {"tok": dict(vocab_size=11), "feat": dict(input_dim=5, output_dim=3), "emb": {}}[kind]
    torch.manual_seed(0)
    return GPT(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, pos=pos, **extra, **kw).double().eval()


def _inputs(kind, B, T, model=None):
    if kind == "tok":
        return torch.randint(0, 11, (B, T))
    width = 5 if kind == "feat" else model.config.n_embd
    return torch.randn(B, T, width, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["tok", "feat", "emb"])
@pytest.mark.parametrize("pos", ["learned", "rope", "none"])
def test_step_equals_full_recompute_every_step(kind, pos):
    m = _model(kind, pos)
    B, L = 3, 17
    x = _inputs(kind, B, L, m)
    full = m(x)
    cache = m.make_cache(B, 48)
    for t in range(L):
        out = m.step(x[:, t : t + 1], cache)
        assert_close(out[:, 0], full[:, t], msg=f"step {t}")
        assert_close(out[:, 0], m(x[:, : t + 1])[:, -1])
    assert cache.lens.tolist() == [L] * B


def test_prompt_then_multi_token_steps():
    m = _model("feat", "rope")
    x = _inputs("feat", 2, 20)
    full = m(x)
    cache = m.make_cache(2)
    outs = [m.step(x[:, :7], cache)]  # prompt of 7 (flash path)
    for t0 in range(7, 20, 3):  # then 3 (decode path), ragged tail
        outs.append(m.step(x[:, t0 : t0 + 3], cache))
    assert_close(torch.cat(outs, 1), full)


def test_ragged_new_tokens_and_independent_resets():
    m = _model("tok", "learned", n_layer=3, block_size=64)
    B = 4
    cache = m.make_cache(B, 64)
    hist: list[list[int]] = [[] for _ in range(B)]
    g = torch.Generator().manual_seed(3)
    for step in range(14):
        if step == 6:
            cache.reset(torch.tensor([True, False, False, True]))
            hist[0], hist[3] = [], []
        if step == 9:
            cache.reset([2])
            hist[2] = []
        T = 3
        x = torch.randint(0, 11, (B, T), generator=g)
        new = torch.randint(0, T + 1, (B,), generator=g)
        x_pad = x.masked_fill(torch.arange(T)[None] >= new[:, None], -5)  # garbage ids in padding
        out = m.step(x_pad, cache, new_lens=new)
        for b in range(B):
            n = int(new[b])
            hist[b] += x[b, :n].tolist()
            assert int(cache.lens[b]) == len(hist[b])
            if n:
                ref = m(torch.tensor([hist[b]]))[0, -n:]
                assert_close(out[b, :n], ref, msg=f"step {step} seq {b}")


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_reprefill_window_is_exact(pos):
    m = _model("feat", pos, block_size=16)
    B = 3
    cache = m.make_cache(B, 12, window="reprefill", slide=5)
    hist: list[list[torch.Tensor]] = [[] for _ in range(B)]
    for t in range(40):
        T = 2 if t % 3 == 0 else 1
        x = _inputs("feat", B, T)
        if t == 17:
            cache.reset([1])
            hist[1] = []
        out = m.step(x, cache)
        for b in range(B):
            hist[b] += list(x[b])
            L = int(cache.lens[b])
            assert L <= 12 and L >= min(len(hist[b]), 12 - 5)
            window = torch.stack(hist[b][-L:])[None]
            assert_close(out[b], m(window)[0, -T:], msg=f"t={t} b={b}")


def _shift_error(n_layer: int) -> float:
    m = _model("feat", "rope", n_layer=n_layer, block_size=16)
    cache = m.make_cache(2, 12, window="shift", slide=4)
    hist: list[list[torch.Tensor]] = [[], []]
    err = 0.0
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.randn(2, 1, 5, generator=g, dtype=torch.float64)
        out = m.step(x, cache)
        for b in range(2):
            hist[b] += list(x[b])
            window = torch.stack(hist[b][-int(cache.lens[b]):])[None]
            err = max(err, (out[b] - m(window)[0, -1:]).abs().max().item())
    return err


def test_shift_window_exact_for_one_layer_approximate_deeper():
    assert _shift_error(1) < 1e-12  # RoPE: relative positions survive the shift exactly
    deep = _shift_error(2)
    assert 1e-6 < deep < 1.0  # deeper layers keep stale context: a real, bounded approximation


def test_error_window_and_bad_cache():
    m = _model("feat", "learned", block_size=16)
    cache = m.make_cache(2, 4)
    m.step(_inputs("feat", 2, 3), cache)
    with assert_raises(ValueError, "max_len=4", "reset", "reprefill"):
        m.step(_inputs("feat", 2, 2), cache)
    cache.reset([0, 1])
    m.step(_inputs("feat", 2, 2), cache)
    with assert_raises(ValueError, "shift", "rope"):
        m.make_cache(2, 8, window="shift")
    with assert_raises(ValueError, "block_size"):
        m.make_cache(2, 32)
    with assert_raises(ValueError, "layers/heads/head_dim"):
        m.step(_inputs("feat", 2, 1), KVCache(2, 3, 2, 16, 8, dtype=torch.float64))
    with assert_raises(ValueError, "batch 3", "2 sequences"):
        m.step(_inputs("feat", 3, 1), cache)
    with assert_raises(ValueError, "max_len=4"):
        m.step(_inputs("feat", 2, 5), cache)
    with assert_raises(ValueError, "new_lens", "[0, 1]"):
        m.step(_inputs("feat", 2, 1), cache, new_lens=torch.tensor([1, 2]))
    with assert_raises(TypeError, "cache", "KVCache"):
        m.step(_inputs("feat", 2, 1), None)


def test_bad_inputs_and_configs():
    m = _model("feat")
    with assert_raises(ValueError, "(B, T, 5)", "input_dim"):
        m(torch.randn(2, 3, 4, dtype=torch.float64))
    with assert_raises(ValueError, "integer token ids"):
        _model("tok")(torch.randn(2, 3))
    with assert_raises(ValueError, "vocab_size=11", "max 11"):
        _model("tok")(torch.tensor([[0, 11]]))
    with assert_raises(ValueError, "vocab_size=11", "min -1"):
        _model("tok")(torch.tensor([[-1, 3]]))
    with assert_raises(ValueError, "block_size=48"):
        m(torch.randn(1, 49, 5, dtype=torch.float64))
    with assert_raises(ValueError, "lengths", "(2,)"):
        m(torch.randn(2, 3, 5, dtype=torch.float64), lengths=torch.tensor([1, 2, 3]))
    with assert_raises(ValueError, "n_embd", "divisible", "n_head"):
        GPTConfig(n_embd=30, n_head=4)
    with assert_raises(ValueError, "not both"):
        GPTConfig(vocab_size=3, input_dim=3)
    with assert_raises(ValueError, "rope", "even head dim"):
        GPTConfig(n_embd=18, n_head=2, pos="rope")
    with assert_raises(ValueError, "pos"):
        GPTConfig(pos="alibi")
    with assert_raises(ValueError, "attn_dropout"):
        GPTConfig(attn_dropout=1.5)
    with assert_raises(ValueError, "tie_weights"):
        GPTConfig(input_dim=3, tie_weights=True)
    with assert_raises(TypeError, "not both"):
        GPT(GPTConfig(), n_layer=2)


def test_forward_with_lengths_matches_truncated_sequences():
    m = _model("tok", "rope")
    x = torch.randint(0, 11, (3, 12))
    lengths = torch.tensor([12, 5, 1])
    out = m(x, lengths)
    for b in range(3):
        n = int(lengths[b])
        assert_close(out[b, :n], m(x[b : b + 1, :n])[0])


def test_backward_matches_reference_backend():
    m = _model("feat", "rope")
    x = _inputs("feat", 2, 9)
    lengths = torch.tensor([9, 6])
    m(x, lengths).square().sum().backward()
    g_fast = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    with fastorals.use_backend("reference"):
        m(x, lengths).square().sum().backward()
    for n, p in m.named_parameters():
        assert_close(g_fast[n], p.grad, kind="grad", msg=n)


def test_dropout_training_vs_eval_and_step_ignores_dropout():
    m = _model("feat", "learned", dropout=0.2, attn_dropout=0.3)
    x = _inputs("feat", 2, 10)
    m.eval()
    ref = m(x)
    assert_close(m(x), ref)
    m.train()
    a, b = m(x), m(x)
    assert not torch.allclose(a, b)
    cache = m.make_cache(2)
    steps = torch.cat([m.step(x[:, t : t + 1], cache) for t in range(10)], 1)  # still in train mode
    assert_close(steps, ref)


def test_low_precision_cache_and_tied_weights():
    torch.manual_seed(0)
    m = GPT(vocab_size=13, n_layer=2, n_head=2, n_embd=32, tie_weights=True).eval()
    assert m.head.weight is m.embed.weight and m(torch.randint(0, 13, (1, 4))).shape == (1, 4, 13)
    x = torch.randint(0, 13, (2, 10))
    full = m(x)
    cache = m.make_cache(2, 16, dtype=torch.bfloat16)
    out = torch.cat([m.step(x[:, t : t + 1], cache) for t in range(10)], 1)
    assert out.dtype == torch.float32
    assert_close(out, full, atol=5e-2, rtol=5e-2)


@settings(max_examples=15)
@given(
    n_layer=st.integers(1, 2), n_head=st.integers(1, 3), head_dim=st.sampled_from([2, 3, 8]),
    pos=st.sampled_from(["learned", "rope", "none"]), seed=st.integers(0, 1000),
    plan=st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=6),
)
def test_property_decoding_equals_recompute(n_layer, n_head, head_dim, pos, seed, plan):
    if pos == "rope" and head_dim % 2:
        head_dim += 1
    torch.manual_seed(seed)
    m = GPT(input_dim=3, output_dim=2, n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim,
            block_size=32, pos=pos).double().eval()
    B = 2
    cache = m.make_cache(B, 32)
    hist: list[list[torch.Tensor]] = [[], []]
    g = torch.Generator().manual_seed(seed)
    for T, reset_first in plan:
        if reset_first:
            cache.reset([0])
            hist[0] = []
        x = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
        out = m.step(x, cache)
        for b in range(B):
            hist[b] += list(x[b])
            assert_close(out[b], m(torch.stack(hist[b])[None])[0, -T:])


def test_works_without_extension():
    code = (
        "import torch; from fastorals.transformer import GPT; import fastorals._ext as e; assert not e.HAS_EXT;"
        "m = GPT(input_dim=3, output_dim=2, n_layer=1, n_head=2, n_embd=8).eval(); c = m.make_cache(2, 8);"
        "x = torch.randn(2, 5, 3); s = torch.cat([m.step(x[:, t:t+1], c) for t in range(5)], 1);"
        "assert torch.allclose(s, m(x), atol=1e-5)"
    )
    env = dict(os.environ, FASTORALS_NO_EXT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
def test_float32_decoding_each_cpu_backend(backend):
    if backend == "cpp" and fastorals._ext.ext_topic("attention") is None:
        pytest.skip("C++ extension not built")
    torch.manual_seed(0)
    m = GPT(input_dim=5, output_dim=3, n_layer=2, n_head=2, n_embd=32, block_size=32, pos="rope").eval()
    B = 3
    x = torch.randn(B, 20, 5)
    cache = m.make_cache(B, 32)
    outs = []
    with fastorals.use_backend(backend):
        outs.append(m.step(x[:, :4], cache))
        cache.reset([1])  # sequence 1 restarts: the batch becomes ragged
        outs.append(m.step(x[:, 4:6], cache))
        for t in range(6, 20):
            outs.append(m.step(x[:, t : t + 1], cache))
    out = torch.cat(outs, 1)
    full = m(x)
    assert_close(out[[0, 2]], full[[0, 2]])
    assert_close(out[1, 4:], m(x[1:2, 4:])[0])


def test_window_error_helper():
    from fastorals.transformer import window_error

    x = torch.randn(2, 30, 5, dtype=torch.float64)
    one = _model("feat", "rope", n_layer=1, block_size=16)
    two = _model("feat", "rope", n_layer=2, block_size=16)
    assert window_error(one, x, max_len=10, slide=3, window="shift").max() < 1e-12
    assert window_error(two, x, max_len=10, slide=3, window="reprefill").max() < 1e-12
    err = window_error(two, x, max_len=10, slide=3, window="shift")
    assert err[:10].max() < 1e-12 and err[10:].max() > 1e-6  # exact until the first slide
    with assert_raises(ValueError, "window", "shift"):
        window_error(two, x, max_len=10, slide=3, window="error")


@pytest.mark.slow
def test_torch_compile_fullgraph_cpu():
    m = _model("feat", "rope").float()
    x = torch.randn(2, 16, 5)
    compiled = torch.compile(m, fullgraph=True)
    assert_close(compiled(x), m(x))


def test_zero_length_chunks_and_empty_resets_are_no_ops():
    torch.manual_seed(0)
    m = _model("feat").eval()
    cache = m.make_cache(3, 16)
    x = torch.randn(3, 4, m.config.input_dim, dtype=torch.float64)
    m.step(x, cache)
    before = (cache.lens.clone(), cache.k.clone())
    out = m.step(torch.randn(3, 0, m.config.input_dim, dtype=torch.float64), cache)
    assert out.shape == (3, 0, m.config.output_dim)
    cache.reset([])  # e.g. done.nonzero().flatten().tolist() on a step where nothing finished
    cache.reset(torch.zeros(0, dtype=torch.long))
    assert torch.equal(cache.lens, before[0]) and torch.equal(cache.k, before[1])


def test_a_refused_step_leaves_the_cache_as_it_was():
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=10, block_size=8)).eval()
    cache = m.make_cache(2, 4, window="reprefill", slide=2)
    m.step(torch.randint(0, 10, (2, 4)), cache)  # full: the next token would make room first
    lens, k = cache.lens.clone(), cache.k.clone()
    with assert_raises(ValueError, "token ids", "vocab_size=10"):
        m.step(torch.full((2, 1), 12), cache)
    assert torch.equal(cache.lens, lens) and torch.equal(cache.k, k)
    ragged = torch.tensor([[3, 99], [4, 5]])  # id 99 sits in a padded slot of row 0: not a token
    m.step(ragged, cache, new_lens=torch.tensor([1, 2]))


def test_inputs_and_config_values_are_named():
    import numpy as np

    m = _model("feat")
    with assert_raises(TypeError, "x", "float32", "float64"):  # a float64 model
        m(torch.randn(2, 3, m.config.input_dim, dtype=torch.float32))
    with assert_raises(ValueError, "vocab_size", "int"):
        GPTConfig(vocab_size=True)
    with assert_raises(ValueError, "dropout", "None"):
        GPTConfig(dropout=None)
    with assert_raises(ValueError, "mlp_ratio"):
        GPTConfig(mlp_ratio=float("nan"))
    cfg = GPTConfig(n_layer=np.int64(2), n_head=np.int32(2), n_embd=16, input_dim=np.int64(3))
    assert type(cfg.n_layer) is int and type(cfg.input_dim) is int
    assert KVCache(np.int64(2), 1, 1, 4, 8, slide=np.int64(2)).batch == 2
