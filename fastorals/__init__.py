"""fastorals: fast, correct PyTorch implementations of eight ICLR 2023 methods.

Modules (imported lazily on first attribute access):

===================  ==========================================================
``onepixel``         One-Pixel Shortcut (unlearnable examples)
``curriculum``       CUDA: curriculum of data augmentation (long-tailed)
``augment``          batched per-sample image augmentation
``label_encoding``   RLEL: regularized label encoding learning
``koopman``          SKD: structured Koopman autoencoders
``lipschitz``        SLL / AOL / CPL 1-Lipschitz layers, certification
``behavior``         C-BeT: conditional behavior transformers
``rebasin``          Git Re-Basin: permutation matching and merging
``transformer``      causal GPT, flash attention, KV cache
``distillation``     Algorithm Distillation: in-context RL
``data``             offline data sets (CIFAR format, procedural images, digits)
``models``           MLP, CIFAR ResNets, VGG
``training``         fit / evaluate loop, PGD attacks
===================  ==========================================================

Example:
    >>> import fastorals
    >>> fastorals.info()          # prints versions, extension, threads, Triton, CUDA, backend
"""

from __future__ import annotations

import importlib
from typing import Any

from ._ext import BackendUnavailableError, use_backend
from ._info import Info, info
from ._version import __version__

_SUBMODULES = (
    "augment",
    "behavior",
    "curriculum",
    "data",
    "distillation",
    "koopman",
    "label_encoding",
    "lipschitz",
    "models",
    "onepixel",
    "rebasin",
    "repro",
    "testing",
    "training",
    "transformer",
)

__all__ = ["BackendUnavailableError", "Info", "__version__", "info", "use_backend", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fastorals' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
