"""Certified radii (global and per-pair rules), certified accuracy, the offset loss, attacks vs certificates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastorals import lipschitz as L
from fastorals.data import ImageDataset
from fastorals.testing import assert_close, assert_raises
from fastorals.training import pgd_attack


def _tiny_net(seed: int = 0) -> L.SLLNetwork:
    torch.manual_seed(seed)
    return L.SLLNetwork(4, n_conv=2, n_dense=1, width=6, dense_inner=32, image_size=8)


def test_global_radius_formula():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.5], [1.0, 1.0, 0.0], [0.0, 5.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 2])
    r = L.certified_radius(logits, labels)
    assert_close(r, torch.tensor([2.0 / math.sqrt(2), 0.5 / math.sqrt(2), 0.0, 0.0]))
    r2 = L.certified_radius(logits, labels, lipschitz=2.0)
    assert_close(r2, r / 2)


def test_lln_radius_formula_and_head_module():
    torch.manual_seed(0)
    head = L.LinearNormalized(5, 3)
    feats = torch.randn(20, 5)
    logits = head(feats).detach()
    labels = logits.argmax(1)
    labels[0] = (labels[0] + 1) % 3  # one wrong prediction
    w = head.normalized_weight().detach()
    r = L.certified_radius(logits, labels, head=head)
    for i in range(20):
        if i == 0:
            assert r[i] == 0
            continue
        y = int(labels[i])
        expect = min(float(logits[i, y] - logits[i, j]) / float((w[y] - w[j]).norm()) for j in range(3) if j != y)
        assert float(r[i]) == pytest.approx(expect, rel=1e-5)
    assert_close(L.certified_radius(logits, labels, head=w), r)


def test_lln_certificate_holds_against_perturbations():
    """No perturbation of norm < radius changes the prediction (features are 1-Lipschitz)."""
    torch.manual_seed(1)
    head = L.LinearNormalized(6, 4)
    body = L.SLLLinear(6, 12)
    x = torch.randn(64, 6)
    with torch.no_grad():
        logits = head(body(x))
        labels = logits.argmax(1)
        r = L.certified_radius(logits, labels, head=head)
        for _ in range(20):
            d = torch.randn_like(x)
            d = d / d.norm(dim=1, keepdim=True) * (r[:, None] * 0.999)
            assert (head(body(x + d)).argmax(1) == labels).all()


def test_certified_accuracy_inputs_and_rules():
    net = _tiny_net().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (30, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (30,), generator=g)
    a = L.certified_accuracy(net, (x, y), [0.0, 36 / 255, 1.0], batch_size=7)
    b = L.certified_accuracy(net, ImageDataset(x, y, [str(i) for i in range(4)]), [0.0, 36 / 255, 1.0])
    c = L.certified_accuracy(net, [(x[:10], y[:10]), (x[10:], y[10:])], [0.0, 36 / 255, 1.0])
    assert a["n"] == b["n"] == c["n"] == 30
    assert a["clean"] == b["clean"] == c["clean"]
    assert a["certified"] == b["certified"] == c["certified"]
    logits = net(x.float() / 255)
    assert a["clean"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert a["certified"][0.0] <= a["clean"]
    assert a["certified"][1.0] <= a["certified"][36 / 255]
    glob = L.certified_accuracy(net, (x, y), [36 / 255], rule="global", lipschitz=2.0)
    r = L.certified_radius(logits, y, lipschitz=2.0)
    assert glob["certified"][36 / 255] == pytest.approx(float((r > 36 / 255).float().mean()))
    assert net.training is False


def test_pgd_never_beats_the_certificate():
    torch.manual_seed(0)
    net = _tiny_net(3)
    x = torch.rand(64, 3, 8, 8)
    y = torch.randint(0, 4, (64,))
    opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.5, 0.9))
    for _ in range(30):
        opt.zero_grad()
        L.offset_cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        logits = net(x)
    r = L.certified_radius(logits, y, head=net.head)
    cert = r > 0
    assert cert.sum() > 0
    eps = float(r[cert].median())
    adv = pgd_attack(net, x[cert], y[cert], eps=eps, alpha=eps / 4, steps=20, norm="l2", clamp=(-10.0, 10.0))
    with torch.no_grad():
        still = net(adv).argmax(1) == y[cert]
    # every point certified beyond eps survives the attack
    assert still[r[cert] > eps].all()


def test_offset_cross_entropy_formula():
    torch.manual_seed(0)
    z = torch.randn(5, 7, requires_grad=True)
    y = torch.randint(0, 7, (5,))
    o, tau = 1.5 * math.sqrt(2), 0.25
    expect = tau * F.cross_entropy((z - o * F.one_hot(y, 7)) / tau, y)
    assert_close(L.offset_cross_entropy(z, y), expect)
    assert_close(L.OffsetCrossEntropy()(z, y), expect)
    assert_close(L.OffsetCrossEntropy(offset=0.0, temperature=1.0)(z, y), F.cross_entropy(z, y))
    L.offset_cross_entropy(z, y).backward()
    assert torch.isfinite(z.grad).all()


def test_errors():
    net = _tiny_net()
    with torch.no_grad():
        net.model[1].weight[0, 0, 0, 0] = float("nan")
    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    with assert_raises(ValueError, "model", "non-finite"):
        L.certified_accuracy(net, (x, y), [0.1])
    with assert_raises(ValueError, "non-finite"):
        L.lipschitz_constant(net, (3, 8, 8))
    with assert_raises(ValueError, "labels"):
        L.certified_radius(torch.randn(3, 4), torch.tensor([0, 1, 4]))
    with assert_raises(ValueError, "logits"):
        L.certified_radius(torch.randn(3), torch.tensor([0, 1, 2]))
    with assert_raises(ValueError, "logits", "non-finite"):
        L.certified_radius(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with assert_raises(ValueError, "lipschitz"):
        L.certified_radius(torch.randn(3, 4), torch.tensor([0, 1, 2]), lipschitz=0.0)
    with assert_raises(ValueError, "rule"):
        L.certified_accuracy(_tiny_net(), (x, y), [0.1], rule="box")
    with assert_raises(ValueError, "rule", "linearnormalized"):
        L.certified_accuracy(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), (x, y), [0.1], rule="lln")
    with assert_raises(ValueError, "eps_list"):
        L.certified_accuracy(_tiny_net(), (x, y), [-1.0])
    with assert_raises(ValueError, "gates"):
        L.lipschitz_constant(_tiny_net(), (3, 8, 8), gates="closed")
    with assert_raises(ValueError, "input_shape"):
        L.lipschitz_constant(_tiny_net(), ())
    with assert_raises(ValueError, "temperature"):
        L.offset_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), temperature=0.0)


def test_network_lipschitz_constant_below_one():
    net = _tiny_net()
    body = net.model[:-1]
    assert L.lipschitz_constant(nn.Sequential(net.shift, body), (3, 8, 8), n_points=2) <= 1 + 1e-5
    assert L.random_pair_ratio(nn.Sequential(net.shift, body), (3, 8, 8), n_pairs=32) <= 1 + 1e-5
