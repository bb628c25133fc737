"""Source algorithms: they learn over episodes (seeded), experts are optimal, arguments are checked."""

from __future__ import annotations

import math

import pytest
import torch

from fastorals.distillation import (
    PPO,
    UCB,
    BernoulliBandit,
    DarkKeyToDoor,
    DarkRoom,
    DarkRoomHard,
    Expert,
    QLearning,
    RandomPolicy,
    ThompsonSampling,
    evaluate_algorithm,
    make_algorithm,
    reference,
)
from fastorals.testing import assert_raises


def _bandit_regret(algo, n=400, trials=100, seed=0):
    env = BernoulliBandit(n, seed=seed)
    res = evaluate_algorithm(algo, env, trials, split="train", seed=seed, record_actions=True)
    return env.regret(res.actions, res.task_ids), res.returns


@pytest.mark.parametrize("algo", [UCB(), UCB(c=math.sqrt(2)), ThompsonSampling()])
@pytest.mark.parametrize("seed", [0, 1])
def test_bandit_algorithms_learn(algo, seed):
    reg, rets = _bandit_regret(algo, seed=seed)
    rand_reg, _ = _bandit_regret(RandomPolicy(), seed=seed)
    # regret per trial falls: the last 20 trials lose far less than the first 20
    assert float(reg[:, -20:].mean()) < 0.75 * float(reg[:, :20].mean())
    assert float(reg.sum(1).mean()) < 0.75 * float(rand_reg.sum(1).mean())
    assert float(rets[:, -20:].mean()) > float(rets[:, :10].mean()) + 0.1


def test_ucb_choice_matches_reference_scores():
    env = BernoulliBandit(1, num_arms=4)
    env.reset(torch.tensor([0]))
    algo = UCB(c=0.7)
    algo.begin(env, torch.Generator().manual_seed(0))
    algo.counts = torch.tensor([[3.0, 5.0, 2.0, 7.0]])
    algo.sums = torch.tensor([[1.0, 4.0, 1.0, 5.0]])
    scores = reference.ucb_scores([3, 5, 2, 7], [1.0, 4.0, 1.0, 5.0], 17, 0.7)
    assert int(algo.act(env.reset())) == max(range(4), key=lambda i: scores[i])
    algo.counts[0, 2] = 0  # an untried arm is pulled first
    assert int(algo.act(env.reset())) == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_q_learning_learns_dark_room(seed):
    env = DarkRoom(81, seed=seed)
    res = evaluate_algorithm(QLearning(), env, 40, task_ids=torch.arange(81), seed=seed)
    curve = res.curve()
    assert float(curve[:3].mean()) < 4.0
    assert float(curve[-5:].mean()) > 0.95 * float(res.optimal.mean())


def test_q_learning_without_planning_still_learns():
    env = DarkRoom(81, seed=0)
    res = evaluate_algorithm(QLearning(planning=0, backward_sweep=False, epsilon=0.1), env, 40,
                             task_ids=torch.arange(81))
    curve = res.curve()
    assert float(curve[-5:].mean()) > float(curve[:5].mean()) + 5.0


def test_ppo_learns_dark_room():
    torch.manual_seed(0)
    env = DarkRoom(48, seed=0)
    res = evaluate_algorithm(PPO(), env, 40, task_ids=torch.arange(48), seed=0)
    curve = res.curve()
    assert float(curve[-10:].mean()) > float(curve[:10].mean()) + 3.0


def test_ppo_learners_are_independent():
    """Changing one instance's rewards must not change the other instances' networks."""
    env = DarkRoom(2, horizon=4, seed=0)
    env.reset(torch.tensor([3, 3]))
    algo = PPO(episodes_per_update=1)
    algo.begin(env, torch.Generator().manual_seed(0))
    w0 = algo.w1.detach().clone()
    obs = env.reset()
    for _ in range(4):
        a = torch.tensor([0, 0])  # both walk up the same way
        res = env.step(a)
        res = res._replace(reward=torch.tensor([0.0, 1.0]))  # only instance 1 is rewarded
        algo.update(algo_act_then(algo, obs, a), res)
        obs = res.obs
    assert not torch.equal(algo.w1[0], w0[0]) or not torch.equal(algo.w1[1], w0[1])
    assert not torch.equal(algo.w1[0], algo.w1[1])


def algo_act_then(algo, obs, forced):
    """Run act() for its bookkeeping, then overwrite the stored action with ``forced``."""
    algo.act(obs)
    algo.buf_a[:, algo.k] = forced
    return forced


@pytest.mark.parametrize("env", [DarkRoom(81, seed=0), DarkRoomHard(64, seed=0), DarkKeyToDoor(64, seed=0)])
def test_expert_is_optimal(env):
    tasks = env.sample_tasks(env.num_envs, split="all", generator=torch.Generator().manual_seed(0))
    res = evaluate_algorithm(Expert(), env, 2, task_ids=tasks)
    assert torch.equal(res.returns.double(), res.optimal.unsqueeze(1).expand(-1, 2))


def test_expert_bandit_pulls_best_arm():
    env = BernoulliBandit(50, seed=0)
    res = evaluate_algorithm(Expert(), env, 5, split="train", record_actions=True)
    assert torch.equal(res.actions, env.arm_means(res.task_ids).argmax(1, keepdim=True).expand(-1, 5))


def test_algorithm_errors():
    with assert_raises(TypeError, "bandit"):
        UCB().begin(DarkRoom(2))
    with assert_raises(ValueError, "lr"):
        QLearning(lr=0)
    with assert_raises(ValueError, "gamma"):
        QLearning(gamma=1.5)
    with assert_raises(ValueError, "planning"):
        QLearning(planning=-1)
    with assert_raises(ValueError, "plan_every"):
        QLearning(plan_every="never")
    with assert_raises(ValueError, "c"):
        UCB(c=-1)
    with assert_raises(ValueError, "prior"):
        ThompsonSampling(prior=(0, 1))
    with assert_raises(ValueError, "name"):
        make_algorithm("a3c")
    with assert_raises(RuntimeError, "begin"):
        RandomPolicy().act(torch.zeros(1, 1))
    with assert_raises(TypeError, "env"):
        QLearning().begin("dark_room")
    assert isinstance(make_algorithm("q_learning", planning=0), QLearning)
