"""In-memory labelled image sets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

_MAX_IMPLIED_CLASSES = 1 << 20  # a label past this without class names is almost surely corrupt


@dataclass
class ImageDataset:
    """Images and labels held as tensors.

    Attributes:
        images: uint8 [N, C, H, W] in [0, 255] (or float [N, C, H, W] in [0, 1]).
        labels: int64 [N].
        classes: class names (length = number of classes).

    Unpacks like a pair: ``images, labels = dataset``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"images: expected [N, C, H, W], got shape {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels: expected shape [{self.images.shape[0]}] to match images, got {tuple(self.labels.shape)}"
            )
        if self.labels.dtype.is_floating_point or self.labels.dtype.is_complex or self.labels.dtype == torch.bool:
            raise TypeError(f"labels: expected integer class ids, got {self.labels.dtype}")
        lo, hi = (int(v) for v in torch.aminmax(self.labels)) if self.labels.numel() else (0, -1)
        if lo < 0:
            raise ValueError(f"labels: expected class ids >= 0, got min {lo}")
        if self.classes and hi >= len(self.classes):
            raise ValueError(f"labels: expected class ids in [0, {len(self.classes)}) (one per class name), got max {hi}")
        if not self.classes:
            if hi >= _MAX_IMPLIED_CLASSES:
                raise ValueError(f"labels: max label {hi} would imply {hi + 1} classes; pass classes= to confirm "
                                 "the class names (or check the labels)")
            self.classes = [str(i) for i in range(hi + 1)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.images
        yield self.labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Union[torch.Tensor, slice]) -> ImageDataset:
        """Rows ``index`` (a LongTensor of indices, a bool mask or a slice) as a new dataset."""
        return ImageDataset(self.images[index], self.labels[index], list(self.classes))

    def to(self, device: Union[str, torch.device]) -> ImageDataset:
        return ImageDataset(self.images.to(device), self.labels.to(device), list(self.classes))

    def class_counts(self) -> torch.Tensor:
        """int64 [num_classes]: samples per class."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    def float(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.images.float().div_(255.0) if self.images.dtype == torch.uint8 else self.images.float()


@dataclass
class DatasetSplits:
    """A train and a test :class:`ImageDataset` sharing class names."""

    train: ImageDataset
    test: ImageDataset

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def train_test_split(
    dataset: ImageDataset, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True
) -> DatasetSplits:
    """Seeded (stratified by default) split of one dataset into train and test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
    g = torch.Generator().manual_seed(seed)
    labels = dataset.labels.cpu()
    test_idx: list[torch.Tensor] = []
    groups = [torch.nonzero(labels == c).flatten() for c in range(dataset.num_classes)] if stratify else [
        torch.arange(len(dataset))
    ]
    for idx in groups:
        perm = idx[torch.randperm(idx.numel(), generator=g)]
        test_idx.append(perm[: int(round(test_fraction * idx.numel()))])
    test = torch.cat(test_idx).sort().values
    mask = torch.ones(len(dataset), dtype=torch.bool)
    mask[test] = False
    return DatasetSplits(dataset.subset(mask.to(dataset.labels.device)), dataset.subset(test.to(dataset.labels.device)))


def check_image_batch(images: torch.Tensor, name: str = "images", *, allow_float: bool = True) -> None:
    """Raise a clear error unless ``images`` is uint8 [N, C, H, W] (or float in [0, 1] when allowed)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name}: expected 4 dimensions [N, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return
    if not allow_float or not images.dtype.is_floating_point:
        want = "uint8" + (" or float in [0, 1]" if allow_float else "")
        raise TypeError(f"{name}: expected dtype {want}, got {images.dtype}")


def optional_device(device: Optional[Union[str, torch.device]]) -> Optional[torch.device]:
    return torch.device(device) if device is not None else None
