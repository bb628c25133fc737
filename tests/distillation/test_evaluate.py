"""In-context evaluation: KV-cache decoding equals full recompute (window slides included), API, errors."""

from __future__ import annotations

import pytest
import torch

import fastorals
from fastorals.distillation import (
    ADModel,
    BernoulliBandit,
    DarkRoom,
    Expert,
    default_slide,
    evaluate_algorithm,
    evaluate_in_context,
    sample_actions,
)
from fastorals.testing import assert_close, assert_raises


def _model(dtype=torch.float64, context=30, pos="learned", seed=0):
    torch.manual_seed(seed)
    m = ADModel(num_actions=5, obs_nvec=(5, 5), context=context, horizon=6, n_layer=2, n_head=2, n_embd=16,
                pos=pos)
    # larger weights than the init so the policy is far from uniform and paths differ between envs
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m.to(dtype).eval()


@pytest.mark.parametrize("slide", [6, 12, 30])
def test_cache_equals_recompute_with_window_slides(slide):
    """Same seed, float64: identical actions and returns over 12 episodes (the 30-step window slides)."""
    m = _model()
    env = DarkRoom(7, size=5, horizon=6, seed=0)
    a = evaluate_in_context(m, env, num_episodes=12, temperature=1.0, seed=4, slide=slide, record_actions=True,
                            use_cache=True, task_ids=torch.arange(7) * 3)
    b = evaluate_in_context(m, env, num_episodes=12, temperature=1.0, seed=4, slide=slide, record_actions=True,
                            use_cache=False, task_ids=torch.arange(7) * 3)
    assert torch.equal(a.actions, b.actions)
    assert torch.equal(a.returns, b.returns)
    assert a.actions.shape == (7, 72) and a.returns.shape == (7, 12)


def test_cache_logits_match_recompute_step_by_step():
    """Teacher-forced: the logits of every step agree (float32 tolerance), across slides."""
    from fastorals.distillation.evaluate import _Window

    m = _model(torch.float32, context=12)
    B, L, slide = 4, 12, 6
    cache = m.gpt.make_cache(B, max_len=L, window="reprefill", slide=slide)
    win = _Window(B, L, slide, 16, torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        obs = torch.randint(0, 5, (B, 1, 2), generator=g)
        pa = torch.randint(0, 6, (B, 1), generator=g)
        pr = torch.rand(B, 1, generator=g)
        pd = torch.rand(B, 1, generator=g) < 0.2
        x = m.embed(obs, pa, pr, pd)
        with torch.no_grad():
            got = m.gpt.step(x, cache)[:, -1]
            want = m.gpt(win.push(x))[:, -1]
        assert_close(got, want, kind="kernel")


def test_cache_equals_recompute_rope_and_reference_backend():
    m = _model(pos="rope")
    env = DarkRoom(5, size=5, horizon=6, seed=0)
    kw = dict(num_episodes=8, temperature=1.0, seed=1, slide=12, record_actions=True, task_ids=torch.arange(5))
    a = evaluate_in_context(m, env, use_cache=True, **kw)
    b = evaluate_in_context(m, env, use_cache=False, **kw)
    assert torch.equal(a.actions, b.actions)
    with fastorals.use_backend("reference"):
        c = evaluate_in_context(m, env, use_cache=True, **kw)
    assert torch.equal(a.actions, c.actions)


def test_defaults_num_envs_and_result():
    m = _model(torch.float32)
    env = DarkRoom(3, size=5, horizon=6)
    res = evaluate_in_context(m, env, num_envs=20, num_episodes=3)
    assert res.returns.shape == (20, 3) and res.num_envs == 20
    test_goals = DarkRoom(1, size=5, horizon=6).task_split("test")
    assert torch.equal(res.task_ids[: test_goals.numel()], test_goals)  # held-out goals, cycled
    assert res.curve().shape == (3,) and res.normalized_curve().shape == (3,)
    assert res.steps == 18 and res.steps_per_second > 0
    assert set(res.as_dict()) == {"curve", "optimal", "steps_per_second", "num_envs"}
    assert torch.allclose(res.optimal, DarkRoom(1, size=5, horizon=6).optimal_return(res.task_ids))
    assert not m.training


def test_greedy_is_deterministic_and_sampling_follows_temperature():
    m = _model(torch.float32)
    env = DarkRoom(6, size=5, horizon=6)
    a = evaluate_in_context(m, env, num_episodes=3, temperature=0.0, seed=0, record_actions=True)
    b = evaluate_in_context(m, env, num_episodes=3, temperature=0.0, seed=9, record_actions=True)
    assert torch.equal(a.actions, b.actions)
    logits = torch.tensor([[0.0, 2.0, -1.0]]).expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample_actions(logits, 1.0, g), minlength=3).float() / 20000
    assert_close(freq, torch.softmax(logits[0], 0), atol=0.02, rtol=0)
    assert torch.equal(sample_actions(logits, 0.0, g), torch.ones(20000, dtype=torch.long))


def test_bandit_in_context():
    m = ADModel(num_actions=10, obs_nvec=(1,), context=50, horizon=1, n_layer=1, n_head=2, n_embd=8).eval()
    env = BernoulliBandit(16, seed=0)
    res = evaluate_in_context(m, env, num_episodes=60, record_actions=True)
    assert res.returns.shape == (16, 60) and res.actions.shape == (16, 60)
    assert default_slide(50, 1) == 12 and default_slide(80, 20) == 20 and default_slide(160, 20) == 40


def test_evaluate_algorithm_expert_is_optimal():
    env = DarkRoom(16, seed=0)
    res = evaluate_algorithm(Expert(), env, 2)
    assert torch.equal(res.returns.double(), res.optimal.unsqueeze(1).expand(-1, 2))


def test_errors():
    m = _model(torch.float32)
    with assert_raises(ValueError, "observations"):
        evaluate_in_context(m, DarkRoom(2), num_episodes=1)           # 9x9 env, 5x5 model
    with assert_raises(ValueError, "actions"):
        evaluate_in_context(m, BernoulliBandit(2, num_arms=4), num_episodes=1)
    env = DarkRoom(2, size=5, horizon=6)
    with assert_raises(ValueError, "slide", "multiple"):
        evaluate_in_context(m, env, num_episodes=1, slide=7)
    with assert_raises(ValueError, "slide"):
        evaluate_in_context(m, env, num_episodes=1, slide=31)
    for t in (-1.0, float("inf"), float("nan")):
        with assert_raises(ValueError, "temperature"):
            evaluate_in_context(m, env, num_episodes=1, temperature=t)
    with assert_raises(ValueError, "num_episodes"):
        evaluate_in_context(m, env, num_episodes=0)
    with assert_raises(ValueError, "unknown task ids"):
        evaluate_in_context(m, env, num_episodes=1, task_ids=torch.tensor([0, 25]))
    with assert_raises(TypeError, "model"):
        evaluate_in_context("model", env, num_episodes=1)
