import pytest
import torch

from fastorals import models
from fastorals.testing import assert_raises


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
@pytest.mark.parametrize("builder", [models.resnet20, models.resnet32, models.vgg11])
def test_conv_models_shapes_and_norms(builder, norm):
    m = builder(num_classes=7, width=0.5, norm=norm)
    out = m(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 7)
    kinds = {type(x).__name__ for x in m.modules()}
    want = {"batch": "BatchNorm2d", "layer": "GroupNorm", "none": None}[norm]
    if want:
        assert want in kinds
    else:
        assert "BatchNorm2d" not in kinds and "GroupNorm" not in kinds


def test_resnet20_structure_and_names():
    m = models.resnet20(width=1)
    n = sum(p.numel() for p in m.parameters())
    assert 270_000 < n < 280_000  # ~0.27M as in He et al. (plus 1x1 shortcuts)
    names = set(dict(m.named_parameters()))
    for k in ["conv1.weight", "norm1.weight", "layer1.0.conv1.weight", "layer2.0.shortcut.0.weight",
              "layer2.0.shortcut.1.weight", "layer3.2.norm2.bias", "fc.weight"]:
        assert k in names, k
    assert "layer1.0.shortcut.0.weight" not in names  # identity shortcut inside a stage
    w4 = models.resnet20(width=4)
    assert w4.fc.in_features == 256
    assert "normalize.mean" not in m.state_dict()


def test_resnet18_vgg16_mlp_digits_inputs():
    assert models.resnet18(num_classes=10, width=0.25)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert models.vgg16(width=0.25, in_channels=1)(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    mlp = models.MLP(64, 10, hidden=(32, 16), norm="layer", mean=[0.5], std=[0.2])
    assert mlp(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    assert [k for k in mlp.state_dict() if k.startswith("layers")] == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    with assert_raises(ValueError, "features"):
        mlp(torch.rand(5, 1, 8, 9))


def test_normalize_inside_the_model():
    m = models.resnet20(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]).eval()
    ref = models.resnet20().eval()
    ref.load_state_dict(m.state_dict())
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(m(x), ref((x - 0.5) / 0.25))


def test_bad_model_args():
    with assert_raises(ValueError, "norm"):
        models.resnet20(norm="instance")
    with assert_raises(ValueError, "width"):
        models.vgg11(width=0)
    with assert_raises(ValueError, "name"):
        models.build_model("alexnet")
    with assert_raises(ValueError, "std"):
        models.Normalize([0.0], [0.0])
    assert isinstance(models.build_model("mlp", in_features=4, num_classes=2), models.MLP)
