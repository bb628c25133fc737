"""flash_attention / decode_attention on the CPU paths (SDPA "torch" backend and the reference)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals.testing import assert_close, assert_raises, make_noncontiguous
from fastorals.transformer import decode_attention, flash_attention
from fastorals.transformer import reference as R


def _qkv(B, H, Lq, Lk, D, dtype=torch.float32, grad=False):
    q = torch.randn(B, H, Lq, D, dtype=dtype)
    k = torch.randn(B, H, Lk, D, dtype=dtype)
    v = torch.randn(B, H, Lk, D, dtype=dtype)
    if grad:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    return q, k, v


def _naive(q, k, v, causal_lower_right, q_lens=None, kv_lens=None):
    """Per-row loop: an independent statement of the semantics (float64)."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    out = torch.zeros(B, H, Lq, D, dtype=torch.float64)
    for b in range(B):
        ql = Lq if q_lens is None else int(q_lens[b])
        kl = Lk if kv_lens is None else int(kv_lens[b])
        for i in range(ql):
            last = kl - 1 if not causal_lower_right else min(kl - 1, i + kl - ql)
            if last < 0:
                continue
            s = q[b, :, i : i + 1].double() @ k[b, :, : last + 1].double().transpose(-1, -2) / math.sqrt(D)
            out[b, :, i] = (torch.softmax(s, -1) @ v[b, :, : last + 1].double())[:, 0]
    return out


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 7, 7, 32), (1, 2, 5, 13, 64), (2, 1, 13, 5, 18), (1, 1, 1, 1, 128),
                                   (2, 2, 97, 97, 20)])
def test_matches_naive_loop(backend, causal, shape):
    B, H, Lq, Lk, D = shape
    q, k, v = _qkv(B, H, Lq, Lk, D, torch.float64)
    with fastorals.use_backend(backend):
        out = flash_attention(q, k, v, causal=causal)
    assert_close(out, _naive(q, k, v, causal))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [True, False])
def test_ragged_lengths_forward_backward(dtype, causal):
    B, H, Lq, Lk, D = 4, 2, 11, 17, 32
    q, k, v = _qkv(B, H, Lq, Lk, D, dtype, grad=True)
    q_lens = torch.tensor([11, 0, 3, 7])
    kv_lens = torch.tensor([17, 5, 1, 6])  # row 3: causal q_lens > kv_lens gives empty rows
    out = flash_attention(q, k, v, causal=causal, q_lens=q_lens, kv_lens=kv_lens)
    ref = R.attention(q.detach().double(), k.detach().double(), v.detach().double(), causal=causal,
                      q_lens=q_lens, kv_lens=kv_lens)
    assert_close(out, ref.to(dtype))
    assert_close(out.double(), _naive(q.detach(), k.detach(), v.detach(), causal, q_lens, kv_lens), dtype=dtype)
    assert torch.isfinite(out).all()
    g = torch.randn_like(out)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), g)
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = R.attention(q2, k2, v2, causal=causal, q_lens=q_lens, kv_lens=kv_lens)
    rq, rk, rv = torch.autograd.grad(ref, (q2, k2, v2), g.double())
    for a, b in ((gq, rq), (gk, rk), (gv, rv)):
        assert torch.isfinite(a).all()
        assert_close(a, b.to(dtype), kind="grad")
    # padded query rows and padded keys get exactly zero gradient
    assert (gq[1] == 0).all() and (gq[2, :, 3:] == 0).all()
    assert (gk[2, :, 1:] == 0).all() and (gv[1, :, 5:] == 0).all()


def test_lower_right_alignment_not_sdpa_top_left():
    # 3 new queries against 10 keys: the queries are the last 3 tokens
    q, k, v = _qkv(1, 2, 3, 10, 16, torch.float64)
    out = flash_attention(q, k, v, causal=True)
    assert_close(out, _naive(q, k, v, True))
    # the same query attends keys 0..7 (lower right), not 0..0 (SDPA's top-left is_causal)
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (out[:, :, 0] - top_left[:, :, 0]).abs().max() > 1e-3
    full = F.scaled_dot_product_attention(q, k[:, :, :8], v[:, :, :8])
    assert_close(out[:, :, 0], full[:, :, 0])


