"""AD model tokens, causality, training (learns, resumes exactly, DDP), checkpoint loading, errors."""

from __future__ import annotations

import os

import pytest
import torch

from fastorals.distillation import (
    UCB,
    ADConfig,
    ADModel,
    BernoulliBandit,
    DarkRoom,
    Expert,
    LearningHistories,
    RandomPolicy,
    collect_learning_histories,
    load_ad_checkpoint,
    shift_history,
    train_ad,
)
from fastorals.testing import assert_close, assert_raises, run_gloo_ranks


def _tiny(**kw):
    cfg = dict(num_actions=5, obs_nvec=(9, 9), context=40, horizon=20, n_layer=2, n_head=2, n_embd=16,
               dropout=0.0, attn_dropout=0.0)
    cfg.update(kw)
    return ADModel(ADConfig(**cfg))


@pytest.fixture(scope="module")
def bandit_expert_hist():
    torch.set_num_threads(1)
    env = BernoulliBandit(64, num_arms=4, num_tasks=200, seed=0)
    return collect_learning_histories(env, Expert(), num_tasks=64, num_episodes=24, progress=False)


def test_shift_history():
    a = torch.tensor([[1, 2, 3]])
    r = torch.tensor([[0.5, 0.0, 1.0]])
    d = torch.tensor([[False, True, False]])
    pa, pr, pd = shift_history(a, r, d, num_actions=5)
    assert pa.tolist() == [[5, 1, 2]] and pr.tolist() == [[0.0, 0.5, 0.0]] and pd.tolist() == [[True, False, True]]


def test_forward_shapes_and_causality():
    torch.manual_seed(0)
    m = _tiny().eval()
    B, T = 3, 40
    obs = torch.randint(0, 9, (B, T, 2))
    pa = torch.randint(0, 6, (B, T))
    pr = torch.rand(B, T)
    pd = torch.rand(B, T) < 0.1
    out = m(obs, pa, pr, pd)
    assert out.shape == (B, T, 5)
    obs2, pr2 = obs.clone(), pr.clone()
    obs2[:, 25:] = (obs2[:, 25:] + 1) % 9
    pr2[:, 25:] += 1
    out2 = m(obs2, pa, pr2, pd)
    assert_close(out2[:, :25], out[:, :25], kind="exact")
    assert not torch.allclose(out2[:, 25:], out[:, 25:])


def test_observation_components_are_factorised():
    m = _tiny()
    e = m.embed(torch.tensor([[[2, 7]]]), torch.tensor([[5]]), torch.tensor([[0.0]]), torch.tensor([[True]]))
    want = (m.obs_embed.weight[2] + m.obs_embed.weight[9 + 7] + m.act_embed.weight[5] + m.rew_embed.bias
            + m.done_embed.weight[1])
    assert_close(e[0, 0], want, kind="exact")


def test_config_errors():
    with assert_raises(ValueError, "obs_nvec", "obs_dim"):
        ADConfig(num_actions=3)
    with assert_raises(ValueError, "context"):
        ADConfig(num_actions=3, obs_nvec=(2,), context=0)
    with assert_raises(ValueError, "pos"):
        ADConfig(num_actions=3, obs_nvec=(2,), pos="alibi")
    m = _tiny()
    with assert_raises(ValueError, "obs"):
        m(torch.zeros(2, 5, 3, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5),
          torch.zeros(2, 5, dtype=torch.bool))
    with assert_raises(ValueError, "context"):
        m(torch.zeros(1, 41, 2, dtype=torch.long), torch.zeros(1, 41, dtype=torch.long), torch.zeros(1, 41),
          torch.zeros(1, 41, dtype=torch.bool))
    with assert_raises(TypeError, "obs", "integer"):
        m(torch.zeros(1, 4, 2), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4),
          torch.zeros(1, 4, dtype=torch.bool))


def test_training_learns_expert_bandit(bandit_expert_hist):
    """The expert pulls one arm forever: after a few pulls in context the next action is certain."""
    torch.manual_seed(0)
    m = _tiny(num_actions=4, obs_nvec=(1,), context=16, horizon=1)
    res = train_ad(m, bandit_expert_hist, steps=150, batch_size=32, lr=3e-3, log_every=25, progress=False)
    assert res.loss[-1] < 0.5 * res.loss[0]
    assert res.accuracy[-1] > 0.85
    assert res.steps[-1] == 150 and res.steps_run == 150
    assert not m.training


def test_resume_is_exact(tmp_path, bandit_expert_hist):
    ck = tmp_path / "ad.pt"
    kw = dict(batch_size=8, lr=2e-3, log_every=5, progress=False, seed=3)
    torch.manual_seed(0)
    full = _tiny(num_actions=4, obs_nvec=(1,), context=16, horizon=1, dropout=0.1, attn_dropout=0.1)
    torch.manual_seed(0)
    part = _tiny(num_actions=4, obs_nvec=(1,), context=16, horizon=1, dropout=0.1, attn_dropout=0.1)
    r_full = train_ad(full, bandit_expert_hist, steps=20, **kw)
    train_ad(part, bandit_expert_hist, steps=20, until=10, checkpoint=ck, **kw)   # "interrupted" at step 10
    torch.manual_seed(123)  # the global RNG state must not matter
    resumed = _tiny(num_actions=4, obs_nvec=(1,), context=16, horizon=1, dropout=0.1, attn_dropout=0.1)
    r_res = train_ad(resumed, bandit_expert_hist, steps=20, checkpoint=ck, **kw)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert r_res.loss == r_full.loss and r_res.steps == r_full.steps
    back = load_ad_checkpoint(ck)
    for a, b in zip(full.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)
    assert not back.training and back.config == full.config
    other = _tiny(num_actions=4, obs_nvec=(1,), context=8, horizon=1)
    with assert_raises(ValueError, "checkpoint", "config"):
        train_ad(other, bandit_expert_hist, steps=20, checkpoint=ck, **kw)


