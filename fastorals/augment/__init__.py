"""Batched per-sample image augmentation: each sample of a uint8 batch gets its own chain of
PIL-exact ops, in one pass per image (C++/OpenMP on the CPU, one Triton launch on the GPU).

The ops are the 22 of the CUDA paper ("CUDA: Curriculum of Data Augmentation for Long-tailed
Recognition", Ahn, Ko, Yun, ICLR 2023) plus its base pipeline (random crop with padding,
horizontal flip, Cutout, Normalize) fused into the output. See :mod:`.opset` for op ids, values
and the two magnitude mappings, and ``README.md`` for speed and exactness.

Example:
    >>> import torch
    >>> from fastorals import augment
    >>> images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    >>> g = torch.Generator().manual_seed(0)
    >>> aug = augment.BatchAugment.cifar(cutout=16)          # crop 4 + flip + CIFAR mean/std
    >>> x = aug(images, strengths=torch.randint(0, 11, (128,)), generator=g)
    >>> x.shape, x.dtype
    (torch.Size([128, 3, 32, 32]), torch.float32)

    Explicit chains:

    >>> chains = augment.Chains.from_lists([["Rotate", "Equalize"]] * 128, [[20.0, 0.0]] * 128)
    >>> y = augment.apply_chains(images, chains.ops, chains.magnitudes, chains.signs)  # uint8
"""

from . import opset
from .api import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    BatchAugment,
    Chains,
    ChainSampler,
    PipelineDraws,
    apply_chains,
    batch_augment,
    draw_pipeline,
    sample_chains,
)
from .opset import NONE, NUM_OPS, OP_IDS, OP_NAMES, op_id

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "NONE",
    "NUM_OPS",
    "OP_IDS",
    "OP_NAMES",
    "BatchAugment",
    "ChainSampler",
    "Chains",
    "PipelineDraws",
    "apply_chains",
    "batch_augment",
    "draw_pipeline",
    "op_id",
    "opset",
    "sample_chains",
]
