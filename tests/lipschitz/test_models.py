"""SLL network builders, export to plain layers, official checkpoint loading."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from fastorals import lipschitz as L
from fastorals.testing import assert_close, assert_raises


def test_paper_configs():
    assert L.SLL_CONFIGS == {"small": (20, 7, 45, 2048), "medium": (30, 10, 60, 2048),
                             "large": (50, 10, 90, 2048), "xlarge": (70, 15, 120, 2048)}
    net = L.sll_small(10, image_size=8)  # 8x8 inputs keep the dense layers small (2048 x 180)
    convs = [m for m in net.modules() if isinstance(m, L.SLLConv2d)]
    dense = [m for m in net.modules() if isinstance(m, L.SLLLinear)]
    assert len(convs) == 20 and len(dense) == 7
    assert all(c.channels == 45 and c.inner_channels == 5 and c.kernel_size == 3 for c in convs)
    assert all(d.features == 45 * 4 and d.inner_features == 2048 for d in dense)
    assert net.head.out_features == 10
    assert sum(p.numel() for p in net.parameters()) == 20 * (5 * 45 * 9 + 5 + 5) + 7 * (2048 * 180 + 2 * 2048) + (
        180 * 10 + 10)
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 10)


def test_builders_accept_options():
    net = L.sll_medium(100, image_size=16, mean=None)
    assert isinstance(net.shift, nn.Identity)
    assert net.head.out_features == 100
    assert net.model[-2].features == 60 * 16


def _official_state(net: L.SLLNetwork) -> dict:
    """The paper's code names: DataParallel(NormalizedModel(LipschitzNetwork)) and kernel/bias shapes."""
    out = {}
    for k, v in net.state_dict().items():
        if k.startswith("shift."):
            continue
        idx, name = k.split(".")[1:]
        layer = net.model[int(idx)]
        if isinstance(layer, L.SLLConv2d):
            name = {"weight": "kernel"}.get(name, name)
            if name == "bias":
                v = v.view(1, -1, 1, 1)
        elif isinstance(layer, L.SLLLinear) and name == "bias":
            v = v.view(1, -1)
        out[f"module.model.model.{idx}.{name}"] = v.clone()
    out["module.model.model.1.alpha"] = torch.zeros(1)
    return out


def test_load_official_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = L.SLLNetwork(10, n_conv=3, n_dense=2, width=8, dense_inner=64)
    path = tmp_path / "model.ckpt-1.pth"
    official = _official_state(src)
    torch.save({"model_state_dict": official, "epoch": 1}, path)
    dst = L.SLLNetwork(10, n_conv=3, n_dense=2, width=8, dense_inner=64)
    L.load_official_checkpoint(dst, str(path))
    x = torch.rand(3, 3, 32, 32)
    # the released conv layer's q cancels out: the trained network is the one with conv q = 0
    for layer in src.modules():
        if isinstance(layer, L.SLLConv2d):
            assert torch.equal(dst.get_submodule("model." + str(list(src.model).index(layer))).q,
                               torch.zeros_like(layer.q))
    with torch.no_grad():
        for layer in src.modules():
            if isinstance(layer, L.SLLConv2d):
                layer.q.zero_()
    src.eval()
    dst.eval()
    assert_close(dst(x), src(x))
    kept = L.convert_official_state_dict(official, conv_q="keep")
    assert torch.equal(kept["model.1.q"], official["module.model.model.1.q"])
    assert kept["model.1.q"].abs().sum() > 0
    wrong = L.SLLNetwork(10, n_conv=3, n_dense=2, width=9, dense_inner=64)
    with assert_raises(ValueError, "shape"):
        L.load_official_checkpoint(wrong, str(path))
    short = {k: v for k, v in _official_state(src).items() if ".7." not in k}
    with assert_raises(ValueError, "lacks"):
        L.load_official_checkpoint(dst, short)
    with assert_raises(ValueError, "no sll parameters"):
        L.convert_official_state_dict({"foo": torch.zeros(1)})


def test_export_model_matches_and_is_plain():
    torch.manual_seed(0)
    net = L.SLLNetwork(5, n_conv=2, n_dense=2, width=6, dense_inner=40, image_size=16)
    net.model.insert(2, L.SLLConv2d(6, 3, 5, stride=2))
    x = torch.rand(4, 3, 16, 16)
    net.eval()
    exported = L.export_model(net, input_size=(1, 3, 16, 16))
    assert net.model[1].__class__ is L.SLLConv2d  # the original is untouched
    for m in exported.modules():
        assert not isinstance(m, (L.SLLConv2d, L.SLLLinear, L.LinearNormalized))
    assert_close(exported(x), net(x), atol=1e-5, rtol=1e-4)
    ep = torch.export.export(exported, (x,))
    assert_close(ep.module()(x), net(x), atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")
def test_export_to_onnx(tmp_path):
    net = L.SLLNetwork(3, n_conv=1, n_dense=1, width=4, dense_inner=16, image_size=8).eval()
    import onnx

    torch.onnx.export(L.export_model(net), (torch.rand(1, 3, 8, 8),), str(tmp_path / "m.onnx"))
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))


def test_network_errors():
    with assert_raises(ValueError, "image_size", "multiple of 4"):
        L.SLLNetwork(10, 1, 1, 4, image_size=30)
    with assert_raises(ValueError, "num_classes"):
        L.SLLNetwork(1, 1, 1, 4)
    with assert_raises(ValueError, "mean"):
        L.SLLNetwork(10, 1, 1, 4, mean=(0.5,))
    net = L.SLLNetwork(10, 1, 1, 4, dense_inner=8)
    with assert_raises(ValueError, "x", "32"):
        net(torch.rand(1, 3, 16, 16))
