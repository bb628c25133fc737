"""Every ``triton_op`` of the package through ``torch.library.opcheck`` and ``torch.compile``.

opcheck runs the op's schema, autograd registration, fake-tensor (meta) and AOT-dispatch checks;
the compiled call must equal the eager one. On CUDA these run on the device (the fake-tensor and
compile paths cannot be exercised otherwise); under ``TRITON_INTERPRET=1`` on the CPU the same
checks cannot run (the interpreter copies storages, which fake tensors do not have), so there only
the eager calls run, to keep the argument sets valid.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch


def _onepixel(dev, dtype):
    from fastorals.onepixel.triton import class_sums_triton  # noqa: F401  (registers the op)

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (13, 3, 5, 6), generator=g, dtype=torch.uint8)
    y = torch.arange(13) % 4
    counts = torch.bincount(y, minlength=4)
    return torch.ops.fastorals.onepixel_class_sums_triton, (x.to(dev), y.to(dev), counts.to(dev), 4,
                                                            int(counts.max()))


def _augment(dev, dtype):
    from fastorals.augment.triton import augment_apply_triton  # noqa: F401

    g = torch.Generator().manual_seed(1)
    b, c, h, w = 4, 3, 9, 7
    images = torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)
    ops = torch.tensor([[0, 5, 12], [3, -1, 8], [14, 2, 20], [1, 7, 9]], dtype=torch.int32)
    vals = torch.tensor([[0.3, 4.0, 0.2], [0.4, 0.0, 128.0], [10.0, 0.5, 1.5], [0.2, 0.6, 0.3]],
                        dtype=torch.float64)
    crop = torch.randint(-2, 3, (b, 2), generator=g, dtype=torch.int32)
    flip = torch.tensor([0, 1, 1, 0], dtype=torch.uint8)
    cut = torch.tensor([[1, 4, 2, 5], [0, 0, 0, 0], [3, 9, 0, 2], [2, 3, 2, 3]], dtype=torch.int32)
    mean, std = torch.rand(c, generator=g), torch.rand(c, generator=g) + 0.2
    args = (images, ops, vals, crop, flip, cut, mean, std)
    return torch.ops.fastorals.augment_apply_triton, (*(a.to(dev) for a in args), True)


def _label_encoding_r1(dev, dtype):
    from fastorals.label_encoding.triton import r1_triton  # noqa: F401

    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 5, generator=g, dtype=dtype).to(dev).requires_grad_()
    y = (torch.rand(9, generator=g, dtype=dtype) * 4).to(dev)
    return torch.ops.fastorals.label_encoding_r1_triton, (z, y, 2.0)


def _label_encoding_ce(dev, dtype):
    from fastorals.label_encoding.triton import ce_triton  # noqa: F401

    g = torch.Generator().manual_seed(3)
    z = torch.randn(6, 4, generator=g, dtype=dtype).to(dev).requires_grad_()
    D = torch.rand(4, 10, generator=g, dtype=dtype).to(dev).requires_grad_()
    y = (-3.0 + torch.rand(6, generator=g, dtype=dtype) * 8).to(dev)
    return torch.ops.fastorals.label_encoding_ce_triton, (z, D, y, -3.0, 8.0 / 9.0, 1.125)


def _lipschitz_gram(dev, dtype):
    from fastorals.lipschitz import triton  # noqa: F401

    g = torch.Generator().manual_seed(4)
    w = torch.randn(12, 8, generator=g, dtype=dtype).to(dev).requires_grad_()
    q = torch.randn(12, generator=g, dtype=dtype).to(dev).requires_grad_()
    return torch.ops.fastorals.lipschitz_gram_t_triton, (w, q)


def _lipschitz_dense(dev, dtype):
    from fastorals.lipschitz import triton  # noqa: F401

    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 8, generator=g, dtype=dtype).to(dev).requires_grad_()
    w = torch.randn(12, 8, generator=g, dtype=dtype).to(dev).requires_grad_()
    b = torch.randn(12, generator=g, dtype=dtype).to(dev).requires_grad_()
    s = (torch.rand(12, generator=g, dtype=dtype) + 0.5).to(dev).requires_grad_()
    return torch.ops.fastorals.lipschitz_residual_dense_triton, (x, w, b, s)


def _attention(causal):
    def make(dev, dtype):
        from fastorals.transformer import triton  # noqa: F401

        g = torch.Generator().manual_seed(6)
        q, k, v = (torch.randn(2, 2, 7, 16, generator=g, dtype=dtype).to(dev).requires_grad_() for _ in range(3))
        return torch.ops.fastorals.transformer_flash_attn_fwd_triton, (q, k, v, None, None, None, causal,
                                                                       1 / math.sqrt(16), 0.0)

    return make


def _decode(dev, dtype):
    from fastorals.transformer import triton  # noqa: F401

    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 2, 1, 16, generator=g, dtype=dtype).to(dev)
    k, v = (torch.randn(2, 2, 9, 16, generator=g, dtype=dtype).to(dev) for _ in range(2))
    kv_lens = torch.tensor([9, 4], dtype=torch.int32).to(dev)
    return torch.ops.fastorals.transformer_decode_attn_triton, (q, k, v, None, kv_lens, True, 0.25)


def _koopman(dev, dtype):
    from fastorals.koopman import triton  # noqa: F401

    g = torch.Generator().manual_seed(8)
    lam = torch.linalg.eigvals(torch.randn(3, 7, 7, generator=g) / 2)
    ev = torch.view_as_real(lam).to(dtype).to(dev).requires_grad_()
    return torch.ops.fastorals.koopman_spectral_triton, (ev, 2, 0, 0, 0.5, 1.0, 0.9)


CASES: dict[str, Callable] = {
    "onepixel_class_sums": _onepixel,
    "augment_apply": _augment,
    "label_encoding_r1": _label_encoding_r1,
    "label_encoding_ce": _label_encoding_ce,
    "lipschitz_gram_t": _lipschitz_gram,
    "lipschitz_residual_dense": _lipschitz_dense,
    "flash_attn_causal": _attention(True),
    "flash_attn_full": _attention(False),
    "decode_attn": _decode,
    "koopman_spectral": _koopman,
}


def _flat(out):
    return out if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.interpret
@pytest.mark.parametrize("name", list(CASES))
def test_eager_call(triton_device, name):
    op, args = CASES[name](triton_device, torch.float32)
    for out in _flat(op(*args)):
        assert out.device.type == triton_device.type
        if out.dtype.is_floating_point:
            assert torch.isfinite(out).all(), name


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_opcheck(name):
    op, args = CASES[name](torch.device("cuda"), torch.float32)
    torch.library.opcheck(op, args)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_equals_eager(name):
    op, args = CASES[name](torch.device("cuda"), torch.float32)
    eager = _flat(op(*args))
    torch._dynamo.reset()
    compiled = _flat(torch.compile(lambda *a: op(*a), fullgraph=True)(*args))
    assert len(eager) == len(compiled)
    for e, c in zip(eager, compiled):
        assert e.dtype == c.dtype and e.shape == c.shape, name
        if e.dtype.is_floating_point:
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(c, e), name
