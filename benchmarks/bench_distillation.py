"""Algorithm Distillation: environment steps/s, history generation, in-context evaluation cache vs recompute.

* ``env_step``: one Dark Room episode (20 steps) of B instances. Fast: the vectorized
  environment; reference: ``fastorals.distillation.reference`` (one Python object per instance,
  stepped one at a time, the way reimplementations run their environments). Steps/s =
  ``20 * B / median``.
* ``bandit_step``: 100 pulls of B Bernoulli bandits (vectorized vs one at a time).
* ``collect_histories``: learning histories of Dyna-Q on Dark Room / UCB on bandits, B learners
  at once (steps/s = ``B * episodes * horizon / median``).
* ``in_context_eval``: AD rollouts of B environments over several episodes (the window slides):
  KV cache (fast) vs recomputing the same window every step (reference; identical outputs) vs
  the common reimplementation that recomputes a window sliding by one step (peer).
"""

from __future__ import annotations

import torch

from benchmarks.harness import Case, Suite
from fastorals.distillation import (
    UCB,
    ADModel,
    BernoulliBandit,
    DarkRoom,
    QLearning,
    collect_learning_histories,
    evaluate_in_context,
    reference,
    sample_actions,
)


def _dark_room_fast(B: int, seed: int = 0):
    env = DarkRoom(B, seed=seed)
    env.reset(env.sample_tasks(B, split="all", generator=torch.Generator().manual_seed(seed)))
    acts = torch.randint(0, 5, (20, B), generator=torch.Generator().manual_seed(seed + 1))

    def run():
        tot = torch.zeros(B)
        for t in range(20):
            tot += env.step(acts[t]).reward
        return tot

    return env, acts, run


def _dark_room_reference(env: DarkRoom, acts: torch.Tensor):
    B = env.num_envs
    goals = [tuple(env.coords[int(c)].tolist()) for c in env.targets[:, 0]]
    a = acts.tolist()

    def run():
        envs = [reference.ReferenceGridWorld(9, 20, [g], repeat=True) for g in goals]
        tot = [0.0] * B
        for t in range(20):
            row = a[t]
            for b in range(B):
                _, r, _ = envs[b].step(row[b])
                tot[b] += r
        return torch.tensor(tot)

    return run


def _bandit(B: int):
    env = BernoulliBandit(B, seed=0)
    env.reset(env.sample_tasks(B))
    acts = torch.randint(0, 10, (100, B), generator=torch.Generator().manual_seed(1))
    means = env.means.tolist()
    u = torch.rand(100, B, generator=torch.Generator().manual_seed(2)).tolist()

    def fast():
        tot = torch.zeros(B)
        for t in range(100):
            tot += env.step(acts[t]).reward
        return tot

    def ref():
        bs = [reference.ReferenceBandit(m) for m in means]
        a = acts.tolist()
        tot = [0.0] * B
        for t in range(100):
            for b in range(B):
                tot[b] += bs[b].step(a[t][b], u[t][b])
        return torch.tensor(tot)

    return fast, ref