def test_checkpoint_is_weights_only(tmp_path, bandit_expert_hist):
    ck = tmp_path / "ad.pt"
    m = _tiny(num_actions=4, obs_nvec=(1,), context=16, horizon=1)
    train_ad(m, bandit_expert_hist, steps=2, batch_size=4, checkpoint=ck, progress=False)
    st = torch.load(ck, weights_only=True)  # raises if anything but tensors/containers/primitives
    assert set(st) == {"model", "optimizer", "config", "result"}
    torch.save({"model": m.state_dict(), "config": object.__new__(RandomPolicy)}, tmp_path / "evil.pt")
    with pytest.raises(Exception):  # noqa: B017 - torch's UnpicklingError type varies across versions
        load_ad_checkpoint(tmp_path / "evil.pt")


def test_train_argument_errors(bandit_expert_hist):
    with assert_raises(ValueError, "actions"):
        train_ad(_tiny(num_actions=5, obs_nvec=(1,), context=16), bandit_expert_hist, steps=1)
    with assert_raises(ValueError, "obs_nvec"):
        train_ad(_tiny(num_actions=4, obs_nvec=(2,), context=16), bandit_expert_hist, steps=1)
    with assert_raises(ValueError, "context"):
        train_ad(_tiny(num_actions=4, obs_nvec=(1,), context=64), bandit_expert_hist, steps=1)
    with assert_raises(ValueError, "align"):
        train_ad(_tiny(num_actions=4, obs_nvec=(1,), context=16), bandit_expert_hist, steps=1, align="random")
    with assert_raises(ValueError, "batch_size"):
        train_ad(_tiny(num_actions=4, obs_nvec=(1,), context=16), bandit_expert_hist, steps=1, batch_size=0)
    with assert_raises(TypeError, "histories"):
        train_ad(_tiny(), "data.npz", steps=1)


def test_windows_align_to_episodes():
    from fastorals.distillation.train import _Streams, sample_windows

    h = collect_learning_histories(DarkRoom(4, horizon=5), RandomPolicy(), num_tasks=4, num_episodes=6,
                                   progress=False)
    s = _Streams(h, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    obs, act, pa, pr, pd = sample_windows(s, 64, 10, g, "episode")
    assert pd[:, 0].all()           # every window starts right after an episode end
    assert (obs[:, 0] == 4).all()   # ... at the centre
    obs, act, pa, pr, pd = sample_windows(s, 256, 10, g, "step")
    assert not pd[:, 0].all()


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, out_dir: str, data: str) -> None:
    torch.set_num_threads(1)
    hist = LearningHistories.load(data)
    torch.manual_seed(0)
    m = ADModel(num_actions=10, obs_nvec=(1,), context=12, horizon=1, n_layer=1, n_head=2, n_embd=8)
    res = train_ad(m, hist, steps=6, batch_size=4, log_every=1, progress=False,
                   checkpoint=os.path.join(out_dir, "ck.pt"), checkpoint_every=3)
    torch.save({"params": [p.detach() for p in m.parameters()], "loss": res.loss},
               os.path.join(out_dir, f"rank{rank}.pt"))


def test_train_under_ddp_two_gloo_processes(tmp_path):
    data = tmp_path / "h.npz"
    collect_learning_histories(BernoulliBandit(8, seed=0), UCB(), num_tasks=8, num_episodes=20, path=data,
                               progress=False)
    run_gloo_ranks(_ddp_worker, str(tmp_path), str(data))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)          # gradients were all-reduced
    assert r0["loss"] != r1["loss"]       # each rank drew its own windows
    assert (tmp_path / "ck.pt").exists()
    back = load_ad_checkpoint(tmp_path / "ck.pt")
    for a, b in zip(back.parameters(), r0["params"]):
        assert torch.equal(a.detach(), b)


def test_token_ranges_and_training_settings_are_named():
    m = _tiny()
    B, T = 2, 4
    obs = torch.zeros(B, T, 2, dtype=torch.long)
    pa, pr, pd = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T), torch.zeros(B, T, dtype=torch.bool)
    m(obs, pa, pr, pd)
    bad_obs = obs.clone()
    bad_obs[0, 0, 0] = 9  # obs_nvec[0] = 9: would read the second component's embedding rows
    with assert_raises(ValueError, "obs[..., 0]", "obs_nvec[0]=9"):
        m(bad_obs, pa, pr, pd)
    with assert_raises(ValueError, "prev_actions", "num_actions=5"):
        m(obs, pa + 6, pr, pd)
    with assert_raises(TypeError, "prev_actions"):
        m(obs, pa.float() + 0.5, pr, pd)
    with assert_raises(TypeError, "prev_dones"):
        m(obs, pa, pr, pd.float() * 0.7)
    env = DarkRoom(2, test_fraction=0.0, seed=0)
    with assert_raises(ValueError, "split 'test'", "empty"):
        collect_learning_histories(env, RandomPolicy(), num_tasks=2, num_episodes=1, split="test", progress=False)
    hist = collect_learning_histories(DarkRoom(4, seed=0), RandomPolicy(), num_tasks=4, num_episodes=3,
                                      progress=False)
    small = _tiny(context=20)
    for kw, word in ((dict(lr=float("inf")), "lr"), (dict(min_lr_ratio=-1.0), "min_lr_ratio"),
                     (dict(warmup=-5), "warmup")):
        with assert_raises(ValueError, word):
            train_ad(small, hist, steps=1, batch_size=2, progress=False, **kw)
