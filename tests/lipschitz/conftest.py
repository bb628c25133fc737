"""Lipschitz tests use tiny tensors: one intra-op thread avoids OpenMP start-up and barrier costs
that dominate such shapes (and that explode when the 2 CI cores are shared)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
