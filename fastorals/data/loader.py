"""Fast in-memory batching on any device: no per-sample Python, no worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Optional, Union

import torch

from .._args import int_arg
from .dataset import ImageDataset


class TensorLoader:
    """Batches of (inputs, labels) drawn from tensors that already sit on the target device.

    Each epoch's order is a pure function of ``(seed, epoch)``, so a run resumed at epoch e sees
    exactly the batches an uninterrupted run would. Under DDP pass ``rank``/``world_size`` (or
    leave None to read them from ``torch.distributed``): each rank gets a disjoint, equally
    sized share of every epoch (padded by wrapping around, as ``DistributedSampler``).

    Args:
        inputs: tensor [N, ...] (e.g. uint8 images) or an :class:`ImageDataset`.
        labels: tensor [N] (omit when ``inputs`` is a dataset).
        batch_size: samples per batch.
        shuffle: reshuffle every epoch.
        drop_last: drop the last incomplete batch.
        seed: base seed of the shuffles.
        device: move the data there once, up front (default: where it is).
        transform: optional ``fn(x, y) -> x`` applied per batch (e.g. batched augmentation).

    Example:
        >>> loader = TensorLoader(x_train, y_train, batch_size=256, device="cuda")
        >>> for epoch in range(10):
        ...     loader.set_epoch(epoch)
        ...     for x, y in loader: ...
    """

    def __init__(
        self,
        inputs: Union[torch.Tensor, ImageDataset],
        labels: Optional[torch.Tensor] = None,
        batch_size: int = 128,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: Optional[Union[str, torch.device]] = None,
        transform: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        if isinstance(inputs, ImageDataset):
            if labels is not None:
                raise ValueError("labels: pass either a dataset or (inputs, labels), not both")
            inputs, labels = inputs.images, inputs.labels
        if labels is None:
            raise ValueError("labels: required when inputs is a tensor")
        if inputs.shape[0] != labels.shape[0]:
            raise ValueError(f"labels: {labels.shape[0]} labels for {inputs.shape[0]} inputs")
        batch_size = int_arg(batch_size, "batch_size")
        seed = int_arg(seed, "seed", None)
        if abs(seed) >= 2 ** 43:  # mixed with the epoch into one int64 generator seed
            raise ValueError(f"seed: expected |seed| < 2**43 (it is mixed with the epoch), got {seed}")
        if (rank is None) != (world_size is None):
            raise ValueError(f"rank, world_size: give both or neither, got rank={rank!r}, world_size={world_size!r}")
        if device is not None:
            inputs, labels = inputs.to(device), labels.to(device)
        if rank is None or world_size is None:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rank, world_size = dist.get_rank(), dist.get_world_size()
            else:
                rank, world_size = 0, 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank}")
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed, self.epoch = int(seed), 0
        self.transform = transform
        self.rank, self.world_size = rank, world_size

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> torch.Tensor:
        n = self.inputs.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = -(-n // self.world_size)
            total = per_rank * self.world_size
            if total > n:
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank : total : self.world_size]
        return order.to(self.device)

    def __len__(self) -> int:
        n = -(-self.inputs.shape[0] // self.world_size) if self.world_size > 1 else self.inputs.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        n = order.numel()
        stop = n - n % self.batch_size if self.drop_last else n
        for s in range(0, stop, self.batch_size):
            idx = order[s : s + self.batch_size]
            x, y = self.inputs.index_select(0, idx), self.labels.index_select(0, idx)
            if self.transform is not None:
                x = self.transform(x, y)
            yield x, y

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seed": self.seed, "batch_size": self.batch_size, "num_samples": len(self.labels)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, now in (("batch_size", self.batch_size), ("num_samples", len(self.labels))):
            saved = state.get(key)  # absent in states saved before they were recorded
            if saved is not None and int(saved) != now:
                raise ValueError(f"state_dict: saved for {key}={int(saved)}, this loader has {key}={now}; a resumed run "
                                 "needs the same batches per epoch (its schedule counts them)")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
