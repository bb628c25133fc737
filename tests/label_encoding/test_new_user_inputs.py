"""Half-precision inputs on the PyTorch paths, and labels kept at least float32."""

import pytest
import torch

import fastorals
from fastorals.label_encoding import encoded_cross_entropy, error_correction_penalty


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_half_z_on_the_pytorch_paths(dtype, backend):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g).to(dtype)
    y = torch.rand(6, generator=g)
    with fastorals.use_backend(backend):
        r1 = error_correction_penalty(z, y, label_step=0.25)  # torch.cdist has no half kernel on the CPU
        want = error_correction_penalty(z.float(), y, label_step=0.25)
    assert r1.dtype == dtype and torch.allclose(r1.float(), want, rtol=1e-2)
    zz, D = torch.zeros(2, 4, dtype=dtype), torch.zeros(4, 1001, dtype=dtype)
    with fastorals.use_backend(backend):
        _, pred = encoded_cross_entropy(zz, D, torch.tensor([10.0, 900.0]), (0, 1000))
    assert torch.equal(pred.float(), torch.tensor([500.0, 500.0]))  # sum of exp * level passed 65504 before


def test_labels_are_not_rounded_to_half_z():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 8, generator=g).bfloat16()
    D = torch.rand(8, 5001, generator=g).bfloat16()
    y = torch.tensor([4990.3, 17.7, 2500.9, 1234.5])  # bfloat16 spacing near 4990 is 32
    with fastorals.use_backend("torch"):
        got, _ = encoded_cross_entropy(z, D, y, (0, 5000), reduction="none")
        want, _ = encoded_cross_entropy(z.float(), D.float(), y, (0, 5000), reduction="none")
        rounded, _ = encoded_cross_entropy(z.float(), D.float(), y.bfloat16().float(), (0, 5000), reduction="none")
    assert got.dtype == torch.bfloat16
    err = (got.float() - want).abs().max()
    assert err < 0.01 * want.abs().max() and (rounded - want).abs().max() > 10 * err


def test_argmax_decoding_of_nan_outputs_is_nan():
    from fastorals.label_encoding import decode

    z = torch.tensor([[0.5, -0.5], [float("nan"), 0.0]])
    D = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    for mode in ("argmax", "expected"):
        pred = decode(z, D, (0, 2), mode=mode)
        assert torch.isfinite(pred[0]) and torch.isnan(pred[1]), mode
