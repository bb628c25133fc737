"""Heads (RLEL and baselines), parameter groups, the training loop, data sets, no-extension path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastorals
from fastorals.label_encoding import (
    HEADS,
    BELHead,
    DirectRegressionHead,
    LabelEncodingHead,
    MulticlassHead,
    RegressionModel,
    evaluate_mae,
    fit_regression,
    load_tabular,
    make_code,
    make_head,
    param_groups,
    rotated_shape_splits,
    rotated_shapes,
)
from fastorals.label_encoding import reference as R
from fastorals.testing import assert_close

RNG = (-75.0, 75.0)


def _batch(B=12, F=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, F, generator=g), torch.rand(B, generator=g) * 150 - 75


@pytest.mark.parametrize("method", HEADS)
def test_every_head_forward_loss_predict(method):
    x, y = _batch()
    head = make_head(method, 16, RNG, 151, num_bits=10)
    out = head(x)
    loss = head.loss(out, y)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())
    pred = head.predict(out)
    assert pred.shape == (12,) and (pred >= -75 - 1e-4).all() and (pred <= 75 + 1e-4).all()
    sd = head.state_dict()
    head2 = make_head(method, 16, RNG, 151, num_bits=10)
    head2.load_state_dict(sd)
    assert_close(head2.predict(head2(x)), pred.detach())
    assert repr(head)


def test_rlel_head_loss_is_rlel_loss_on_its_codes():
    x, y = _batch(seed=2)
    head = LabelEncodingHead(16, 8, RNG, 151, bottleneck=4, alpha=0.01, beta=0.1)
    assert isinstance(head.encoder, torch.nn.Sequential)  # bottleneck -> bits
    z = head(x)
    terms = head.loss(z, y, return_terms=True)
    ref = R.rlel_loss(z.double(), head.codes.double(), y.double(), -75.0, 1.0, alpha=0.01, beta=0.1)
    assert_close(terms.loss.double(), ref["loss"], dtype=torch.float32)
    assert_close(terms.prediction, head.predict(z))
    argmax = head.predict(z, "argmax")
    assert ((argmax - (-75.0)) % 1.0 == 0).all()  # a level


def test_rlel_init_from_fixed_code_and_tensor():
    head = LabelEncodingHead(4, 8, (0, 15), 16, init="johnson")
    assert_close(head.codes.data, 2.0 * make_code("johnson", 16).T.float() - 1.0)
    t = torch.randn(3, 5)
    assert torch.equal(LabelEncodingHead(4, 3, (0, 1), 5, init=t).codes.data, t)
    d = LabelEncodingHead(4, 3, (0, 1), 5).codes.data
    assert d.min() >= 0 and d.max() < 1  # U[0, 1)


def test_param_groups_code_learning_rate():
    backbone = torch.nn.Linear(8, 16)
    head = LabelEncodingHead(16, 6, RNG, 151, code_lr_mult=10.0)
    model = RegressionModel(backbone, head)
    groups = param_groups(model, lr=1e-3, weight_decay=1e-4)
    assert len(groups) == 2
    assert groups[0]["lr"] == 1e-3 and groups[0]["weight_decay"] == 1e-4
    assert groups[1]["params"] == [head.codes] and groups[1]["lr"] == pytest.approx(1e-2)
    assert groups[1]["weight_decay"] == 0.0
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(model.parameters()))
    hg = head.param_groups(1e-3)
    assert hg[1]["lr"] == pytest.approx(1e-2) and hg[1]["params"] == [head.codes]
    # other heads: one group
    assert len(param_groups(RegressionModel(backbone, MulticlassHead(16, RNG, 151)), 1e-3)) == 1


def test_bel_head_targets_and_correlation_decoding():
    head = BELHead(4, "unary", (0.0, 9.0), 10)
    y = torch.tensor([0.0, 3.2, 9.0])
    target_idx = head.grid.nearest(y)
    assert target_idx.tolist() == [0, 3, 9]
    # logits equal to (scaled) bipolar codes decode to their level
    logits = 20.0 * (2 * head.code_bits[target_idx] - 1)
    assert_close(head.predict(logits, "argmax"), torch.tensor([0.0, 3.0, 9.0]))
    assert_close(head.predict(logits), torch.tensor([0.0, 3.0, 9.0]), atol=1e-4, rtol=0)
    # the loss is the per-bit BCE, summed over bits, averaged over the batch
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, head.code_bits[target_idx], reduction="sum")
    assert_close(head.loss(logits, y), bce / 3)
    custom = BELHead(4, make_code("johnson", 10), (0.0, 9.0), 10)
    assert custom.num_bits == 5 and custom.code_name == "custom"


def test_direct_and_multiclass_heads():
    d = DirectRegressionHead(4, (10.0, 30.0), loss="l2")
    out = torch.tensor([0.0, 1.0, -1.0, 3.0])
    assert_close(d.predict(out), torch.tensor([20.0, 30.0, 10.0, 30.0]))
    y = torch.tensor([20.0, 30.0, 10.0, 25.0])
    assert_close(d.loss(out, y), torch.nn.functional.mse_loss(out, torch.tensor([0.0, 1.0, -1.0, 0.5])))
    m = MulticlassHead(4, (0.0, 4.0), 5)
    logits = torch.full((2, 5), -30.0)
    logits[0, 1] = logits[1, 4] = 30.0
    assert_close(m.predict(logits), torch.tensor([1.0, 4.0]))
    assert_close(m.loss(logits, torch.tensor([1.2, 3.9])), torch.nn.functional.cross_entropy(logits, torch.tensor([1, 4])))


def test_rlel_learns_a_simple_regression():
    """Features are a noisy embedding of the label: RLEL's MAE falls well below chance."""
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2048, generator=g) * 40
    x = torch.stack([torch.cos(y / 40 * 3), torch.sin(y / 40 * 3), y / 40], 1) + 0.01 * torch.randn(2048, 3, generator=g)
    backbone = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.ReLU())
    torch.manual_seed(0)
    model = RegressionModel(backbone, LabelEncodingHead(64, 12, (0.0, 40.0), 41, alpha=1e-3, beta=1e-2))
    from fastorals.data import TensorLoader

    train = TensorLoader(x, y, batch_size=128, seed=0)
    before = evaluate_mae(model, TensorLoader(x, y, 512, shuffle=False))
    hist = fit_regression(model, train, epochs=12, lr=3e-3, test=TensorLoader(x, y, 512, shuffle=False))
    assert hist.test_mae[-1] < 0.25 * before and hist.test_mae[-1] < 2.5
    assert hist.train_loss[-1] < hist.train_loss[0]


