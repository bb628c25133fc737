"""Git Re-Basin: Merging Models modulo Permutation Symmetries (Ainsworth, Hayase, Srinivasa, ICLR 2023).

Permutation specs (hand-written for :mod:`fastorals.models`, or traced from any model's
torch.fx graph), weight matching with cached GEMM costs and warm-started exact assignment
(a Jonker-Volgenant solver in C++), activation matching with streaming statistics, the
straight-through estimator, interpolation barriers with BatchNorm reset and REPAIR, and MergeMany.

Example:
    >>> import torch
    >>> from fastorals import models, rebasin
    >>> a, b = models.resnet20(width=4), models.resnet20(width=4)      # trained from different seeds
    >>> spec = rebasin.trace_permutation_spec(a, torch.randn(2, 3, 32, 32))   # or rebasin.resnet_spec(a)
    >>> res = rebasin.weight_matching(spec, a.state_dict(), b.state_dict())
    >>> b_aligned = res.apply(spec, b)                                # a state dict
    >>> curve = rebasin.loss_barrier(a, a.state_dict(), b_aligned, train_loader, test_loader)
"""

from .activations import ActivationStats, activation_matching, ste_matching
from .lap import AssignmentDuals, linear_sum_assignment
from .matching import MatchingResult, weight_matching
from .merge import BarrierResult, evaluate_loss, interpolate, loss_barrier, merge_many, repair, reset_bn_stats
from .spec import (
    PermutationSpec,
    SpecCheck,
    apply_permutation,
    check_spec,
    identity_permutation,
    invert_permutation,
    mlp_spec,
    random_permutation,
    resnet_spec,
    spec_for,
    vgg_spec,
)
from .trace import GraphTrace, TraceError, trace_permutation_spec

__all__ = [
    "ActivationStats",
    "AssignmentDuals",
    "BarrierResult",
    "GraphTrace",
    "MatchingResult",
    "PermutationSpec",
    "SpecCheck",
    "TraceError",
    "activation_matching",
    "apply_permutation",
    "check_spec",
    "evaluate_loss",
    "identity_permutation",
    "interpolate",
    "invert_permutation",
    "linear_sum_assignment",
    "loss_barrier",
    "merge_many",
    "mlp_spec",
    "random_permutation",
    "repair",
    "reset_bn_stats",
    "resnet_spec",
    "spec_for",
    "ste_matching",
    "trace_permutation_spec",
    "vgg_spec",
    "weight_matching",
]
