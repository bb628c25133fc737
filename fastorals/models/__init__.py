"""Plain, readable models shared by several methods, with stable parameter names.

All take inputs in [0, 1] (pixel space) and optionally normalize inside (``mean``/``std``,
stored as non-persistent buffers, so attacks and certificates work in pixel space and the
state dict holds only learnable weights and norm statistics).

===============================  ===============================================
``MLP``                          flatten -> [Linear -> (norm) -> ReLU] x L -> Linear
``resnet20`` / ``resnet32``      CIFAR ResNets (He et al. 2016), width multiplier,
                                 norm "batch" | "layer" | "none", 1x1-conv shortcuts
``resnet18``                     CIFAR variant of ResNet-18 (3x3 stem, no max-pool)
``vgg11`` / ``vgg16``            VGG with width multiplier and norm choice
===============================  ===============================================

Parameter names (used by permutation specs and certificates):

* MLP: ``layers.{i}.weight/bias``, ``norms.{i}.*``, ``head.weight/bias``.
* ResNet: ``conv1``, ``norm1``, ``layer{s}.{b}.conv1/norm1/conv2/norm2``,
  ``layer{s}.{b}.shortcut.0`` (conv) / ``.shortcut.1`` (norm), ``fc``.
* VGG: ``features.{i}`` (conv / norm / relu / pool in one Sequential), ``classifier.{i}``.
"""

from .mlp import MLP
from .norm import Normalize, make_norm
from .resnet import BasicBlock, CifarResNet, resnet18, resnet20, resnet32
from .vgg import VGG, vgg11, vgg16

__all__ = [
    "MLP",
    "VGG",
    "BasicBlock",
    "CifarResNet",
    "Normalize",
    "build_model",
    "make_norm",
    "resnet18",
    "resnet20",
    "resnet32",
    "vgg11",
    "vgg16",
]

_BUILDERS = {"resnet18": resnet18, "resnet20": resnet20, "resnet32": resnet32, "vgg11": vgg11, "vgg16": vgg16}


def build_model(name: str, **kwargs):
    """Build a model by name: "mlp", "resnet18", "resnet20", "resnet32", "vgg11", "vgg16"."""
    if name == "mlp":
        return MLP(**kwargs)
    if name not in _BUILDERS:
        raise ValueError(f"name: expected one of {['mlp', *sorted(_BUILDERS)]}, got {name!r}")
    return _BUILDERS[name](**kwargs)