def _recompute_sliding_by_one(model: ADModel, env: DarkRoom, num_episodes: int, temperature: float, seed: int):
    """What reimplementations do: every step, re-run the model on the last ``context`` steps."""
    c = model.config
    B, H, L = env.num_envs, env.horizon, c.context
    obs = env.reset(env.sample_tasks(B, "test", cycle=True), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    o_hist = torch.zeros(B, 0, len(c.obs_nvec), dtype=torch.long)
    a_hist = torch.zeros(B, 0, dtype=torch.long)
    r_hist = torch.zeros(B, 0)
    d_hist = torch.zeros(B, 0, dtype=torch.bool)
    pa = torch.full((B, 1), c.num_actions, dtype=torch.long)
    pr = torch.zeros(B, 1)
    pd = torch.ones(B, 1, dtype=torch.bool)
    returns = torch.zeros(B, num_episodes)
    with torch.no_grad():
        for e in range(num_episodes):
            for _ in range(H):
                o_hist = torch.cat([o_hist, obs.unsqueeze(1)], 1)[:, -L:]
                a_hist = torch.cat([a_hist, pa], 1)[:, -L:]
                r_hist = torch.cat([r_hist, pr], 1)[:, -L:]
                d_hist = torch.cat([d_hist, pd], 1)[:, -L:]
                logits = model(o_hist, a_hist, r_hist, d_hist)[:, -1]
                a = sample_actions(logits, temperature, gen)
                res = env.step(a)
                returns[:, e] += res.reward
                pa, pr, pd = a.unsqueeze(1), res.reward.unsqueeze(1), res.done.unsqueeze(1)
                obs = res.obs
    return returns


def cases(mode: str, device: str):
    if device != "cpu":
        return
    batches = {"smoke": [1, 4096], "quick": [1, 256, 4096, 65536], "full": [1, 16, 256, 4096, 65536]}[mode]
    ref_max = {"smoke": 1, "quick": 256, "full": 4096}[mode]
    for B in batches:
        env, acts, fast = _dark_room_fast(B)
        skip = {} if B <= ref_max else {"reference": f"one Python object per instance: too slow at B={B} in {mode} mode"}
        yield Case(op="env_step", shape=f"dark_room B={B} x 20 steps", dtype="int64", device="cpu",
                   fast={"fastorals": fast}, reference=_dark_room_reference(env, acts), backend="torch", skip=skip,
                   verify=lambda a, b, name: torch.testing.assert_close(a, b),
                   note=f"env steps/s = {20 * B} / median_s")
    for B in {"smoke": [256], "quick": [1, 4096], "full": [1, 4096, 65536]}[mode]:
        fast, ref = _bandit(B)
        skip = {} if B <= ref_max else {"reference": f"too slow at B={B} in {mode} mode"}
        yield Case(op="bandit_step", shape=f"bernoulli_bandit B={B} x 100 pulls", dtype="float32", device="cpu",
                   fast={"fastorals": fast}, reference=ref, backend="torch", skip=skip,
                   note=f"env steps/s = {100 * B} / median_s; rewards drawn from different uniforms")

    # ---- history generation
    B, E = {"smoke": (64, 2), "quick": (1024, 20), "full": (4096, 40)}[mode]
    yield Case(op="collect_histories", shape=f"dark_room q_learning B={B} x {E} episodes", dtype="int64", device="cpu",
               fast={"fastorals": lambda B=B, E=E: collect_learning_histories(DarkRoom(B, seed=0), QLearning(), num_tasks=B,
                                                                     num_episodes=E, progress=False)},
               backend="torch", max_time_s=1.0, note=f"env steps/s = {B * E * 20} / median_s (learner included)")
    B, E = {"smoke": (256, 10), "quick": (4096, 100), "full": (16384, 100)}[mode]
    yield Case(op="collect_histories", shape=f"bandit ucb B={B} x {E} trials", dtype="float32", device="cpu",
               fast={"fastorals": lambda B=B, E=E: collect_learning_histories(BernoulliBandit(B, seed=0), UCB(), num_tasks=B,
                                                                     num_episodes=E, progress=False)},
               backend="torch", max_time_s=1.0, note=f"env steps/s = {B * E} / median_s (learner included)")

    # ---- in-context evaluation: cache vs recompute
    # (envs, context in episodes, layers, width, episodes rolled out); recompute costs ~context/2
    # tokens per step, so the sizes stay small enough for the reference to finish
    cfgs = {"smoke": [(8, 2, 1, 16, 3)],
            "quick": [(64, 4, 4, 128, 6), (128, 8, 4, 128, 10)],
            "full": [(256, 4, 4, 128, 8), (256, 8, 4, 128, 12)]}[mode]
    for B, ctx_eps, n_layer, n_embd, eps in cfgs:
        torch.manual_seed(0)
        model = ADModel(num_actions=5, obs_nvec=(9, 9), context=20 * ctx_eps, horizon=20, n_layer=n_layer,
                        n_head=4, n_embd=n_embd).eval()
        env = DarkRoom(B, seed=0)

        def run(use_cache, model=model, env=env, eps=eps):
            return evaluate_in_context(model, env, num_episodes=eps, temperature=1.0, seed=0, use_cache=use_cache,
                                       record_actions=True).actions

        def verify(a, b, name):
            if name == "reference":  # same window, same sampling: the same actions
                assert torch.equal(a, b), "cache and recompute disagree"

        peers = {}
        if B * ctx_eps <= 256:  # the slide-by-one loop always recomputes a full window: keep it to small cases
            peers["recompute-slide-by-1"] = lambda m=model, e=env, k=eps: _recompute_sliding_by_one(m, e, k, 1.0, 0)
        yield Case(op="in_context_eval", shape=f"B={B} ctx={20 * ctx_eps} steps L{n_layer} d{n_embd} x {eps} episodes",
                   dtype="float32", device="cpu", fast={"kv-cache": lambda r=run: r(True)},
                   reference=lambda r=run: r(False), peers=peers, backend="torch", verify=verify, max_time_s=1.0,
                   note=f"env steps/s = {B * eps * 20} / median_s; window slides by the default "
                        f"{'1 episode' if ctx_eps < 8 else '2 episodes'}")


SUITE = Suite("distillation", cases, "Algorithm Distillation: vectorized envs, history generation, "
              "in-context evaluation with a KV cache vs recompute")
