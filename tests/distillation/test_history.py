"""Learning histories: what is recorded, reproducibility, the on-disk format and its corruption errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from fastorals.distillation import (
    UCB,
    BernoulliBandit,
    DarkKeyToDoor,
    DarkRoom,
    DatasetFormatError,
    LearningHistories,
    QLearning,
    RandomPolicy,
    collect_learning_histories,
)
from fastorals.testing import assert_raises


@pytest.fixture(scope="module")
def dark_hist():
    torch.set_num_threads(1)
    env = DarkRoom(16, seed=0)
    return collect_learning_histories(env, QLearning(), num_tasks=24, num_episodes=12, subsample=3, seed=5,
                                      progress=False)


def test_shapes_dtypes_and_meta(dark_hist):
    h = dark_hist
    assert (h.num_histories, h.num_episodes, h.horizon, h.length) == (24, 4, 20, 80)
    assert h.obs.shape == (24, 80, 2) and h.obs.dtype == torch.uint8
    assert h.actions.dtype == torch.uint8 and h.rewards.dtype == torch.float32 and h.dones.dtype == torch.bool
    assert h.episodes.tolist() == [0, 3, 6, 9]
    assert h.dones[:, 19::20].all() and h.dones.sum() == 24 * 4
    assert h.meta["env"]["name"] == "dark_room" and h.meta["algorithm"]["name"] == "q_learning"
    assert h.meta["subsample"] == 3 and h.meta["num_source_episodes"] == 12
    # tasks are spread evenly over the 65 training goals (no goal twice among 24 histories)
    assert len(set(h.task_ids.tolist())) == 24
    assert set(h.task_ids.tolist()) <= set(DarkRoom(1).task_split("train").tolist())
    assert "histories=24" in repr(h)


def test_recorded_episodes_replay_in_the_env(dark_hist):
    """Every kept episode, replayed action by action from the start, gives the recorded obs and rewards."""
    h = dark_hist
    env = DarkRoom(h.num_histories)
    obs = env.reset(h.task_ids)
    for t in range(h.length):
        assert torch.equal(obs, h.obs[:, t].long())
        res = env.step(h.actions[:, t].long())
        assert torch.equal(res.reward, h.rewards[:, t])
        assert torch.equal(res.done, h.dones[:, t])
        obs = res.obs


def test_collection_is_reproducible_and_learns():
    env = DarkRoom(20, seed=0)
    a = collect_learning_histories(env, QLearning(), num_tasks=20, num_episodes=30, seed=1, progress=False)
    b = collect_learning_histories(DarkRoom(20, seed=9), QLearning(), num_tasks=20, num_episodes=30, seed=1,
                                   progress=False)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.task_ids, b.task_ids)
    r = a.episode_returns()
    assert float(r[:, -3:].mean()) > float(r[:, :3].mean()) + 8


def test_chunks_pad_and_explicit_tasks():
    env = BernoulliBandit(8, seed=0)
    tasks = torch.arange(19) * 3
    h = collect_learning_histories(env, UCB(), task_ids=tasks, num_episodes=10, progress=True)
    assert h.num_histories == 19 and torch.equal(h.task_ids, tasks)
    assert h.obs.shape == (19, 10, 1) and (h.obs == 0).all()
    # UCB pulls each arm once first (in some order): the first 10 pulls are a permutation
    assert all(sorted(row.tolist()) == list(range(10)) for row in h.actions[:, :10])


def test_save_load_roundtrip(tmp_path, dark_hist):
    for compress in (False, True):
        p = tmp_path / f"h{compress}.npz"
        dark_hist.save(p, compress=compress)
        back = LearningHistories.load(p)
        for k in ("obs", "actions", "rewards", "dones", "task_ids", "episodes"):
            assert torch.equal(getattr(back, k), getattr(dark_hist, k)), k
            assert getattr(back, k).dtype == getattr(dark_hist, k).dtype
        assert back.meta == dark_hist.meta


def test_collect_writes_path(tmp_path):
    p = tmp_path / "sub" / "k2d.npz"
    h = collect_learning_histories(DarkKeyToDoor(4, horizon=10, seed=0), RandomPolicy(), num_tasks=4, num_episodes=2,
                                   path=p, progress=False)
    back = LearningHistories.load(p)
    assert torch.equal(back.actions, h.actions) and back.meta["env"]["name"] == "dark_key_to_door"
    assert not list(p.parent.glob(".hist-*"))  # no temporary file left behind


def test_concatenate_and_subset(dark_hist):
    both = LearningHistories.concatenate([dark_hist, dark_hist.subset(slice(0, 5))])
    assert both.num_histories == 29 and torch.equal(both.actions[24:], dark_hist.actions[:5])
    with assert_raises(ValueError, "differ"):
        LearningHistories.concatenate([dark_hist, collect_learning_histories(
            BernoulliBandit(2), UCB(), num_tasks=2, num_episodes=80, progress=False)])


# ----------------------------------------------------------------------------- corrupt files


def _write(tmp_path, name, arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def _arrays(h):
    meta = dict(h.meta)
    return {"obs": h.obs.numpy(), "actions": h.actions.numpy(), "rewards": h.rewards.numpy(),
            "dones": h.dones.numpy(), "task_ids": h.task_ids.numpy(), "episodes": h.episodes.numpy(),
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}


def test_truncated_and_garbage_files(tmp_path, dark_hist):
    p = tmp_path / "ok.npz"
    dark_hist.save(p)
    raw = p.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with assert_raises(DatasetFormatError, "trunc.npz", "corrupted"):
        LearningHistories.load(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all" * 10)
    with assert_raises(DatasetFormatError, "junk.npz"):
        LearningHistories.load(tmp_path / "junk.npz")
    np.save(tmp_path / "bare.npy", np.zeros(3))
    with assert_raises(DatasetFormatError, "bare.npy", "not an .npz"):
        LearningHistories.load(tmp_path / "bare.npy")
    with assert_raises(FileNotFoundError, "nothing.npz"):
        LearningHistories.load(tmp_path / "nothing.npz")


def test_flipped_byte_fails_crc(tmp_path, dark_hist):
    p = tmp_path / "ok.npz"
    dark_hist.save(p)
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("rewards.npy")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw = bytearray(p.read_bytes())
    raw[start] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(raw))
    with assert_raises(DatasetFormatError, "flip.npz", "corrupted"):
        LearningHistories.load(tmp_path / "flip.npz")


def test_pickled_objects_are_refused(tmp_path, dark_hist):
    arrays = _arrays(dark_hist)
    arrays["rewards"] = np.array([{"evil": 1}] * 3, dtype=object)
    p = _write(tmp_path, "pickle.npz", arrays)
    with assert_raises(DatasetFormatError, "pickle.npz"):
        LearningHistories.load(p)


@pytest.mark.parametrize("mutate,words", [
    (lambda a: a.pop("dones"), ("missing", "dones")),
    (lambda a: a.update(meta=np.frombuffer(b"{not json", dtype=np.uint8)), ("JSON",)),
    (lambda a: a.update(meta=np.frombuffer(json.dumps({"format_version": 99}).encode(), dtype=np.uint8)),
     ("format_version",)),
    (lambda a: a.update(actions=a["actions"][:, :-20]), ("shape",)),
    (lambda a: a.update(actions=np.full_like(a["actions"], 7)), ("actions", "[0, 5)")),
    (lambda a: a.update(obs=np.full_like(a["obs"], 9)), ("observation",)),
    (lambda a: a.update(rewards=np.full_like(a["rewards"], np.nan)), ("NaN",)),
    (lambda a: a.update(dones=np.zeros_like(a["dones"])), ("dones",)),
    (lambda a: a.update(actions=a["actions"].astype(np.float32)), ("actions", "integers")),
])
def test_inconsistent_fields(tmp_path, dark_hist, mutate, words):
    arrays = _arrays(dark_hist)
    arrays["meta"] = np.frombuffer(json.dumps({**dark_hist.meta, "format_version": 1}).encode(), dtype=np.uint8)
    mutate(arrays)
    p = _write(tmp_path, "bad.npz", arrays)
    with assert_raises(DatasetFormatError, "bad.npz", *words):
        LearningHistories.load(p)


def test_bad_collect_arguments():
    env = DarkRoom(4)
    with assert_raises(TypeError, "env"):
        collect_learning_histories("dark_room", QLearning(), num_tasks=4, num_episodes=2)
    with assert_raises(TypeError, "algorithm"):
        collect_learning_histories(env, "q", num_tasks=4, num_episodes=2)
    with assert_raises(ValueError, "num_episodes"):
        collect_learning_histories(env, QLearning(), num_tasks=4, num_episodes=0)
    with assert_raises(ValueError, "subsample"):
        collect_learning_histories(env, QLearning(), num_tasks=4, num_episodes=2, subsample=3)
    with assert_raises(ValueError, "num_tasks"):
        collect_learning_histories(env, QLearning(), num_episodes=2)
    with assert_raises(ValueError, "unknown task ids"):
        collect_learning_histories(env, QLearning(), task_ids=torch.tensor([0, 81]), num_episodes=2)
