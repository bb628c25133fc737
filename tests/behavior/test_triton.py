"""Triton kernels (k-means screening, fused BeT loss) against the reference, under the interpreter on CPU."""

import pytest
import torch

import fastorals
from fastorals.behavior import bet_loss, kmeans, kmeans_assign, reference
from fastorals.testing import assert_close, assert_grads_close

pytestmark = pytest.mark.interpret


@pytest.mark.parametrize("shape", [(1, 1, 1), (70, 3, 5), (33, 17, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kmeans_triton_equals_reference(triton_device, shape, dtype):
    n, d, k = shape
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    with fastorals.use_backend("reference"):
        ref = kmeans(x, k, 4, seed=1)
    with fastorals.use_backend("triton"):
        out = kmeans(x.to(triton_device), k, 4, seed=1)
    assert torch.equal(out.labels.cpu(), ref.labels)
    assert out.n_iter == ref.n_iter
    assert_close(out.centers.cpu(), ref.centers)


def test_kmeans_triton_ties(triton_device):
    x = torch.tensor([[float(i), float(j)] for i in range(-3, 4) for j in range(-3, 4)])
    c = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    with fastorals.use_backend("triton"):
        lab = kmeans_assign(x.to(triton_device), c.to(triton_device))
    assert torch.equal(lab.cpu(), reference.assign_reference(x, c)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [2.0, 0.0, 0.7])
@pytest.mark.parametrize("weighted", [False, True])
def test_bet_loss_triton_equals_reference(triton_device, dtype, gamma, weighted):
    g = torch.Generator().manual_seed(3)
    M, K, A = 37, 24, 3
    z = torch.randn(M, K, generator=g, dtype=dtype) * 3
    o = torch.randn(M, K, A, generator=g, dtype=dtype)
    b = torch.randint(0, K, (M,), generator=g)
    r = torch.randn(M, A, generator=g, dtype=dtype)
    w = torch.rand(M, generator=g, dtype=dtype) if weighted else None
    res = {}
    for backend, dev in (("triton", triton_device), ("reference", torch.device("cpu"))):
        zz, oo, rr = (t.to(dev).requires_grad_() for t in (z, o, r))
        with fastorals.use_backend(backend):
            out = bet_loss(zz, oo, b.to(dev), rr, gamma=gamma, offset_weight=10.0,
                           weight=None if w is None else w.to(dev))
        out.loss.backward()
        res[backend] = ([t.detach().cpu() for t in out], [zz.grad.cpu(), oo.grad.cpu(), rr.grad.cpu()])
    for a, e in zip(res["triton"][0], res["reference"][0]):
        assert_close(a, e)
    assert_grads_close(res["triton"][1], res["reference"][1])