def test_more_queries_than_keys_gives_zero_rows():
    q, k, v = _qkv(2, 2, 9, 4, 16, torch.float64)
    out = flash_attention(q, k, v, causal=True)
    assert (out[:, :, :5] == 0).all()  # queries 0..4 precede every key under lower-right alignment
    assert_close(out, _naive(q, k, v, True))
    _, lse = R.attention_lse(q, k, v, causal=True)
    assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()


def test_gradcheck_float64_torch_path():
    q, k, v = _qkv(2, 2, 6, 9, 8, torch.float64, grad=True)
    ql, kl = torch.tensor([6, 4]), torch.tensor([9, 7])
    for causal in (True, False):
        assert torch.autograd.gradcheck(
            lambda a, b, c, causal=causal: flash_attention(a, b, c, causal=causal, q_lens=ql, kv_lens=kl),
            (q, k, v))


def test_noncontiguous_inputs():
    q, k, v = _qkv(2, 3, 19, 19, 32)
    out = flash_attention(q, k, v)
    qn, kn, vn = make_noncontiguous(q, 2), make_noncontiguous(k, 1), make_noncontiguous(v, 0)
    assert_close(flash_attention(qn, kn, vn), out)
    # (B, L, H, D) layout transposed to (B, H, L, D): the GPT's fused-QKV views
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not qt.is_contiguous()
    assert_close(flash_attention(qt, k, v), out)
    qe = torch.randn(2, 3, 1, 32).expand(2, 3, 19, 32)  # stride 0
    assert_close(flash_attention(qe, k, v), R.attention(qe.contiguous(), k, v))


def test_softmax_scale_and_fp_dtypes():
    q, k, v = _qkv(2, 2, 8, 8, 32, torch.float64)
    out = flash_attention(q, k, v, softmax_scale=0.3)
    assert_close(out, R.attention(q, k, v, softmax_scale=0.3))
    for dtype in (torch.bfloat16, torch.float16):
        o = flash_attention(q.to(dtype), k.to(dtype), v.to(dtype))
        assert o.dtype == dtype
        assert_close(o.double(), R.attention(q, k, v), dtype=dtype, kind="grad")


def test_dropout_torch_path_statistics():
    torch.manual_seed(1)
    q = torch.zeros(8, 4, 64, 16)
    k = torch.zeros(8, 4, 64, 16)
    v = torch.ones(8, 4, 64, 16)
    # uniform attention over the prefix, v = 1: each output is the kept fraction / (1 - p)
    out = flash_attention(q, k, v, causal=False, dropout_p=0.25)
    assert abs(out.mean().item() - 1.0) < 0.02
    assert (out.std() > 0.05).item()
    assert_close(flash_attention(q, k, v, causal=False, dropout_p=0.0), torch.ones_like(out))


def test_decode_attention_matches_reference_ragged():
    B, H, Lmax, D = 5, 2, 23, 32
    kc, vc = torch.randn(B, H, Lmax, D), torch.randn(B, H, Lmax, D)
    kc[:, :, 20:] = float("nan")  # never read: past every kv_len
    kv_lens = torch.tensor([1, 20, 7, 3, 12])
    for T in (1, 3):
        q = torch.randn(B, H, T, D)
        q_lens = torch.tensor([1, T, 0, 1, T])
        for ql in (None, q_lens):
            if ql is None and T > 1:
                kvl = kv_lens.clamp(min=T)
            else:
                kvl = kv_lens
            out = decode_attention(q, kc, vc, kvl, q_lens=ql)
            ref = R.attention(q.double(), kc[:, :, :20].double(), vc[:, :, :20].double(), q_lens=ql,
                              kv_lens=kvl)
            assert_close(out, ref.float())
            with fastorals.use_backend("reference"):
                assert_close(decode_attention(q, torch.nan_to_num(kc), vc, kvl, q_lens=ql), out)


