"""Play-data environments, scripted demonstrators, the window/goal sampler, rollouts."""

import torch

from fastorals.behavior import (
    MLPPolicy,
    MultiGoalArena,
    MultiPathEnv,
    PlayData,
    WindowSampler,
    multigoal_demos,
    multipath_demos,
    rollout,
    train_policy,
)
from fastorals.testing import assert_close, assert_raises


def test_multipath_demos_modes_and_goal():
    data = multipath_demos(3000, seed=0)
    freq = torch.bincount(data.modes, minlength=3).double() / 3000
    assert_close(freq, torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64), atol=0.03, rtol=0)
    traj = torch.cat([data.obs, data.final_obs[:, None]], 1)
    assert torch.equal(MultiPathEnv.route_of(traj), data.modes)
    assert bool(MultiPathEnv.reached_goal(traj).all())
    # noisy: consecutive demonstrations of one route differ
    r0 = traj[data.modes == 0]
    assert float((r0[0] - r0[1]).abs().max()) > 0.5


def test_multigoal_demos_visit_distinct_goals_in_random_orders():
    data = multigoal_demos(1200, visits=3, seed=1)
    assert data.info["completed"] == 1.0
    assert bool((data.final_obs[:, 2:].sum(1) == 3).all())  # exactly the 3 chosen goals are done
    ids, counts = torch.unique(data.modes, return_counts=True)
    assert len(ids) == 24 and int(counts.min()) > 25  # all 4*3*2 orders, roughly uniform
    names = data.info["sequences"]
    assert all(int(i) in names for i in ids)


def test_multigoal_replay_reaches_the_demo_end_state():
    data = multigoal_demos(64, seed=2)
    env = MultiGoalArena(64, seed=5)
    env.reset()
    env.pos = data.obs[:, 0, :2].clone()
    env._update_flags()
    for t in range(data.obs.shape[1]):
        a = torch.where((t < data.lengths)[:, None], data.actions[:, t], torch.zeros(64, 2))
        env.step(a)
    goal = data.goal_frames(1)
    assert bool(env.success(goal).all())
    assert torch.equal(env.sequence_ids(env.visit_order(), 3), data.modes)
    # another demonstration's end state is not reached (unless it is the same end state)
    other = goal.roll(1, 0)
    same = (other[:, 0, 2:] == goal[:, 0, 2:]).all(1) & (env.target_of(other)[1] == env.target_of(goal)[1])
    assert torch.equal(env.success(other), same)


def test_env_errors():
    env = MultiGoalArena(3)
    with assert_raises(ValueError, "actions", "(3, 2)"):
        env.step(torch.zeros(2, 2))
    with assert_raises(ValueError, "actions", "NaN"):
        env.step(torch.full((3, 2), float("nan")))
    with assert_raises(ValueError, "num_envs"):
        MultiPathEnv(0)
    with assert_raises(ValueError, "visits"):
        multigoal_demos(4, visits=5)
    with assert_raises(ValueError, "probs"):
        multipath_demos(4, probs=(0.5, 0.5, 0.5))


def test_window_sampler_windows_masks_and_goals():
    data = multigoal_demos(50, seed=3)
    s = WindowSampler(data, history=4, goal_tokens=2, goal_mode="tail")
    b = s.sample(500, torch.Generator().manual_seed(0))
    assert b["obs"].shape == (500, 4, 6) and b["actions"].shape == (500, 4, 2) and b["goal"].shape == (500, 2, 6)
    assert b["mask"].dtype == torch.bool and bool(b["mask"][:, -1].all())
    pad = ~b["mask"]
    assert bool(pad.any())
    # padding is at the start and repeats the trajectory's first observation (the first real step)
    k = pad.sum(1)
    assert torch.equal(pad, torch.arange(4)[None] < k[:, None])
    first = b["obs"][torch.arange(500), k]
    same = (b["obs"] == first[:, None]).all(-1)
    assert bool((same | ~(torch.arange(4)[None] <= k[:, None])).all())
    # tail goals end with a demonstration end state (all three goals done)
    assert bool((b["goal"][:, -1, 2:].sum(-1) == 3).all())
    fut = WindowSampler(data, history=1, goal_tokens=1, goal_mode="future", min_gap=3)
    bf = fut.sample(300, torch.Generator().manual_seed(1))
    # each future goal is a frame of the same trajectory at least min_gap steps after the window (or its end)
    seq = data._with_final()
    for i in range(300):
        o = bf["obs"][i, 0]
        n = int(((data.obs == o).all(-1)).any(1).nonzero()[0, 0])
        t = int(((data.obs[n] == o).all(-1)).nonzero()[0, 0])
        hits = ((seq[n] == bf["goal"][i, 0]).all(-1)).nonzero().flatten()
        end = int(data.lengths[n])
        assert int(hits.max()) >= min(t + 3, end)
    with assert_raises(ValueError, "goal_mode"):
        WindowSampler(data, 2, 1, goal_mode="past")
    with assert_raises(ValueError, "history"):
        WindowSampler(data, 0)


def test_playdata_validation():
    with assert_raises(ValueError, "lengths"):
        PlayData(torch.zeros(2, 5, 3), torch.zeros(2, 5, 2), torch.tensor([0, 5]))
    with assert_raises(ValueError, "actions"):
        PlayData(torch.zeros(2, 5, 3), torch.zeros(2, 4, 2), torch.tensor([5, 5]))
    bad = torch.zeros(2, 5, 2)
    bad[0, 0, 0] = float("inf")
    with assert_raises(ValueError, "actions", "NaN"):
        PlayData(torch.zeros(2, 5, 3), bad, torch.tensor([5, 5]))


def test_train_and_rollout_smoke():
    data = multipath_demos(64, seed=4)
    bc = MLPPolicy(2, 2, history=2, hidden=(32,))
    hist = train_policy(bc, data, steps=60, batch_size=32, lr=3e-3, warmup=5)
    assert sum(hist["loss"][-10:]) < sum(hist["loss"][:10])
    env = MultiPathEnv(8)
    traj = rollout(env, bc)
    assert traj.shape == (8, 51, 2) and bool(torch.isfinite(traj).all())
