"""CurriculumAugment under DDP: 2 gloo processes on CPU share the LoL test, all-reduce the counts and
end with the levels (and counts) a single process computes; diverged levels are detected."""

import os

import torch

from fastorals.testing import run_gloo_ranks


def _setup():
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    from curriculum_helpers import PixelMLP, tiny_pool

    torch.set_num_threads(1)
    pool = tiny_pool(per_class=(9, 6, 4, 3), size=8)
    model = PixelMLP(192, 4, seed=5)
    return pool, model


def _run_updates(cur, model, pool, steps=3):
    out = []
    for _ in range(steps):
        r = cur.update(model, pool)
        out.append((r.levels_after.clone(), r.correct.clone(), r.trials.clone(), r.num_evaluated, r.num_total))
    return out


def _worker(rank: int, world: int, out_dir: str) -> None:
    from fastorals import curriculum as cu
    from fastorals import data, training

    pool, model = _setup()
    cur = cu.CurriculumAugment(4, num_test=3, accept_rate=0.3, eval_batch_size=16)
    cur.set_levels([2, 0, 5, 1])
    updates = _run_updates(cur, torch.nn.parallel.DistributedDataParallel(model), pool)
    x = pool.images[:8]
    y = torch.repeat_interleave(torch.arange(4), pool.counts)[torch.argsort(pool.order)][:8]
    aug = cur(x, y)  # training-time draws are per rank

    # fit under DDP with the curriculum hook: levels stay identical on every rank
    torch.manual_seed(0)
    net = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)))
    cur2 = cu.CurriculumAugment(4, num_test=2, accept_rate=0.3)
    labels = torch.repeat_interleave(torch.arange(4), pool.counts)[torch.argsort(pool.order)]
    loader = data.TensorLoader(pool.images, labels, batch_size=4, seed=0)
    training.fit(net, loader, 3, lr=0.05, augment=cur2, on_epoch_start=cur2.hook(pool), progress=False,
                 extra_state={"curriculum": cur2}, checkpoint=os.path.join(out_dir, "ck.pt"))

    # a rank whose levels diverged is caught on every rank
    diverged = cu.CurriculumAugment(4, num_test=2)
    if rank == 1:
        diverged.set_levels([1, 0, 0, 0])
    try:
        diverged.update(model, pool)
        caught = ""
    except RuntimeError as exc:
        caught = str(exc)
    torch.save({"updates": updates, "aug": aug, "fit_history": cur2.history, "caught": caught},
               os.path.join(out_dir, f"rank{rank}.pt"))


def test_levels_identical_on_every_rank_and_equal_to_one_process(tmp_path):
    run_gloo_ranks(_worker, str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    from fastorals import curriculum as cu

    threads = torch.get_num_threads()
    pool, model = _setup()
    cur = cu.CurriculumAugment(4, num_test=3, accept_rate=0.3, eval_batch_size=16)
    cur.set_levels([2, 0, 5, 1])
    single = _run_updates(cur, model, pool)
    torch.set_num_threads(threads)
    for u0, u1, s in zip(r0["updates"], r1["updates"], single):
        assert torch.equal(u0[0], u1[0]) and torch.equal(u0[0], s[0])  # levels
        assert torch.equal(u0[1], s[1]) and torch.equal(u0[2], s[2])  # reduced counts == one process
        assert u0[3] + u1[3] == s[4] == u0[4]  # the ranks split the test
        assert abs(u0[3] - u1[3]) <= 1
    assert len({tuple(u[0].tolist()) for u in single}) > 1  # levels moved between updates
    assert not torch.equal(r0["aug"], r1["aug"])  # each rank draws its own training augmentation
    assert torch.equal(r0["fit_history"], r1["fit_history"]) and r0["fit_history"].shape == (3, 4)
    assert "levels differ across ranks" in r0["caught"] and "levels differ across ranks" in r1["caught"]
    assert (tmp_path / "ck.pt").exists()


def _diverged_worker(rank: int, world: int, out_dir: str) -> None:
    from fastorals import curriculum as cu

    pool, model = _setup()
    cur = cu.CurriculumAugment(4, num_test=2)
    cur.set_levels([[1, 0, 0, 0], [0, 0, 0, 0], [2, 0, 0, 0]][rank])  # rank 0 holds the mean of the others
    try:
        cur.update(model, pool)
        caught = ""
    except RuntimeError as exc:
        caught = str(exc)
    torch.save({"caught": caught}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_diverged_levels_are_caught_on_every_rank_of_three(tmp_path):
    run_gloo_ranks(_diverged_worker, str(tmp_path), world=3)
    for r in range(3):
        caught = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["caught"]
        assert "levels differ across ranks" in caught, (r, caught)