@given(
    B=st.integers(1, 3), H=st.integers(1, 3), Lq=st.integers(1, 24), Lk=st.integers(1, 24),
    D=st.sampled_from([1, 7, 16, 33]), causal=st.booleans(), ragged=st.booleans(), seed=st.integers(0, 2**16),
    scale=st.sampled_from([None, 0.05, 3.0]),
)
def test_property_matches_reference(B, H, Lq, Lk, D, causal, ragged, seed, scale):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64) * 3
    k = torch.randn(B, H, Lk, D, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, H, Lk, D, generator=g, dtype=torch.float64)
    ql = torch.randint(0, Lq + 1, (B,), generator=g) if ragged else None
    kl = torch.randint(0, Lk + 1, (B,), generator=g) if ragged else None
    out = flash_attention(q, k, v, causal=causal, softmax_scale=scale, q_lens=ql, kv_lens=kl)
    ref = R.attention(q, k, v, causal=causal, softmax_scale=scale, q_lens=ql, kv_lens=kl)
    assert_close(out, ref)


def test_extreme_scores_are_stable():
    q, k, v = _qkv(1, 2, 16, 16, 32, torch.float32)
    out = flash_attention(q * 1e3, k * 1e3, v)
    assert torch.isfinite(out).all()
    assert_close(out.double(), R.attention(q.double() * 1e3, k.double() * 1e3, v.double()), dtype=torch.float32)


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(2, 2, 8, 8, 32)
    with assert_raises(ValueError, "head dim", "32", "16"):
        flash_attention(q, k[..., :16], v[..., :16])
    with assert_raises(ValueError, "4-d"):
        flash_attention(q[0], k, v)
    with assert_raises(ValueError, "k and v", "same shape"):
        flash_attention(q, k, v[:, :, :5])
    with assert_raises(ValueError, "heads"):
        flash_attention(q, k[:, :1], v[:, :1])
    with assert_raises(ValueError, "batch"):
        flash_attention(q, k[:1], v[:1])
    with assert_raises(TypeError, "dtype"):
        flash_attention(q, k.double(), v)
    with assert_raises(TypeError, "floating"):
        flash_attention(q.long(), k.long(), v.long())
    with assert_raises(ValueError, "dropout_p"):
        flash_attention(q, k, v, dropout_p=1.0)
    with assert_raises(ValueError, "softmax_scale"):
        flash_attention(q, k, v, softmax_scale=-1.0)
    with assert_raises(ValueError, "kv_lens", "(2,)"):
        flash_attention(q, k, v, kv_lens=torch.tensor([3, 4, 5]))
    with assert_raises(ValueError, "q_lens", "[0, 8]"):
        flash_attention(q, k, v, q_lens=torch.tensor([3, 9]))
    with assert_raises(TypeError, "kv_lens", "integer"):
        flash_attention(q, k, v, kv_lens=torch.tensor([3.0, 4.0]))
    with assert_raises(TypeError, "q must be a torch.tensor"):
        flash_attention(q.numpy(), k, v)
    with assert_raises(ValueError, "kv_lens", "[0, 8]"):
        decode_attention(q[:, :, :1], k, v, torch.tensor([3, 9]))
    with assert_raises(ValueError, "kv_lens", "required"):
        decode_attention(q[:, :, :1], k, v, None)


@pytest.mark.skipif(fastorals._ext.triton_runs_on(torch.device("cpu")), reason="TRITON_INTERPRET=1: Triton runs on CPU")
def test_explicit_triton_backend_on_cpu_raises():
    q, k, v = _qkv(1, 1, 4, 4, 16)
    with assert_raises(fastorals.BackendUnavailableError, "triton"), fastorals.use_backend("triton"):
        flash_attention(q, k, v)


def test_empty_sequences():
    q, k, v = _qkv(2, 2, 0, 5, 16)
    assert flash_attention(q, k, v).shape == (2, 2, 0, 16)
    q, k, v = _qkv(2, 2, 4, 0, 16, grad=True)
    out = flash_attention(q, k, v, causal=False)
    assert out.shape == (2, 2, 4, 16) and (out == 0).all()