def test_regression_model_with_bound_features_method():
    net = fastorals.models.resnet20(width=0.25)
    model = RegressionModel(net.features, make_head("direct-l1", net.fc.in_features, RNG, 2))
    names = {n for n, _ in model.named_parameters()}
    assert any(n.startswith("backbone.owner.conv1") for n in names)
    out = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (2,)


def test_rotated_shapes_deterministic_and_in_range():
    a = rotated_shapes(40, 16, seed=3)
    b = rotated_shapes(40, 16, seed=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert a.inputs.dtype == torch.uint8 and a.inputs.shape == (40, 3, 16, 16)
    assert a.targets.dtype == torch.float32 and a.targets.min() >= -75 and a.targets.max() <= 75
    assert not torch.equal(rotated_shapes(40, 16, seed=4).inputs, a.inputs)
    s = rotated_shape_splits(20, 10, size=12, seed=1, clutter=False, noise=0.0)
    assert len(s.train) == 20 and len(s.test) == 10 and s.label_range == (-75.0, 75.0)
    x, y = next(iter(s.train.loader(8, shuffle=False)))
    assert x.shape == (8, 3, 12, 12) and torch.equal(y, s.train.targets[:8])
    # the angle is visible: the same seed with a different angle range gives different images
    c = rotated_shapes(8, 16, seed=3, angle_range=(-10, 10), clutter=False, noise=0.0)
    assert c.targets.abs().max() <= 10


@pytest.mark.parametrize("name", ["diabetes", "friedman1"])
def test_load_tabular(name):
    s = load_tabular(name, seed=0, n_samples=300)
    n = 442 if name == "diabetes" else 300
    assert len(s.train) + len(s.test) == n and s.train.inputs.shape[1] == 10
    assert_close(s.train.inputs.mean(0), torch.zeros(10), atol=1e-5, rtol=0)
    lo, hi = s.label_range
    for part in (s.train, s.test):
        assert part.targets.min() >= lo and part.targets.max() <= hi


def test_works_without_extension():
    code = (
        "import torch; import fastorals._ext as e; assert not e.HAS_EXT;"
        "from fastorals.label_encoding import rlel_loss, error_correction_penalty, encoded_cross_entropy;"
        "from fastorals.label_encoding import reference as R;"
        "g = torch.Generator().manual_seed(0); z = torch.randn(30, 5, generator=g, dtype=torch.float64, requires_grad=True);"
        "D = torch.rand(5, 21, generator=g, dtype=torch.float64, requires_grad=True);"
        "y = torch.rand(30, generator=g, dtype=torch.float64) * 20;"
        "l = rlel_loss(z, D, y, (0, 20), alpha=0.1, beta=0.2); ref = R.rlel_loss(z, D, y, 0.0, 1.0, alpha=0.1, beta=0.2)['loss'];"
        "assert torch.allclose(l, ref), (l, ref);"
        "ga = torch.autograd.grad(l, (z, D)); gb = torch.autograd.grad(ref, (z, D));"
        "assert all(torch.allclose(a, b) for a, b in zip(ga, gb))"
    )
    env = dict(os.environ, FASTORALS_NO_EXT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]


def test_benchmark_smoke_cases_agree():
    from benchmarks.bench_label_encoding import SUITE

    n = 0
    for case in SUITE.cases("smoke", "cpu"):
        impls = case.impls()
        first = impls[0][2]()
        for name, _, fn in impls[1:]:
            case.verify(first, fn(), name)
        n += 1
    assert n == 3
