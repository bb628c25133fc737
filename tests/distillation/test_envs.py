"""Environments: hand-computed trajectories, the one-instance reference, exact optimal returns, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastorals.distillation import (
    AdversarialBandit,
    BernoulliBandit,
    DarkKeyToDoor,
    DarkRoom,
    DarkRoomHard,
    make_env,
    reference,
)
from fastorals.testing import assert_raises

U, D, L, R, S = 0, 1, 2, 3, 4


def _run(env, actions):
    """Step env with a list of per-step action lists; return obs, rewards, dones, final_obs as lists."""
    out = []
    for a in actions:
        res = env.step(torch.tensor(a))
        out.append((res.obs.tolist(), res.reward.tolist(), res.done.tolist(), res.final_obs.tolist()))
    return out


# ----------------------------------------------------------------------------- hand-computed trajectories


def test_dark_room_hand_trajectory():
    env = DarkRoom(1, horizon=5)
    goal = env.task_id(env.cell_of(5, 3))  # one right, one up from the centre (4, 4)
    obs = env.reset(goal.reshape(1))
    assert obs.tolist() == [[4, 4]]
    steps = _run(env, [[R], [S], [U], [S], [S], [L]])
    # (5,4) no reward; stay (5,4) no; up -> (5,3) goal +1; stay +1; stay +1 and the episode ends
    assert [s[1][0] for s in steps] == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert [s[2][0] for s in steps] == [False, False, False, False, True, False]
    assert steps[4][3] == [[5, 3]]          # final observation of the ended episode
    assert steps[4][0] == [[4, 4]]          # auto-reset to the centre
    assert steps[5][0] == [[3, 4]]          # next episode goes on from the centre
    assert env.t.tolist() == [1]


def test_dark_room_walls_and_goal_at_start():
    env = DarkRoom(2, size=3, horizon=4)
    env.reset(torch.tensor([env.cell_of(1, 1), env.cell_of(0, 0)]))  # goal at the centre; goal in a corner
    steps = _run(env, [[S, L], [S, L], [U, U], [S, U]])
    assert [s[1] for s in steps] == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    assert steps[1][0][1] == [0, 1]  # left into the wall: stays at x = 0
    assert steps[3][3] == [[1, 0], [0, 0]]


def test_dark_room_hard_pays_once_per_episode():
    env = DarkRoomHard(1, size=5, horizon=6)
    env.reset(env.task_id(env.cell_of(3, 2)).reshape(1))  # right of the centre (2, 2)
    steps = _run(env, [[R], [S], [L], [R], [S], [S], [R], [S]])
    assert [s[1][0] for s in steps] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert steps[5][2] == [True]
    assert env.state_index().tolist() == [env.cell_of(3, 2).item() + 25]  # stage 1 after the new reward


def test_key_to_door_order_and_once():
    env = DarkKeyToDoor(1, size=5, horizon=8)
    key, door = env.cell_of(2, 1), env.cell_of(3, 2)  # key above the centre, door right of it
    env.reset(env.task_id(key, door).reshape(1))
    # door first: nothing; then key +1; then door +1; door again: nothing
    steps = _run(env, [[R], [L], [U], [D], [R], [L], [R], [S]])
    assert [s[1][0] for s in steps] == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert steps[7][2] == [True]


def test_key_to_door_same_cell_needs_a_later_step():
    env = DarkKeyToDoor(1, size=5, horizon=4)
    c = env.cell_of(3, 2)
    env.reset(env.task_id(c, c).reshape(1))
    steps = _run(env, [[R], [S], [S], [S]])
    assert [s[1][0] for s in steps] == [1.0, 1.0, 0.0, 0.0]
    assert float(env.optimal_return(env.task_id(c, c).reshape(1))) == 2.0


# ----------------------------------------------------------------------------- against the reference


def _check_against_reference(env, ref_envs, n_steps, gen):
    B = env.num_envs
    for _ in range(n_steps):
        a = torch.randint(0, env.num_actions, (B,), generator=gen)
        res = env.step(a)
        for b in range(B):
            pos, r, done = ref_envs[b].step(int(a[b]))
            assert tuple(res.final_obs[b].tolist()) == pos
            assert float(res.reward[b]) == r
            assert bool(res.done[b]) == done
            if done:
                ref_envs[b].reset(tuple(res.obs[b].tolist()))
            assert tuple(res.obs[b].tolist()) == ref_envs[b].pos


@pytest.mark.parametrize("cls", [DarkRoom, DarkRoomHard, DarkKeyToDoor])
@pytest.mark.parametrize("start", ["center", "random"])
def test_grid_worlds_match_reference(cls, start):
    gen = torch.Generator().manual_seed(1)
    env = cls(37, horizon=7, start=start, seed=3)
    tasks = env.sample_tasks(37, split="all", generator=gen)
    obs = env.reset(tasks)
    refs = []
    for b in range(37):
        targets = [tuple(env.coords[c].tolist()) for c in env.task_targets(tasks[b:b + 1])[0]]
        refs.append(reference.ReferenceGridWorld(env.size, env.horizon, targets, repeat=env.repeat,
                                                 start=tuple(obs[b].tolist())))
    _check_against_reference(env, refs, 30, gen)


@settings(max_examples=15)
@given(size=st.integers(2, 8), horizon=st.integers(1, 9), n=st.integers(1, 9), kind=st.sampled_from([0, 1, 2]),
       seed=st.integers(0, 2**16))
def test_grid_world_property_matches_reference(size, horizon, n, kind, seed):
    cls = (DarkRoom, DarkRoomHard, DarkKeyToDoor)[kind]
    gen = torch.Generator().manual_seed(seed)
    env = cls(n, size=size, horizon=horizon, start="random", seed=seed)
    tasks = torch.randint(0, env.num_tasks, (n,), generator=gen)
    obs = env.reset(tasks)
    refs = [reference.ReferenceGridWorld(size, horizon, [tuple(env.coords[c].tolist()) for c in
                                                         env.task_targets(tasks[b:b + 1])[0]],
                                         repeat=env.repeat, start=tuple(obs[b].tolist())) for b in range(n)]
    _check_against_reference(env, refs, 2 * horizon + 1, gen)


# ----------------------------------------------------------------------------- optimal returns


def test_dark_room_optimal_return_by_enumeration():
    env = DarkRoom(1)
    dp = env.optimal_return(torch.arange(81))
    enum = torch.tensor(reference.dark_room_optimal_returns(9, 20), dtype=torch.float64)
    assert torch.equal(dp, enum)
    assert abs(float(dp.mean()) - 16.5) < 0.05          # the spec's 16.5 (exactly 1340/81 = 16.54)
    assert float(dp.mean()) == pytest.approx(1340 / 81)


def test_key_to_door_and_hard_optimal_returns():
    env = DarkKeyToDoor(1, size=5, horizon=6)
    ids = torch.arange(env.num_tasks)
    dp = env.optimal_return(ids)
    tg = env.task_targets(ids)
    for i in range(0, env.num_tasks, 7):
        k, d = (tuple(env.coords[c].tolist()) for c in tg[i])
        assert float(dp[i]) == reference.key_to_door_optimal_return(5, 6, k, d)
    assert torch.all(DarkRoomHard(1).optimal_return(torch.arange(289)) == 1.0)
    assert torch.all(DarkKeyToDoor(1).optimal_return(torch.arange(0, 6561, 13)) == 2.0)


def test_random_start_optimal_return_is_mean_over_starts():
    env = DarkRoom(1, size=3, horizon=4, start="random")
    goal = torch.tensor([0])
    # from each start cell: distance d -> 4 - max(d, 1) + 1
    want = np.mean([4 - max(abs(x) + abs(y), 1) + 1 for y in range(3) for x in range(3)])
    assert float(env.optimal_return(goal)) == pytest.approx(want)


# ----------------------------------------------------------------------------- bandits


def test_bernoulli_bandit_reward_rates_and_boundaries():
    env = BernoulliBandit(20000, seed=0)
    env.reset(torch.full((20000,), 7))
    means = env.arm_means(torch.tensor([7]))[0]
    for arm in (0, 3, 9):
        res = env.step(torch.full((20000,), arm))
        p = float(means[arm])
        assert abs(float(res.reward.mean()) - p) < 4 * math.sqrt(p * (1 - p) / 20000) + 1e-6
        assert bool(res.done.all()) and torch.equal(res.obs, torch.zeros(20000, 1, dtype=torch.long))


def test_bandit_rewards_match_reference_for_extreme_means():
    env = BernoulliBandit(3, num_arms=3, seed=0)
    env.reset(torch.tensor([0, 1, 2]))
    env.means = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    res = env.step(torch.tensor([1, 1, 2]))
    assert res.reward.tolist() == [1.0, 0.0, 1.0]
    ref = reference.ReferenceBandit([0.0, 1.0, 0.0])
    assert ref.step(1, 0.5) == 1.0 and ref.step(0, 0.0) == 0.0


def test_bandit_regret_and_optimal():
    env = BernoulliBandit(2, num_arms=4, num_tasks=10)
    means = env.arm_means(torch.tensor([3, 4]))
    reg = env.regret(torch.tensor([[0, 1], [2, 3]]), torch.tensor([3, 4]))
    want = means.max(1, keepdim=True).values - means.gather(1, torch.tensor([[0, 1], [2, 3]]))
    assert torch.equal(reg, want)
    assert torch.equal(env.optimal_return(torch.tensor([3, 4])), means.max(1).values.double())


def test_adversarial_bandit_parity_by_split():
    env = AdversarialBandit(1, num_tasks=4000, task_seed=1)
    best = env.means_table.argmax(1)
    train, test = env.task_split("train"), env.task_split("test")
    assert train.numel() == 3200 and test.numel() == 800
    odd_train = float((best[train] % 2 == 1).float().mean())
    odd_test = float((best[test] % 2 == 1).float().mean())
    assert 0.93 < odd_train < 0.97 and 0.02 < odd_test < 0.08
    # the means themselves are still a permutation of uniform draws
    assert float(env.means_table.min()) >= 0 and float(env.means_table.max()) <= 1


# ----------------------------------------------------------------------------- tasks, state, config


def test_task_splits():
    env = DarkRoom(1)
    tr, te, al = env.task_split("train"), env.task_split("test"), env.task_split("all")
    assert tr.numel() == 65 and te.numel() == 16
    assert torch.equal(torch.cat([tr, te]).sort().values, al)
    assert torch.equal(DarkRoom(3, split_seed=0).task_split("test"), te)
    assert not torch.equal(DarkRoom(3, split_seed=1).task_split("test"), te)
    cyc = env.sample_tasks(40, "test", cycle=True)
    assert torch.equal(cyc[:16], te) and torch.equal(cyc[16:32], te)


def test_state_dict_resumes_exactly():
    env = DarkRoom(5, start="random", seed=2)
    env.reset(torch.arange(5))
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(0, 5, (40, 5), generator=g)
    for a in acts[:13]:
        env.step(a)
    st = env.state_dict()
    a_out = [env.step(a) for a in acts[13:]]
    env2 = DarkRoom(5, start="random", seed=99)
    env2.load_state_dict(st)
    b_out = [env2.step(a) for a in acts[13:]]
    for x, y in zip(a_out, b_out):
        assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_make_env_and_with_num_envs():
    env = make_env("dark_key_to_door", 3, seed=0)
    assert isinstance(env, DarkKeyToDoor) and env.num_tasks == 6561 and env.horizon == 50
    other = DarkRoom(4, size=7, horizon=11, start="random").with_num_envs(9)
    assert (other.num_envs, other.size, other.horizon, other.start) == (9, 7, 11, "random")
    b = AdversarialBandit(2, bias=0.8, num_tasks=50).with_num_envs(3)
    assert isinstance(b, AdversarialBandit) and b.bias == 0.8 and b.num_tasks == 50


# ----------------------------------------------------------------------------- errors


def test_bad_actions_raise():
    env = DarkRoom(4)
    with assert_raises(ValueError, "reset"):
        env.step(torch.zeros(4, dtype=torch.long))
    env.reset(torch.arange(4))
    with assert_raises(ValueError, "actions", "[0, 5)"):
        env.step(torch.tensor([0, 1, 5, 2]))
    with assert_raises(ValueError, "actions", "[0, 5)"):
        env.step(torch.tensor([0, -1, 0, 2]))
    with assert_raises(ValueError, "actions", "(4,)"):
        env.step(torch.zeros(3, dtype=torch.long))
    with assert_raises(TypeError, "actions", "integer"):
        env.step(torch.zeros(4))
    env.step(np.zeros(4, dtype=np.int32))  # any integer array works


def test_bad_tasks_raise():
    env = DarkRoom(3)
    with assert_raises(ValueError, "task_ids", "required"):
        env.reset()
    with assert_raises(ValueError, "unknown task ids", "[0, 81)"):
        env.reset(torch.tensor([0, 81, 3]))
    with assert_raises(ValueError, "unknown task ids"):
        env.reset(torch.tensor([0, -1, 3]))
    with assert_raises(ValueError, "task_ids", "(3,)"):
        env.reset(torch.tensor([0, 1]))
    with assert_raises(TypeError, "task_ids", "integer"):
        env.reset(torch.tensor([0.0, 1.0, 2.0]))
    with assert_raises(ValueError, "split"):
        env.task_split("validation")
    with assert_raises(ValueError, "unknown task ids"):
        env.optimal_return(torch.tensor([100]))


@pytest.mark.parametrize("kwargs,words", [
    (dict(num_envs=0), ("num_envs",)),
    (dict(num_envs=2, size=1), ("size",)),
    (dict(num_envs=2, horizon=0), ("horizon",)),
    (dict(num_envs=2, start="corner"), ("start",)),
    (dict(num_envs=2, test_fraction=1.0), ("test_fraction",)),
])
def test_bad_constructor_args(kwargs, words):
    with assert_raises(ValueError, *words):
        DarkRoom(**kwargs)


def test_bad_bandit_args():
    with assert_raises(ValueError, "num_arms"):
        BernoulliBandit(2, num_arms=1)
    with assert_raises(ValueError, "bias"):
        AdversarialBandit(2, bias=1.5)
    with assert_raises(ValueError, "horizon"):
        BernoulliBandit(2, horizon=3)
    with assert_raises(ValueError, "name"):
        make_env("watermaze", 2)


# ----------------------------------------------------------------------------- gymnasium adapter


def test_gymnasium_vector_env():
    gym = pytest.importorskip("gymnasium")
    from fastorals.distillation import to_gymnasium

    venv = to_gymnasium(DarkRoom(6, horizon=3))
    assert isinstance(venv, gym.vector.VectorEnv)
    obs, info = venv.reset(seed=0, options={"split": "test"})
    assert obs.shape == (6, 2) and obs.dtype == np.int64 and venv.observation_space.contains(obs)
    assert set(info["task_ids"].tolist()) <= set(DarkRoom(1).task_split("test").tolist())
    for t in range(3):
        obs, rew, term, trunc, infos = venv.step(venv.action_space.sample())
        assert rew.shape == (6,) and not term.any()
        assert trunc.all() == (t == 2)
    assert infos["final_obs"].shape == (6, 2) and infos["_final_obs"].all()
    assert (obs == 4).all()  # auto-reset to the centre
    obs, info = venv.reset(options={"task_ids": np.arange(6)})
    assert info["task_ids"].tolist() == list(range(6))
    with assert_raises(ValueError, "options"):
        venv.reset(options={"goal": 3})
    with assert_raises(ValueError, "actions"):
        venv.step(np.full(6, 7))
