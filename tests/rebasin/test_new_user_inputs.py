"""Inputs a new user passes that the main tests do not: in-place views in a traced model,
permutations that are not permutations, non-finite weights, unlabelled batches for STE, and a
classifier registered before the hidden layers (REPAIR)."""

import copy

import pytest
import torch
from torch import nn

from fastorals import rebasin as R
from fastorals.rebasin.merge import _repair_points
from fastorals.testing import assert_raises


class _InPlaceTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(6, 12), nn.Linear(12, 5)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)).transpose_(0, 1).mean(0))


def test_in_place_views_are_traced():
    torch.manual_seed(0)
    m = _InPlaceTranspose()
    x = torch.randn(2, 3, 6)
    spec = R.trace_permutation_spec(m, x)
    assert set(spec.perm_sizes(m.state_dict()).values()) == {12}
    p = R.random_permutation(spec, m.state_dict(), torch.Generator().manual_seed(1))
    moved = _InPlaceTranspose()
    moved.load_state_dict(R.apply_permutation(spec, m.state_dict(), p))
    assert torch.allclose(moved(x), m(x), atol=1e-6)  # the hidden units only moved
    R.trace_permutation_spec(nn.GRU(6, 12, batch_first=True), torch.randn(2, 3, 6), strict=False)


def test_permutations_are_checked():
    mlp = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5))
    spec = R.trace_permutation_spec(mlp, torch.randn(2, 6))
    sd = mlp.state_dict()
    with assert_raises(ValueError, "perms['0.out']", "each index once"):
        R.apply_permutation(spec, sd, {"0.out": torch.zeros(12, dtype=torch.long)})
    with assert_raises(ValueError, "perms['0.out']", "each index once"):
        R.apply_permutation(spec, sd, {"0.out": torch.arange(12) + 1})
    with assert_raises(ValueError, "perms['x']"):
        R.invert_permutation({"x": torch.tensor([0, 0, 1])})
    p = torch.randperm(12)
    import numpy as np

    assert torch.equal(R.apply_permutation(spec, sd, {"0.out": p.numpy()})["0.weight"],
                       R.apply_permutation(spec, sd, {"0.out": p})["0.weight"])  # arrays as init= takes them
    with assert_raises(ValueError, "init['0.out']"):
        R.weight_matching(spec, sd, sd, init={"0.out": np.zeros(12, dtype=np.int64)})
    bad = {k: v * float("nan") if k == "2.weight" else v for k, v in sd.items()}
    with assert_raises(ValueError, "params_b", "'2.weight'", "NaN"):
        R.weight_matching(spec, sd, bad)
    with assert_raises(ValueError, "max_iter"):
        R.weight_matching(spec, sd, sd, max_iter=-1)


def test_ste_names_unlabelled_batches():
    mlp = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5))
    spec = R.trace_permutation_spec(mlp, torch.randn(2, 6))
    with assert_raises(ValueError, "loader", "(x, y)"):
        R.ste_matching(mlp, mlp, [torch.randn(4, 6)], spec, max_steps=1)


class _HeadFirst(nn.Module):  # the classifier is registered before the hidden layers
    def __init__(self):
        super().__init__()
        self.head, self.fc1, self.fc2 = nn.Linear(12, 5), nn.Linear(6, 12), nn.Linear(12, 12)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.mark.parametrize("loader", [[(torch.randn(8, 6), torch.zeros(8, dtype=torch.long))], [torch.randn(8, 6)]])
def test_repair_leaves_the_layer_run_last(loader):
    assert [n for n, _ in _repair_points(_HeadFirst(), None, loader)] == ["fc1", "fc2"]
    torch.manual_seed(0)
    a, b = _HeadFirst(), _HeadFirst()
    mid = _HeadFirst()
    mid.load_state_dict(R.interpolate(a.state_dict(), b.state_dict(), 0.5))
    head, fc2 = mid.head.weight.clone(), mid.fc2.weight.clone()
    R.repair(mid, a, b, loader, 0.5)
    assert torch.equal(mid.head.weight, head) and not torch.equal(mid.fc2.weight, fc2)  # hidden fc2 repaired


@pytest.mark.parametrize("model,x", [
    (nn.Sequential(nn.Linear(6, 12), nn.PReLU(12), nn.Linear(12, 5)), torch.randn(4, 6)),
    (nn.Sequential(nn.Linear(6, 12), nn.PReLU(), nn.Linear(12, 5)), torch.randn(4, 6)),
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.Conv2d(8, 4, 3)), torch.randn(2, 3, 7, 7)),
])
def test_prelu_is_traced_and_its_weight_permuted_with_the_channels(model, x):
    torch.manual_seed(0)
    with torch.no_grad():
        model[1].weight.uniform_(-1, 1)  # distinct slopes: a wrong permutation would show
    spec = R.trace_permutation_spec(model, x)
    sd = model.state_dict()
    p = R.random_permutation(spec, sd, torch.Generator().manual_seed(2))
    assert p and all(len(v) > 1 for v in p.values())
    moved = copy.deepcopy(model)
    moved.load_state_dict(R.apply_permutation(spec, sd, p))
    assert torch.allclose(moved(x), model(x), atol=1e-5)
