"""Interpolation, barriers, BatchNorm reset, REPAIR and MergeMany."""

from __future__ import annotations

import copy

import pytest
import torch

from fastorals import data, models
from fastorals.rebasin import (
    apply_permutation,
    evaluate_loss,
    interpolate,
    loss_barrier,
    merge_many,
    random_permutation,
    repair,
    reset_bn_stats,
    spec_for,
)
from fastorals.testing import assert_close, assert_raises


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g)
    y = (x.mean((2, 3)).argmax(1)).long()
    return data.TensorLoader(x, y, batch_size=16, shuffle=False)


def test_interpolate_endpoints_and_errors():
    a, b = models.MLP(6, 2, (5,), norm="batch"), models.MLP(6, 2, (5,), norm="batch")
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in interpolate(sa, sb, 0.0).items():
        assert torch.equal(v, sa[k])
    mid = interpolate(sa, sb, 0.5)
    assert_close(mid["layers.0.weight"], 0.5 * (sa["layers.0.weight"] + sb["layers.0.weight"]))
    assert torch.equal(mid["norms.0.num_batches_tracked"], sa["norms.0.num_batches_tracked"])
    with assert_raises(ValueError, "layers.0.weight", "shape"):
        interpolate(sa, models.MLP(6, 2, (4,), norm="batch").state_dict(), 0.5)


def test_reset_bn_stats_gives_dataset_statistics():
    model = models.resnet20(width=0.25, norm="batch")
    loader = _images()
    reset_bn_stats(model, loader)
    x = torch.cat([b[0] for b in loader])
    feats = model.norm1  # the stem BatchNorm sees conv1(x)
    with torch.no_grad():
        h = model.conv1(x)
    assert_close(feats.running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)


def test_barrier_of_a_model_with_itself_is_zero_and_permutation_invariant():
    model = models.resnet20(width=0.25, norm="batch", num_classes=3)
    loader = _images()
    reset_bn_stats(model, loader)
    spec = spec_for(model)
    res = loss_barrier(model, model, model, loader, loader, num_points=5)
    assert res.barrier["train_loss"] == pytest.approx(0.0, abs=1e-5)
    assert len(res.train_loss) == len(res.lambdas) == 5
    # a permuted copy computes the same function, so evaluation agrees
    pb = apply_permutation(spec, model.state_dict(), random_permutation(spec, model.state_dict()))
    m2 = copy.deepcopy(model)
    m2.load_state_dict(pb)
    assert evaluate_loss(model, loader) == pytest.approx(evaluate_loss(m2, loader), rel=1e-5)


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_repair_matches_target_statistics(norm):
    """After REPAIR, each repaired channel's mean/std equal the interpolation of the endpoints'."""
    torch.manual_seed(0)
    a = models.resnet20(width=0.25, norm=norm, num_classes=3)
    b = models.resnet20(width=0.25, norm=norm, num_classes=3)
    loader = _images(48)
    if norm == "batch":
        reset_bn_stats(a, loader)
        reset_bn_stats(b, loader)
    spec = spec_for(a)
    m = copy.deepcopy(a)
    m.load_state_dict(interpolate(a.state_dict(), b.state_dict(), 0.3))
    repair(m, a, b, loader, 0.3, spec=spec)
    from fastorals.rebasin.merge import _output_moments, _repair_points

    points = _repair_points(m, spec)
    assert points
    first = points[:1]  # the first repaired layer sees unmodified inputs: its statistics are exact
    sm = _output_moments(m, first, loader, None)
    sa = _output_moments(a, [(n, dict(a.named_modules())[n]) for n, _ in first], loader, None)
    sb = _output_moments(b, [(n, dict(b.named_modules())[n]) for n, _ in first], loader, None)
    name = first[0][0]
    assert_close(sm[name][0], 0.7 * sa[name][0] + 0.3 * sb[name][0], atol=1e-4, rtol=1e-3)
    assert_close(sm[name][1], 0.7 * sa[name][1] + 0.3 * sb[name][1], atol=1e-4, rtol=1e-3)


def test_merge_many_undoes_hidden_permutations():
    base = models.MLP(8, 3, (12, 10))
    spec = spec_for(base)
    sd = base.state_dict()
    copies = [sd] + [apply_permutation(spec, sd, random_permutation(spec, sd, torch.Generator().manual_seed(s)))
                     for s in (1, 2)]
    merged, perms = merge_many(spec, copies)
    assert len(perms) == 3
    aligned = [apply_permutation(spec, c, p) for c, p in zip(copies, perms)]
    for k in sd:  # all three copies end up identical, so the merge is any of them
        assert torch.equal(aligned[1][k], aligned[0][k]) and torch.equal(aligned[2][k], aligned[0][k])
        assert_close(merged[k], aligned[0][k])
    with assert_raises(ValueError, "params_list"):
        merge_many(spec, [sd])