# ----------------------------------------------------------------------------- C++ decode kernel

needs_cpp = pytest.mark.skipif(fastorals._ext.ext_topic("attention") is None, reason="C++ extension not built")


@needs_cpp
@pytest.mark.parametrize("D", [1, 16, 18, 32, 64, 128])
@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("causal", [True, False])
def test_cpp_decode_matches_reference(D, T, causal):
    B, H, Lmax = 6, 3, 37
    g = torch.Generator().manual_seed(D * 10 + T)
    kc = torch.randn(B, H, Lmax, D, generator=g)
    vc = torch.randn(B, H, Lmax, D, generator=g)
    kc[:, :, 33:] = float("nan")  # past every kv_len: never read
    vc[:, :, 33:] = float("inf")
    q = torch.randn(B, H, T, D, generator=g) * 2
    kv = torch.tensor([33, 1, 17, 0, 5, 2])
    for ql in (None, torch.tensor([T, 1, 0, T, T, 2]).clamp(max=T)):
        kvl = kv.clamp(min=T) if ql is None else kv
        with fastorals.use_backend("cpp"):
            out = decode_attention(q, kc, vc, kvl, q_lens=ql, causal=causal)
        ref = R.attention(q.double(), kc[:, :, :33].double(), vc[:, :, :33].double(), causal=causal, q_lens=ql,
                          kv_lens=kvl)
        assert torch.isfinite(out).all()
        assert_close(out, ref.float())


@needs_cpp
def test_cpp_decode_bf16_cache_and_extremes():
    from fastorals.transformer.attention import _decode_attention

    B, H, L, D = 4, 2, 50, 64
    kc = (torch.randn(B, H, L, D) * 30).bfloat16()  # large scores: exp underflow paths
    vc = torch.randn(B, H, L, D).bfloat16()
    q = torch.randn(B, H, 1, D)
    kv = torch.tensor([50, 3, 1, 27], dtype=torch.int32)
    with fastorals.use_backend("cpp"):
        out = _decode_attention(q, kc, vc, kv, None, True, 0.125)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = R.attention(q.double(), kc.double(), vc.double(), kv_lens=kv, softmax_scale=0.125)
    assert_close(out, ref.float())


@needs_cpp
def test_cpp_backend_refuses_what_it_cannot_run():
    q, k, v = _qkv(2, 2, 1, 8, 16, torch.float64)
    with assert_raises(fastorals.BackendUnavailableError, "cpp", "float64"), fastorals.use_backend("cpp"):
        decode_attention(q, k, v, torch.tensor([8, 3]))
    q, k, v = _qkv(2, 2, 17, 20, 16)
    with assert_raises(fastorals.BackendUnavailableError, "cpp", "17 new tokens"), fastorals.use_backend("cpp"):
        decode_attention(q, k, v, torch.tensor([20, 17]))
    with fastorals.use_backend("auto"):  # automatic choice falls back to SDPA
        out = decode_attention(q, k, v, torch.tensor([20, 17]))
    assert_close(out, R.attention(q, k, v, kv_lens=torch.tensor([20, 17])))


def test_decode_attention_takes_float32_queries_with_a_half_cache():
    from fastorals.transformer import decode_attention
    from fastorals.transformer import reference as R

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 2, 8, generator=g)
    k, v = torch.randn(3, 2, 10, 8, generator=g), torch.randn(3, 2, 10, 8, generator=g)
    kv_lens = torch.tensor([4, 10, 2])
    for dtype in (torch.bfloat16, torch.float16):
        kc, vc = k.to(dtype), v.to(dtype)
        out = decode_attention(q, kc, vc, kv_lens)
        want = R.attention(q.to(dtype).double(), kc.double(), vc.double(), causal=True, kv_lens=kv_lens)
        assert out.dtype == torch.float32
        assert torch.allclose(out.double(), want, atol=2e-2), (dtype, float((out.double() - want).abs().max()))
    with pytest.raises(TypeError, match="float32 q with a bfloat16/float16 cache"):
        decode_attention(q.double(), k.bfloat16(), v.bfloat16(), kv_lens)
