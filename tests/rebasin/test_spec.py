"""Permutation specs: ready specs, the traced specs, check_spec, apply/invert, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastorals import models
from fastorals.rebasin import (
    PermutationSpec,
    TraceError,
    apply_permutation,
    check_spec,
    invert_permutation,
    random_permutation,
    spec_for,
    trace_permutation_spec,
)
from fastorals.testing import assert_raises

MODELS = {
    "mlp": lambda norm: (models.MLP(3 * 4 * 4, 10, (12, 9), norm=norm), torch.rand(3, 3, 4, 4)),
    "resnet20": lambda norm: (models.resnet20(width=0.25, norm=norm), torch.rand(2, 3, 8, 8)),
    "resnet32": lambda norm: (models.resnet32(width=0.25, norm=norm), torch.rand(2, 3, 8, 8)),
    "vgg11": lambda norm: (models.vgg11(width=1 / 16, norm=norm), torch.rand(2, 3, 8, 8)),
    "vgg16": lambda norm: (models.vgg16(width=1 / 16, norm=norm, classifier_hidden=(128, 96)), torch.rand(2, 3, 4, 4)),
    "resnet18": lambda norm: (models.resnet18(width=1 / 16, norm=norm), torch.rand(2, 1 * 3, 8, 8)),
}


def _same_up_to_renaming(a: PermutationSpec, b: PermutationSpec) -> bool:
    if set(a.axes_to_perm) != set(b.axes_to_perm):
        return False
    ren: dict = {}
    for k, ea in a.axes_to_perm.items():
        eb = b.axes_to_perm[k]
        if len(ea) != len(eb):
            return False
        for x, y in zip(ea, eb):
            if (x is None) != (y is None):
                return False
            if x is not None and ren.setdefault(x, y) != y:
                return False
    return len(set(ren.values())) == len(ren)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("name", list(MODELS))
def test_ready_specs_pass_check_and_equal_traced(name, norm):
    model, x = MODELS[name](norm)
    ready = spec_for(model)
    assert check_spec(model, ready, x)
    if name in ("resnet32", "vgg16", "resnet18") and norm != "batch":
        return  # the tracer is exercised on these with BatchNorm; keeps the suite fast
    traced = trace_permutation_spec(model, x)  # runs check_spec itself
    assert _same_up_to_renaming(ready, traced), f"{name}/{norm}:\n{ready.describe()}\n---\n{traced.describe()}"


def test_batchnorm_running_stats_are_in_the_spec_and_checked():
    model, x = MODELS["resnet20"]("batch")
    spec = spec_for(model)
    assert spec.axes_to_perm["layer1.0.norm1.running_mean"] == ("layer1.0.inner",)
    assert spec.axes_to_perm["layer2.0.shortcut.0.weight"] == ("stream1", "stream0", None, None)
    assert "layer1.0.norm1.running_var" in spec.buffers
    broken = dict(spec.axes_to_perm)
    broken["layer1.0.norm1.running_var"] = (None,)
    with assert_raises(ValueError, "spec check failed"):
        check_spec(model, PermutationSpec(broken), x)


def test_apply_and_invert_roundtrip():
    model, _ = MODELS["resnet20"]("batch")
    spec = spec_for(model)
    sd = model.state_dict()
    perms = random_permutation(spec, sd, torch.Generator().manual_seed(0))
    back = apply_permutation(spec, apply_permutation(spec, sd, perms), invert_permutation(perms))
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_factored_axes_spec():
    """A Linear reading a flattened C x H x W map: its input axis is (channel perm, spatial) factors."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.fc = nn.Linear(6 * 4 * 4, 5)
            self.out = nn.Linear(5, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))

    net, x = Net(), torch.rand(2, 3, 4, 4)
    spec = trace_permutation_spec(net, x)
    assert spec.axes_to_perm["fc.weight"] == ("fc.out", (("conv.out", 6), (None, 16)))
    hand = PermutationSpec({"conv.weight": ("C", None, None, None), "conv.bias": ("C",),
                            "fc.weight": ("F", (("C", 6), (None, 16))), "fc.bias": ("F",),
                            "out.weight": (None, "F"), "out.bias": (None,)})
    assert check_spec(net, hand, x)


def test_spec_errors():
    with assert_raises(ValueError, "w", "more than one axis"):
        PermutationSpec({"w": ("P", "P")})
    with assert_raises(ValueError, "w", "axis 1"):
        PermutationSpec({"w": ("P", 3)})
    with assert_raises(ValueError, "w"):
        PermutationSpec({"w": "P"})
    with assert_raises(ValueError, "buffers"):
        PermutationSpec({"w": ("P",)}, buffers=["v"])
    spec = PermutationSpec({"a": ("P", None), "b": (None, "P")})
    with assert_raises(ValueError, "'b'", "missing"):
        spec.perm_sizes({"a": torch.zeros(3, 2)})
    with assert_raises(ValueError, "permutation 'p'", "size 4"):
        spec.perm_sizes({"a": torch.zeros(3, 2), "b": torch.zeros(2, 4)})
    with assert_raises(ValueError, "'a'", "axes"):
        spec.perm_sizes({"a": torch.zeros(3), "b": torch.zeros(2, 3)})
    with assert_raises(ValueError, "perms", "'p'"):
        apply_permutation(spec, {"a": torch.zeros(3, 2), "b": torch.zeros(2, 3)}, {})
    with assert_raises(ValueError, "'c'", "not in the spec"):
        apply_permutation(spec, {"a": torch.zeros(3, 2), "b": torch.zeros(2, 3), "c": torch.zeros(2)},
                          {"P": torch.arange(3)})
    with assert_raises(TypeError, "model"):
        from fastorals.rebasin import mlp_spec

        mlp_spec(nn.Linear(2, 2))


def test_tracer_names_the_node_it_cannot_handle():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.fft.fft(self.fc(x)).real)

    net, x = Odd(), torch.rand(3, 4)
    with assert_raises(TraceError, "fft", "strict=false"):
        trace_permutation_spec(net, x)
    spec = trace_permutation_spec(net, x, strict=False)  # sound: the unknown op freezes its dims
    assert spec.axes_to_perm["fc.weight"] == (None, None)
