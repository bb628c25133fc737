"""Algorithm Distillation reproduction: in-context RL on held-out bandits and Dark Room goals.

Bandit (Bernoulli, 10 arms, 100 trials): learning histories of UCB on training tasks; AD (the
whole 100-trial history in context) and a behaviour-cloning-of-expert baseline (same model,
trained on the optimal arm's pulls) roll out with frozen weights on held-out tasks. Metric:
cumulative pseudo-regret, against UCB and random play on the same tasks.

Dark Room (9x9, 20 steps): learning histories of tabular Dyna-Q on the 65 training goals;
AD and behaviour cloning of the optimal policy, evaluated in context on the 16 held-out goals.
Metric: return per episode, against the source algorithm learning from scratch on the same
goals, a random policy and the optimum.

Writes ``distillation.json`` and ``distillation.png`` (both learning-curve panels).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .. import distillation as ad
from ..training import seed_everything
from . import pyplot, register, savefig

CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        bandit=dict(histories=64, trials=20, steps=10, batch=8, n_embd=16, n_layer=1, n_head=2, eval_envs=16,
                    chunk=64),
        dark=dict(histories=32, episodes=6, subsample=1, ctx_episodes=2, steps=10, bc_steps=5, batch=8, n_embd=16,
                  n_layer=1, n_head=2, eval_envs=8, eval_episodes=3, chunk=32),
    ),
    "quick": dict(
        bandit=dict(histories=4096, trials=100, steps=1200, batch=32, n_embd=64, n_layer=3, n_head=4, eval_envs=512,
                    chunk=4096),
        dark=dict(histories=2048, episodes=60, subsample=2, ctx_episodes=8, steps=2000, bc_steps=300, batch=32,
                  n_embd=64, n_layer=3, n_head=4, eval_envs=256, eval_episodes=50, chunk=1024),
    ),
    "full": dict(
        bandit=dict(histories=20000, trials=100, steps=8000, batch=64, n_embd=128, n_layer=4, n_head=4,
                    eval_envs=2000, chunk=10000),
        dark=dict(histories=8192, episodes=60, subsample=2, ctx_episodes=8, steps=12000, bc_steps=2000, batch=64,
                  n_embd=128, n_layer=4, n_head=4, eval_envs=512, eval_episodes=60, chunk=2048),
    ),
}
TEMPERATURES = {"bandit": 1.0, "dark": 0.5}
UCB_C = 0.5


def _train(hist: ad.LearningHistories, cfg: dict[str, Any], context: int, horizon: int, steps: int, seed: int,
           progress: bool) -> tuple[ad.ADModel, ad.TrainResult]:
    seed_everything(seed)
    model = ad.ADModel(num_actions=hist.num_actions, obs_nvec=hist.obs_nvec, context=context, horizon=horizon,
                       n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=0.0,
                       attn_dropout=0.0)
    res = ad.train_ad(model, hist, steps=steps, batch_size=cfg["batch"], lr=1.5e-3, seed=seed, progress=progress,
                      log_every=max(1, steps // 20))
    return model, res


def _bandit(cfg: dict[str, Any], seed: int, progress: bool) -> dict[str, Any]:
    T = cfg["trials"]
    env = ad.BernoulliBandit(cfg["chunk"], seed=seed)
    t0 = time.perf_counter()
    hist = ad.collect_learning_histories(env, ad.UCB(c=UCB_C), num_tasks=cfg["histories"], num_episodes=T,
                                         seed=seed, progress=progress)
    expert = ad.collect_learning_histories(env, ad.Expert(), num_tasks=cfg["histories"], num_episodes=T,
                                           seed=seed + 1, progress=progress)
    t_collect = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, tr = _train(hist, cfg, T, 1, cfg["steps"], seed, progress)
    bc, tr_bc = _train(expert, cfg, T, 1, max(1, cfg["steps"] // 4), seed, progress)
    t_train = time.perf_counter() - t0

    B = cfg["eval_envs"]
    test_env = ad.BernoulliBandit(B, seed=seed + 7)
    tasks = test_env.sample_tasks(B, split="test", generator=torch.Generator().manual_seed(seed))
    curves, final = {}, {}
    t0 = time.perf_counter()
    runs = {
        "AD": lambda: ad.evaluate_in_context(model, test_env, num_episodes=T, temperature=TEMPERATURES["bandit"],
                                             task_ids=tasks, seed=seed, record_actions=True),
        "BC of expert": lambda: ad.evaluate_in_context(bc, test_env, num_episodes=T,
                                                       temperature=TEMPERATURES["bandit"], task_ids=tasks,
                                                       seed=seed, record_actions=True),
        f"UCB (c={UCB_C}, source)": lambda: ad.evaluate_algorithm(ad.UCB(c=UCB_C), test_env, T, task_ids=tasks,
                                                                   seed=seed, record_actions=True),
        "Thompson sampling": lambda: ad.evaluate_algorithm(ad.ThompsonSampling(), test_env, T, task_ids=tasks,
                                                           seed=seed, record_actions=True),
        "random": lambda: ad.evaluate_algorithm(ad.RandomPolicy(), test_env, T, task_ids=tasks, seed=seed,
                                                record_actions=True),
    }
    for name, fn in runs.items():
        res = fn()
        regret = test_env.regret(res.actions, res.task_ids).cumsum(1).mean(0)
        curves[name] = regret.tolist()
        final[name] = float(regret[-1])
    ucb = final[f"UCB (c={UCB_C}, source)"]
    return {
        "cumulative_regret": curves, "final_regret": final,
        "ad_over_ucb": final["AD"] / ucb, "goal_within_2x_ucb": final["AD"] <= 2 * ucb,
        "train_loss": tr.loss, "train_acc": tr.accuracy, "bc_train_loss": tr_bc.loss,
        "source_curve": hist.episode_returns().mean(0).tolist(),
        "seconds": {"collect": t_collect, "train": t_train, "eval": time.perf_counter() - t0},
        "config": cfg, "temperature": TEMPERATURES["bandit"], "model_parameters": model.num_parameters(),
    }


def _dark(cfg: dict[str, Any], seed: int, progress: bool) -> dict[str, Any]:
    env = ad.DarkRoom(cfg["chunk"], seed=seed)
    t0 = time.perf_counter()
    hist = ad.collect_learning_histories(env, ad.QLearning(), num_tasks=cfg["histories"],
                                         num_episodes=cfg["episodes"], subsample=cfg["subsample"], seed=seed,
                                         progress=progress)
    expert = ad.collect_learning_histories(env, ad.Expert(), num_tasks=max(64, cfg["histories"] // 8),
                                           num_episodes=max(cfg["ctx_episodes"], 8), seed=seed + 1,
                                           progress=progress)
    t_collect = time.perf_counter() - t0
    ctx = cfg["ctx_episodes"] * env.horizon
    t0 = time.perf_counter()
    model, tr = _train(hist, cfg, ctx, env.horizon, cfg["steps"], seed, progress)
    bc, tr_bc = _train(expert, cfg, ctx, env.horizon, cfg["bc_steps"], seed, progress)
    t_train = time.perf_counter() - t0

    B, E = cfg["eval_envs"], cfg["eval_episodes"]
    test_env = ad.DarkRoom(B, seed=seed + 7)
    tasks = test_env.sample_tasks(B, split="test", cycle=True)  # every held-out goal equally often
    t0 = time.perf_counter()
    runs = {
        "AD": lambda: ad.evaluate_in_context(model, test_env, num_episodes=E, temperature=TEMPERATURES["dark"],
                                             task_ids=tasks, seed=seed),
        "BC of expert": lambda: ad.evaluate_in_context(bc, test_env, num_episodes=E, temperature=TEMPERATURES["dark"],
                                                       task_ids=tasks, seed=seed),
        "Dyna-Q (source)": lambda: ad.evaluate_algorithm(ad.QLearning(), test_env, E, task_ids=tasks, seed=seed),
        "random": lambda: ad.evaluate_algorithm(ad.RandomPolicy(), test_env, E, task_ids=tasks, seed=seed),
    }
    curves, sps = {}, {}
    optimal = None
    for name, fn in runs.items():
        res = fn()
        curves[name] = res.curve().tolist()
        sps[name] = res.steps_per_second
        optimal = float(res.optimal.mean())
    assert optimal is not None
    tail = max(1, E // 8)
    ad_final = sum(curves["AD"][-tail:]) / tail
    return {
        "return_curves": curves, "optimal_return": optimal,
        "ad_first_episode": curves["AD"][0], "ad_final": ad_final, "ad_final_over_optimal": ad_final / optimal,
        "random_mean": sum(curves["random"]) / E, "goal_80pct_of_optimal": ad_final >= 0.8 * optimal,
        "bc_final_over_optimal": sum(curves["BC of expert"][-tail:]) / tail / optimal,
        "train_loss": tr.loss, "train_acc": tr.accuracy, "bc_train_loss": tr_bc.loss,
        "source_curve": hist.episode_returns().mean(0).tolist(), "source_kept_episodes": hist.episodes.tolist(),
        "eval_steps_per_second": sps,
        "seconds": {"collect": t_collect, "train": t_train, "eval": time.perf_counter() - t0},
        "config": cfg, "temperature": TEMPERATURES["dark"], "model_parameters": model.num_parameters(),
    }


def _plot(out: dict[str, Any], out_dir: str) -> None:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, c in out["bandit"]["cumulative_regret"].items():
        a1.plot(range(1, len(c) + 1), c, label=name, lw=2.2 if name == "AD" else 1.4)
    a1.set(xlabel="trial (in context for AD / BC)", ylabel="cumulative regret",
           title="Bernoulli bandit, held-out tasks")
    a1.legend(fontsize=8)
    d = out["dark"]
    for name, c in d["return_curves"].items():
        a2.plot(range(1, len(c) + 1), c, label=name, lw=2.2 if name == "AD" else 1.4)
    a2.axhline(d["optimal_return"], color="k", ls="--", lw=1, label="optimal")
    a2.axhline(0.8 * d["optimal_return"], color="gray", ls=":", lw=1, label="80% of optimal")
    a2.set(xlabel="episode (in context for AD / BC)", ylabel="return", title="Dark Room, held-out goals")
    a2.legend(fontsize=8)
    savefig(fig, out_dir, "distillation.png")


@register("distillation", "Algorithm Distillation: in-context RL on held-out bandit tasks and Dark Room goals")
def run(mode: str, out_dir: str, seed: int) -> dict[str, Any]:
    cfg = CONFIGS[mode]
    progress = mode != "smoke"
    t0 = time.perf_counter()
    out: dict[str, Any] = {"bandit": _bandit(cfg["bandit"], seed, progress)}
    out["dark"] = _dark(cfg["dark"], seed, progress)
    out["seconds_total"] = time.perf_counter() - t0
    out["threads"] = torch.get_num_threads()
    _plot(out, out_dir)
    return out
