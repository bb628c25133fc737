"""fastorals.testing.run_gloo_ranks: the group is set up for the worker, a rank killed by a signal
runs the ranks once more, and an exception raised by a worker is not retried."""

from __future__ import annotations

import os
import signal

import pytest
import torch
import torch.multiprocessing as mp

from fastorals.testing import run_gloo_ranks


def _sum_worker(rank: int, world: int, out_dir: str) -> None:
    import torch.distributed as dist

    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    torch.save(t, os.path.join(out_dir, f"sum{rank}.pt"))


def _crash_once_worker(rank: int, world: int, out_dir: str) -> None:
    marker = os.path.join(out_dir, "crashed")
    if rank == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    with open(os.path.join(out_dir, f"ran{rank}"), "a") as f:
        f.write("x")


def _raising_worker(rank: int, world: int, out_dir: str) -> None:
    with open(os.path.join(out_dir, f"tries{rank}"), "a") as f:
        f.write("x")
    raise ValueError("bad worker")


def test_group_is_ready_for_the_worker(tmp_path):
    run_gloo_ranks(_sum_worker, str(tmp_path))
    for r in range(2):
        assert torch.load(tmp_path / f"sum{r}.pt").item() == 3.0


def test_a_rank_killed_by_a_signal_runs_again_once(tmp_path):
    run_gloo_ranks(_crash_once_worker, str(tmp_path))
    assert (tmp_path / "crashed").exists()
    assert (tmp_path / "ran0").read_text() == "x"  # rank 0 completed only in the second run


def test_an_exception_in_a_worker_is_not_retried(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="bad worker"):
        run_gloo_ranks(_raising_worker, str(tmp_path))
    tries = [(tmp_path / f"tries{r}").read_text() for r in range(2) if (tmp_path / f"tries{r}").exists()]
    assert tries and all(t == "x" for t in tries)
