"""BehaviorTransformer (BeT / C-BeT) and the MLP baselines: shapes, learning, errors."""

import os
import subprocess
import sys

import pytest
import torch

from fastorals.behavior import BehaviorTransformer, MLPPolicy, PlayData, train_policy
from fastorals.testing import assert_close, assert_raises


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread (and do not stall when the CPU is shared)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny(goal_tokens=0, **kw):
    cfg = dict(num_bins=4, history=3, goal_tokens=goal_tokens, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
               kmeans_iters=10)
    cfg.update(kw)
    return BehaviorTransformer(5, 2, **cfg)


def _prepared(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    model.prepare(torch.randn(40, 5, generator=g), torch.randn(40, 2, generator=g))
    return model


@pytest.mark.parametrize("goal_tokens", [0, 1, 3])
def test_shapes_loss_and_act(goal_tokens):
    model = _prepared(_tiny(goal_tokens))
    obs = torch.randn(6, 3, 5)
    goal = torch.randn(6, goal_tokens, 5) if goal_tokens else None
    logits, offsets = model(obs, goal)
    assert logits.shape == (6, 3, 4) and offsets.shape == (6, 3, 4, 2)
    out = model.loss(obs, torch.randn(6, 3, 2), goal, mask=torch.ones(6, 3))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    a = model.eval().act(obs[:, :2], goal, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (6, 2)
    if goal_tokens == 1:  # a single goal frame may be given as (B, goal_dim)
        assert_close(model.act(obs, goal[:, 0], temperature=0.0), model.act(obs, goal, temperature=0.0))


def test_goal_dim_differs_from_obs_dim():
    model = BehaviorTransformer(5, 2, num_bins=3, history=2, goal_tokens=2, goal_dim=3, n_layer=1, n_head=1,
                                n_embd=8)
    _prepared(model)
    logits, _ = model(torch.randn(2, 2, 5), torch.randn(2, 2, 3))
    assert logits.shape == (2, 2, 3)


def test_state_dict_roundtrip():
    model = _prepared(_tiny(1)).eval()
    other = _tiny(1).eval()
    other.load_state_dict(model.state_dict())
    obs, goal = torch.randn(3, 3, 5), torch.randn(3, 1, 5)
    for a, b in zip(model(obs, goal), other(obs, goal)):
        assert torch.equal(a, b)
    assert torch.equal(model.discretizer.centers, other.discretizer.centers)


def test_offsets_recover_continuous_actions_on_noise_free_data(one_thread):
    """Four states, four continuous actions, two bins: the offsets must carry the rest exactly."""
    g = torch.Generator().manual_seed(0)
    states = torch.eye(4) * 2 - 1
    actions = torch.tensor([[0.31, -0.72], [0.29, -0.55], [-0.9, 0.4], [-1.13, 0.47]])
    idx = torch.randint(0, 4, (64, 3), generator=g)
    data = PlayData(states[idx], actions[idx], torch.full((64,), 3))
    model = BehaviorTransformer(4, 2, num_bins=2, history=1, n_layer=1, n_head=2, n_embd=32, dropout=0.0,
                                offset_weight=1000.0)
    train_policy(model, data, steps=400, batch_size=64, lr=3e-3, weight_decay=0.0, warmup=20)
    model.eval()
    pred = model.act(states[:, None], temperature=0.0)
    bins, res = model.discretizer.encode(actions)
    assert float(res.abs().max()) > 0.05  # the bins alone are off by this much
    assert float((pred - actions).abs().max()) < 5e-3
    # decode(encode(a)) is the identity
    assert_close(model.discretizer.decode(bins, res), actions)


def test_bet_keeps_both_modes_where_mlp_averages(one_thread):
    g = torch.Generator().manual_seed(1)
    obs = torch.zeros(256, 2, 3)
    actions = torch.where(torch.rand(256, 1, 1, generator=g) < 0.5, 1.0, -1.0).expand(256, 2, 1).contiguous()
    actions = torch.cat([actions, torch.zeros(256, 2, 1)], -1)
    data = PlayData(obs, actions, torch.full((256,), 2))
    bet = BehaviorTransformer(3, 2, num_bins=2, history=1, n_layer=1, n_head=1, n_embd=16, dropout=0.0)
    train_policy(bet, data, steps=150, batch_size=64, lr=3e-3, warmup=10)
    a = bet.act(torch.zeros(2000, 1, 3), temperature=1.0, generator=torch.Generator().manual_seed(0))
    frac = float((a[:, 0] > 0).float().mean())
    assert 0.35 < frac < 0.65 and float(a[:, 0].abs().min()) > 0.8
    mlp = MLPPolicy(3, 2, hidden=(32,))
    train_policy(mlp, data, steps=150, batch_size=64, lr=3e-3, warmup=10)
    assert float(mlp.act(torch.zeros(5, 1, 3))[:, 0].abs().max()) < 0.3  # the mean of the two modes


def test_mlp_policy_goal_conditioned():
    bc = MLPPolicy(5, 2, history=2, goal_tokens=2, hidden=(16,))
    bc.prepare(torch.randn(30, 5), torch.randn(30, 2))
    obs, goal = torch.randn(4, 1, 5), torch.randn(4, 2, 5)
    assert bc.act(obs, goal).shape == (4, 2)
    loss = bc.loss(torch.randn(4, 2, 5), torch.randn(4, 2, 2), goal, torch.ones(4, 2))
    loss.backward()
    with assert_raises(ValueError, "goal", "goal_tokens=2"):
        bc.act(obs, goal[:, :1])


def test_errors():
    model = _tiny(2)
    obs, goal = torch.randn(2, 3, 5), torch.randn(2, 2, 5)
    with assert_raises(RuntimeError, "fit"):
        model.loss(obs, torch.randn(2, 3, 2), goal)
    _prepared(model)
    with assert_raises(ValueError, "goal", "length mismatch", "goal_tokens=2"):
        model(obs, goal[:, :1])
    with assert_raises(ValueError, "goal", "required"):
        model(obs)
    with assert_raises(ValueError, "goal", "goal_dim=5"):
        model(obs, torch.randn(2, 2, 4))
    with assert_raises(ValueError, "obs", "obs_dim=5"):
        model(torch.randn(2, 3, 4), goal)
    with assert_raises(ValueError, "obs", "history=3"):
        model(torch.randn(2, 4, 5), goal)
    with assert_raises(ValueError, "actions", "(B, T, act_dim)"):
        model.loss(obs, torch.randn(2, 3, 3), goal)
    bad = torch.randn(2, 3, 2)
    bad[0, 1, 0] = float("nan")
    with assert_raises(ValueError, "actions", "NaN"):
        model.loss(obs, bad, goal)
    with assert_raises(ValueError, "unconditional"):
        _prepared(_tiny(0))(obs, goal)
    with assert_raises(ValueError, "act_dim=2"):
        model.prepare(torch.randn(10, 5), torch.randn(10, 3))
    with assert_raises(ValueError, "goal_tokens"):
        BehaviorTransformer(5, 2, goal_tokens=-1)
    with assert_raises(ValueError, "num_bins"):
        BehaviorTransformer(5, 2, num_bins=0)


def test_without_extension_uses_torch_paths():
    code = (
        "import torch, fastorals\n"
        "from fastorals import _ext\n"
        "from fastorals.behavior import kmeans, bet_loss, reference\n"
        "assert not _ext.HAS_EXT\n"
        "x = torch.randn(500, 3)\n"
        "assert _ext.select_backend('kmeans', x.device, ('cpp', 'torch', 'reference')) == 'torch'\n"
        "r = kmeans(x, 7, 10)\n"
        "with fastorals.use_backend('reference'):\n"
        "    r0 = kmeans(x, 7, 10)\n"
        "assert torch.equal(r.labels, r0.labels)\n"
        "z = torch.randn(6, 4, requires_grad=True)\n"
        "out = bet_loss(z, torch.randn(6, 4, 2), torch.randint(0, 4, (6,)), torch.randn(6, 2))\n"
        "out.loss.backward()\n"
        "print('ok')\n"
    )
    env = dict(os.environ, FASTORALS_NO_EXT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_act_before_prepare_and_tiny_temperatures():
    from fastorals.behavior import sample_actions

    with assert_raises(RuntimeError, "fit"):
        _tiny().act(torch.zeros(1, 3, 5))  # the bins are not fitted yet
    logits = torch.tensor([[5.0, 6.0], [-6.0, -5.0]])
    centers = torch.tensor([[0.0], [1.0]])
    for t in (1e-39, 1e-30, 1e-12):  # logits / T would overflow: the argmax must still win
        _, bins = sample_actions(logits, torch.zeros(2, 2, 1), centers, t, torch.Generator().manual_seed(0))
        assert bins.tolist() == [1, 1], t
