"""Offline data: CIFAR-format loader (safe unpickling), procedural images, digits, long-tail tools.

Example:
    >>> from fastorals import data
    >>> train = data.synthetic_images(50_000, num_classes=10, seed=0)
    >>> idx = data.long_tailed_indices(train.labels, imbalance_ratio=100, seed=0)
    >>> loader = data.TensorLoader(train.subset(idx), batch_size=128)
"""

from .cifar import (
    CifarFormatError,
    CifarNotFoundError,
    RestrictedUnpickler,
    UnsafePickleError,
    load_cifar10,
    load_cifar100,
    safe_load_pickle,
    write_cifar_batch,
)
from .dataset import DatasetSplits, ImageDataset, check_image_batch, train_test_split
from .digits import load_digits
from .loader import TensorLoader
from .longtail import group_accuracy, long_tailed_counts, long_tailed_indices, shot_groups
from .synthetic import class_names, synthetic_images, synthetic_splits

__all__ = [
    "CifarFormatError",
    "CifarNotFoundError",
    "DatasetSplits",
    "ImageDataset",
    "RestrictedUnpickler",
    "TensorLoader",
    "UnsafePickleError",
    "check_image_batch",
    "class_names",
    "group_accuracy",
    "load_cifar10",
    "load_cifar100",
    "load_digits",
    "long_tailed_counts",
    "long_tailed_indices",
    "safe_load_pickle",
    "shot_groups",
    "synthetic_images",
    "synthetic_splits",
    "train_test_split",
    "write_cifar_batch",
]
