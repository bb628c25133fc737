"""Several small host tensors to a device in one copy.

A call that draws its random parameters on the host (a CPU generator) and runs on a GPU would
otherwise copy each small tensor on its own. From pageable memory every such copy waits for the
stream to drain: the host stalls behind whatever the GPU has queued (a training step), once per
tensor. :func:`to_device_packed` casts the tensors into one byte buffer, pinned when the target is
CUDA so the single copy is asynchronous, and returns typed views of the device buffer. On the
same bytes, a graph replay (:class:`fastorals._graphs.GraphCache`) then needs one copy too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

# every part starts on this boundary: each typed view is aligned, and a graph replay groups the
# parts (its span check allows this much padding per part)
from ._graphs import _ALIGN

__all__ = ["to_device_packed"]


def to_device_packed(parts: Sequence[tuple[torch.Tensor, torch.dtype]],
                     device: Union[str, torch.device]) -> list[torch.Tensor]:
    """Each ``(tensor, dtype)`` cast to ``dtype`` on ``device``, from one host-to-device copy.

    Args:
        parts: CPU tensors (any shape, any dtype castable to the given one) and their target dtypes.
        device: where the results live; CUDA copies go through pinned memory, without blocking.
    Returns:
        Contiguous tensors on ``device`` with the parts' shapes and the given dtypes: views of one
        buffer (writing one does not touch the others).

    Example:
        >>> ops, flip = to_device_packed([(ops, torch.int32), (flip, torch.uint8)], "cuda")  # doctest: +SKIP
    """
    device = torch.device(device)
    offsets = []
    end = 0
    for t, dt in parts:
        if t.device.type != "cpu":
            raise ValueError(f"parts: expected CPU tensors, got one on {t.device}")
        end = -(-end // _ALIGN) * _ALIGN
        offsets.append(end)
        end += t.numel() * dt.itemsize
    pin = device.type == "cuda"
    host = torch.empty(end, dtype=torch.uint8, device="cpu", pin_memory=pin)  # whatever the default device
    for (t, dt), o in zip(parts, offsets):
        if t.numel():
            host[o:o + t.numel() * dt.itemsize].view(dt).view(t.shape).copy_(t)
    buf = host.to(device, non_blocking=pin)  # pinned: ordered on the stream, the host goes on
    return [buf[o:o + t.numel() * dt.itemsize].view(dt).view(t.shape) for (t, dt), o in zip(parts, offsets)]
