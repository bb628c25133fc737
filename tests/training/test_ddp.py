"""fit under DDP: 2 gloo processes on CPU end with identical parameters, each saw half the data."""

import os

import torch

from fastorals.testing import run_gloo_ranks


def _worker(rank: int, world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    from fastorals import data, models, training

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.arange(64) % 2
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(models.MLP(16, 2, hidden=(8,)))
    loader = data.TensorLoader(x, y, batch_size=8, seed=1)
    assert loader.world_size == world and loader.rank == rank
    ck = os.path.join(out_dir, "ck.pt")
    hist = training.fit(model, loader, epochs=2, lr=0.1, progress=False, checkpoint=ck)
    torch.save({"params": [p.detach() for p in model.parameters()], "n": len(loader), "loss": hist.train_loss},
               os.path.join(out_dir, f"rank{rank}.pt"))


def test_fit_under_ddp_two_gloo_processes(tmp_path):
    run_gloo_ranks(_worker, str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["n"] == r1["n"] == 4  # 64 samples / 2 ranks / batch 8
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)  # gradients were all-reduced
    assert r0["loss"] != r1["loss"]  # each rank saw its own half
    assert (tmp_path / "ck.pt").exists()
