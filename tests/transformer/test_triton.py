"""Triton kernels vs the float64 reference.

Run on CPU with ``TRITON_INTERPRET=1 python -m pytest tests/transformer -m interpret`` (tiny
float32/float64 shapes, 16 x 16 blocks so that every length spans several, partial blocks), or
on CUDA. ``gpu`` tests (torch.compile, fp16/bf16 against SDPA's own error) need a CUDA device.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastorals
from fastorals.testing import assert_close, assert_close_relative_to
from fastorals.transformer import GPT, decode_attention, flash_attention
from fastorals.transformer import reference as R

pytestmark = pytest.mark.interpret


@pytest.fixture
def tri(triton_device):
    from fastorals.transformer import attention

    mod = attention._triton()
    saved = dict(mod._BLOCK_OVERRIDE)
    if triton_device.type == "cpu":
        mod._BLOCK_OVERRIDE.update(fwd=(16, 16), dkdv=(16, 16), dq=(16, 16))
    yield mod
    mod._BLOCK_OVERRIDE.clear()
    mod._BLOCK_OVERRIDE.update(saved)


def _inputs(B, H, Lq, Lk, D, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=torch.float64) for n in (Lq, Lk, Lk))
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def _check_fwd_bwd(q, k, v, causal, ql=None, kl=None, keep=None, p=0.0, seed=None):
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    with fastorals.use_backend("triton"):
        out = flash_attention(qg, kg, vg, causal=causal, q_lens=ql, kv_lens=kl, dropout_p=p, seed=seed)
    q64, k64, v64 = (t.detach().double().cpu().requires_grad_() for t in (q, k, v))
    cpu = (lambda t: None if t is None else t.cpu())
    ref = R.attention(q64, k64, v64, causal=causal, q_lens=cpu(ql), kv_lens=cpu(kl), dropout_p=p, keep=cpu(keep))
    assert_close(out.cpu(), ref.to(q.dtype))
    g = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad(out, (qg, kg, vg), g.to(out.device, out.dtype))
    refs = torch.autograd.grad(ref, (q64, k64, v64), g)
    for name, a, b in zip("qkv", grads, refs):
        assert_close(a.cpu(), b.to(q.dtype), kind="grad", msg=f"d{name}")


@pytest.mark.parametrize("D", [16, 32, 64, 128, 20])
@pytest.mark.parametrize("causal", [True, False])
def test_fwd_bwd_head_dims(tri, triton_device, D, causal):
    q, k, v = _inputs(2, 2, 37, 37, D, triton_device)
    _check_fwd_bwd(q, k, v, causal)


@pytest.mark.parametrize("Lq,Lk", [(5, 40), (40, 17), (1, 1), (33, 33)])
@pytest.mark.parametrize("causal", [True, False])
def test_fwd_bwd_lengths_and_alignment(tri, triton_device, Lq, Lk, causal):
    q, k, v = _inputs(1, 2, Lq, Lk, 32, triton_device, seed=Lq * 100 + Lk)
    _check_fwd_bwd(q, k, v, causal)


@pytest.mark.parametrize("causal", [True, False])
def test_fwd_bwd_ragged(tri, triton_device, causal):
    q, k, v = _inputs(4, 2, 35, 41, 32, triton_device)
    ql = torch.tensor([35, 0, 17, 30], device=triton_device)
    kl = torch.tensor([41, 9, 16, 3], device=triton_device)  # last: causal rows with no visible key
    _check_fwd_bwd(q, k, v, causal, ql, kl)


def test_noncontiguous_fused_qkv_views(tri, triton_device):
    B, L, H, D = 2, 29, 2, 32
    qkv = torch.randn(B, L, 3, H, D, device=triton_device)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    _check_fwd_bwd(q, k, v, True)


def test_float64_gradcheck(tri, triton_device):
    q, k, v = (t.requires_grad_() for t in _inputs(1, 1, 5, 7, 4, triton_device, torch.float64))
    kl = torch.tensor([6], device=triton_device)

    def f(a, b, c):
        with fastorals.use_backend("triton"):
            return flash_attention(a, b, c, causal=True, kv_lens=kl)

    assert torch.autograd.gradcheck(f, (q, k, v), atol=1e-6, rtol=1e-5)


def test_dropout_philox_mask_fwd_bwd(tri, triton_device):
    B, H, L, D, p = 2, 2, 33, 32, 0.3
    q, k, v = _inputs(B, H, L, L, D, triton_device)
    seed = torch.tensor([1234567], dtype=torch.int64, device=triton_device)
    keep = tri.dropout_keep_mask(seed, B, H, L, L, p)
    frac = keep.float().mean().item()
    assert abs(frac - (1 - p)) < 0.03
    # heads and batch items draw different masks; another seed another mask
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    assert not torch.equal(keep, tri.dropout_keep_mask(seed + 1, B, H, L, L, p))
    _check_fwd_bwd(q, k, v, True, keep=keep, p=p, seed=seed)
    _check_fwd_bwd(q, k, v, False, keep=keep, p=p, seed=seed)


def test_dropout_seed_from_torch_generator(tri, triton_device):
    q, k, v = _inputs(1, 2, 20, 20, 16, triton_device)
    with fastorals.use_backend("triton"):
        torch.manual_seed(5)
        a = flash_attention(q, k, v, dropout_p=0.5)
        torch.manual_seed(5)
        b = flash_attention(q, k, v, dropout_p=0.5)
        c = flash_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 2), H=st.integers(1, 2), Lq=st.integers(1, 40), Lk=st.integers(1, 40),
       D=st.sampled_from([8, 16, 24, 64]), causal=st.booleans(), ragged=st.booleans(), seed=st.integers(0, 999))
def test_property_fwd_bwd(tri, triton_device, B, H, Lq, Lk, D, causal, ragged, seed):
    q, k, v = _inputs(B, H, Lq, Lk, D, triton_device, seed=seed)
    g = torch.Generator().manual_seed(seed)
    ql = torch.randint(0, Lq + 1, (B,), generator=g).to(triton_device) if ragged else None
    kl = torch.randint(0, Lk + 1, (B,), generator=g).to(triton_device) if ragged else None
    _check_fwd_bwd(q, k, v, causal, ql, kl)


def test_seed_argument_checked(tri, triton_device):
    q, k, v = _inputs(1, 1, 8, 8, 16, triton_device)
    with pytest.raises(ValueError, match="seed"), fastorals.use_backend("triton"):
        flash_attention(q, k, v, dropout_p=0.1, seed=torch.tensor([1.5], device=triton_device))


@pytest.mark.parametrize("T", [1, 2, 3, 4, 7])
def test_decode_kernel(tri, triton_device, T):
    B, H, Lmax, D = 5, 2, 45, 18
    buf_k = torch.randn(3, B, H, Lmax, D, device=triton_device)
    buf_v = torch.randn(3, B, H, Lmax, D, device=triton_device)
    kc, vc = buf_k[1], buf_v[1]
    kc[:, :, 40:] = float("nan")  # past every kv_len: must never be read
    vc[:, :, 40:] = float("nan")
    q = torch.randn(B, H, T, D, device=triton_device)
    kv = torch.tensor([40, 1, 17, 33, 4], device=triton_device).clamp(min=T)
    for ql in (None, torch.tensor([T, 1, 0, T, 1], device=triton_device)):
        for causal in (True, False):
            with fastorals.use_backend("triton"):
                out = decode_attention(q, kc, vc, kv, q_lens=ql, causal=causal)
            ref = R.attention(q.double().cpu(), kc[:, :, :40].double().cpu(), vc[:, :, :40].double().cpu(),
                              causal=causal, q_lens=None if ql is None else ql.cpu(), kv_lens=kv.cpu())
            assert_close(out.cpu(), ref.float())


def test_fp16_error_within_2x_of_sdpa(tri, triton_device):
    q, k, v = _inputs(2, 2, 37, 37, 32, triton_device)
    oracle = R.attention(q.double(), k.double(), v.double(), causal=True)
    h = [t.half() for t in (q, k, v)]
    with fastorals.use_backend("triton"):
        out = flash_attention(*h, causal=True)
    base = torch.nn.functional.scaled_dot_product_attention(*h, is_causal=True)
    assert out.dtype == torch.float16
    assert_close_relative_to(out.cpu(), base.cpu(), oracle.cpu(), factor=2.0, atol=1e-3)


def test_gpt_triton_matches_torch_backend(tri, triton_device):
    torch.manual_seed(0)
    model = GPT(input_dim=6, output_dim=4, n_layer=2, n_head=2, n_embd=32, block_size=40, pos="rope")
    model = model.to(triton_device).eval()
    x = torch.randn(3, 19, 6, device=triton_device)
    lengths = torch.tensor([19, 9, 15], device=triton_device)
    with fastorals.use_backend("torch"):
        ref = model(x, lengths)
        ref.sum().backward()
        gref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with fastorals.use_backend("triton"):
        out = model(x, lengths)
        out.sum().backward()
        cache = model.make_cache(3, 40)
        first = model.step(x[:, :6], cache)  # a 6-token prompt (flash kernel), then one token per step
        steps = torch.cat([first] + [model.step(x[:, t : t + 1], cache) for t in range(6, 19)], 1)
    valid = torch.arange(19, device=triton_device)[None, :] < lengths[:, None]
    assert_close(out[valid], ref[valid])
    for a, b in zip((p.grad for p in model.parameters()), gref):
        assert_close(a, b, kind="grad")
    with fastorals.use_backend("torch"):
        full = model(x)
    assert_close(steps, full)


# ----------------------------------------------------------------------------- CUDA only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_low_precision_vs_sdpa(dtype, causal):
    q, k, v = _inputs(4, 4, 300, 300, 64, torch.device("cuda"), torch.float32)
    oracle = R.attention(q.double(), k.double(), v.double(), causal=causal)
    h = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = flash_attention(*h, causal=causal)
    base = torch.nn.functional.scaled_dot_product_attention(*[t.detach() for t in h], is_causal=causal)
    assert_close_relative_to(out, base, oracle, factor=2.0)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, h, g)
    h64 = [t.detach().double().requires_grad_() for t in h]
    refs = torch.autograd.grad(R.attention(*h64, causal=causal), h64, g.double())
    hb = [t.detach().requires_grad_() for t in h]
    bases = torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(*hb, is_causal=causal), hb, g)
    for a, b, r in zip(grads, bases, refs):
        assert_close_relative_to(a, b, r, factor=2.0, atol=1e-4)


@pytest.mark.gpu
def test_gpu_opcheck():
    from fastorals.transformer import attention

    tri = attention._triton()
    q, k, v = (torch.randn(2, 2, 70, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    kl = torch.tensor([70, 33], device="cuda", dtype=torch.int32)
    torch.library.opcheck(tri.flash_attn_fwd, (q, k, v, None, kl, None, True, 0.125, 0.0))
    kc, vc = (torch.randn(2, 2, 80, 64, device="cuda", dtype=torch.float16) for _ in range(2))
    torch.library.opcheck(tri.decode_attn, (q[:, :, :1].detach(), kc, vc, None, kl, True, 0.125))


@pytest.mark.gpu
def test_gpu_torch_compile_traces_op():
    q, k, v = (torch.randn(2, 4, 128, 64, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    f = torch.compile(lambda a, b, c: flash_attention(a, b, c, causal=True), fullgraph=True)
    out = f(q, k, v)
    ref = flash_attention(q, k, v, causal=True)
    assert_close(out, ref)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()

