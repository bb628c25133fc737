"""Distillation tests step small batches of environments and tiny models: one intra-op thread avoids
OpenMP hand-off costs (milliseconds per op on a loaded 2-core machine) and changes no result."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
