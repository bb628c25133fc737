"""rebasin tests run on tiny tensors: one intra-op thread avoids thread-pool overhead (the C++
solver's multi-threaded paths are exercised explicitly with num_threads=2)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
