"""C-BeT (Cui et al., ICLR 2023) reproduction on offline multimodal play data.

Two tasks, every policy trained on the same uncurated demonstrations:

* multi-goal arena (:func:`~fastorals.behavior.multigoal_demos`): each demonstration visits 3 of
  4 goals in a random order. Conditional task: given the end state of a held-out demonstration
  (which goals are done, where it stopped), reach it. Policies: C-BeT (goal token = that end
  state), goal-conditioned MLP BC, and the unconditional BeT and MLP BC (which cannot know the
  goal). Also the coverage of the 24 visiting orders by unconditional rollouts.
* multi-path (:func:`~fastorals.behavior.multipath_demos`, BeT's task): three routes with
  probabilities 0.3 / 0.4 / 0.3. Mode coverage of unconditional BeT vs MLP BC rollouts, and
  C-BeT conditioned on a frame of a held-out demonstration's route (its waypoint).

Outputs ``behavior.json`` (through the runner) and ``behavior.png`` (sampled trajectories).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from fastorals.behavior import (
    BehaviorTransformer,
    MLPPolicy,
    MultiGoalArena,
    MultiPathEnv,
    multigoal_demos,
    multipath_demos,
    rollout,
    train_policy,
)
from fastorals.repro import pyplot, register, savefig

CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": dict(demos=120, held=32, episodes=32, bet_steps=40, mlp_steps=40, path_demos=120, path_bet_steps=40,
                  layers=2, heads=2, embd=32, batch=32),
    "quick": dict(demos=1000, held=200, episodes=200, bet_steps=5000, mlp_steps=3000, path_demos=500,
                  path_bet_steps=2000, layers=4, heads=4, embd=72, batch=64),
    "full": dict(demos=2000, held=500, episodes=500, bet_steps=10000, mlp_steps=10000, path_demos=1000,
                 path_bet_steps=5000, layers=4, heads=4, embd=72, batch=64),
}

HISTORY = 5          # observation window of every policy
NUM_BINS = 24        # k-means action bins
OFFSET_WEIGHT = 100  # lambda: actions here have norm ~0.35 (multi-goal) / ~1 (multi-path)
LR = 1e-3
TEMPERATURE = 1.0    # sampling temperature of BeT / C-BeT rollouts (mode coverage, conditional success)
LOW_TEMPERATURE = 0.5  # conditional success is also reported at this temperature


def _entropy(counts: torch.Tensor) -> float:
    p = counts.double() / counts.sum().clamp_min(1)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def _bet(obs_dim: int, goal_tokens: int, cfg: dict) -> BehaviorTransformer:
    return BehaviorTransformer(obs_dim, 2, num_bins=NUM_BINS, history=HISTORY, goal_tokens=goal_tokens,
                               n_layer=cfg["layers"], n_head=cfg["heads"], n_embd=cfg["embd"], dropout=0.1,
                               offset_weight=OFFSET_WEIGHT)


def _train(policy, data, steps, cfg, seed, timings, name, **kw):
    t0 = time.perf_counter()
    hist = train_policy(policy, data, steps=steps, batch_size=cfg["batch"], lr=LR, seed=seed, **kw)
    timings[name] = round(time.perf_counter() - t0, 1)
    return float(sum(hist["loss"][-20:]) / max(1, len(hist["loss"][-20:])))


def _multigoal(cfg: dict, seed: int, timings: dict) -> tuple[dict, dict]:
    data = multigoal_demos(cfg["demos"], seed=seed)
    held = multigoal_demos(cfg["held"], seed=seed + 10_000)
    obs_dim = data.obs.shape[-1]
    visits = data.info["visits"]
    policies = {
        "C-BeT": _bet(obs_dim, 1, cfg),
        "GC-BC (MLP)": MLPPolicy(obs_dim, 2, history=HISTORY, goal_tokens=1),
        "BeT (unconditional)": _bet(obs_dim, 0, cfg),
        "MLP BC": MLPPolicy(obs_dim, 2, history=HISTORY),
    }
    losses = {}
    for i, (name, pol) in enumerate(policies.items()):
        steps = cfg["bet_steps"] if isinstance(pol, BehaviorTransformer) else cfg["mlp_steps"]
        losses[name] = _train(pol, data, steps, cfg, seed + i, timings, f"multigoal/{name}", goal_mode="tail")
    n_ep = cfg["episodes"]
    idx = torch.arange(n_ep) % len(held)
    goal = held.goal_frames(1, idx)
    names = held.info["sequences"]
    demo_counts = torch.bincount(torch.tensor([list(names).index(int(m)) for m in data.modes]), minlength=len(names))
    out: dict[str, Any] = {"num_demos": cfg["demos"], "episodes": n_ep, "visits": visits,
                           "possible_orders": len(names), "demo_order_entropy": _entropy(demo_counts),
                           "max_entropy": math.log(len(names)), "policies": {}}
    trajs = {}
    for i, (name, pol) in enumerate(policies.items()):
        env = MultiGoalArena(n_ep, seed=seed + 500)
        g = goal if pol.goal_tokens else None
        traj = rollout(env, pol, goal=g, temperature=TEMPERATURE, generator=torch.Generator().manual_seed(seed + i))
        success = env.success(goal)
        done = env.n_done
        complete = done >= visits
        ids = env.sequence_ids(env.visit_order(), visits)[complete]
        counts = torch.bincount(torch.tensor([list(names).index(int(m)) for m in ids], dtype=torch.int64),
                                minlength=len(names)) if ids.numel() else torch.zeros(len(names), dtype=torch.int64)
        res = {
            "conditional_success": float(success.float().mean()),
            "goals_done_histogram": torch.bincount(done, minlength=env.num_goals + 1).tolist(),
            "completed_fraction": float(complete.float().mean()),
            "orders_covered": int((counts > 0).sum()),
            "order_entropy": _entropy(counts),
            "final_train_loss": losses[name],
        }
        if isinstance(pol, BehaviorTransformer):
            env2 = MultiGoalArena(n_ep, seed=seed + 500)
            rollout(env2, pol, goal=g, temperature=LOW_TEMPERATURE, generator=torch.Generator().manual_seed(seed + i))
            res[f"conditional_success_T{LOW_TEMPERATURE}"] = float(env2.success(goal).float().mean())
        out["policies"][name] = res
        trajs[name] = (traj, success)
    return out, {"data": data, "trajs": trajs, "goals": MultiGoalArena(1).goals}


def _multipath(cfg: dict, seed: int, timings: dict) -> tuple[dict, dict]:
    data = multipath_demos(cfg["path_demos"], seed=seed + 1)
    held = multipath_demos(max(30, cfg["held"] // 2), seed=seed + 20_000)
    policies = {
        "C-BeT": _bet(2, 1, cfg),
        "BeT (unconditional)": _bet(2, 0, cfg),
        "MLP BC": MLPPolicy(2, 2, history=HISTORY),
        "GC-BC (MLP)": MLPPolicy(2, 2, history=HISTORY, goal_tokens=1),
    }
    for i, (name, pol) in enumerate(policies.items()):
        steps = cfg["path_bet_steps"] if isinstance(pol, BehaviorTransformer) else cfg["mlp_steps"]
        _train(pol, data, steps, cfg, seed + 100 + i, timings, f"multipath/{name}", goal_mode="future", min_gap=1)
    n_ep = cfg["episodes"]
    # C-BeT goal: the frame of a held-out demonstration closest to its route's waypoint
    wp = torch.tensor(MultiPathEnv.WAYPOINTS)[held.modes]
    t_wp = (held.obs - wp[:, None]).norm(dim=-1).argmin(1)
    pick = torch.arange(n_ep) % len(held)
    goal = held.obs[pick, t_wp[pick]][:, None]
    want = held.modes[pick]
    demo_routes = torch.bincount(data.modes, minlength=3)
    out: dict[str, Any] = {"num_demos": cfg["path_demos"], "episodes": n_ep,
                           "demo_route_fractions": (demo_routes.double() / demo_routes.sum()).tolist(),
                           "policies": {}}
    trajs = {}
    for i, (name, pol) in enumerate(policies.items()):
        env = MultiPathEnv(n_ep)
        g = goal if pol.goal_tokens else None
        traj = rollout(env, pol, goal=g, temperature=TEMPERATURE, generator=torch.Generator().manual_seed(seed + i))
        route = MultiPathEnv.route_of(traj)
        reached = MultiPathEnv.reached_goal(traj)
        counts = torch.bincount(route[reached & (route >= 0)], minlength=3)
        frac = (counts.double() / max(1, int(counts.sum()))).tolist()
        res = {
            "reached_goal": float(reached.float().mean()),
            "route_fractions": frac,
            "routes_covered": int(sum(f >= 0.05 for f in frac)),
            "route_entropy": _entropy(counts),
            "conditional_success": float(((route == want) & reached).float().mean()),
        }
        if isinstance(pol, BehaviorTransformer):
            env2 = MultiPathEnv(n_ep)
            t2 = rollout(env2, pol, goal=g, temperature=LOW_TEMPERATURE, generator=torch.Generator().manual_seed(seed))
            ok = (MultiPathEnv.route_of(t2) == want) & MultiPathEnv.reached_goal(t2)
            res[f"conditional_success_T{LOW_TEMPERATURE}"] = float(ok.float().mean())
        out["policies"][name] = res
        trajs[name] = (traj, route)
    return out, {"data": data, "trajs": trajs}


def _plot(goal_art: dict, path_art: dict, out_dir: str) -> str:
    plt = pyplot()
    names = ["demonstrations", *goal_art["trajs"]]
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.6))
    cmap = plt.get_cmap("tab10")
    goals = goal_art["goals"]
    data = goal_art["data"]
    for j, name in enumerate(names):
        ax = axes[0, j]
        ax.set_title(f"multi-goal: {name}", fontsize=9)
        if name == "demonstrations":
            for n in range(min(40, len(data))):
                L = int(data.lengths[n])
                first = int(data.modes[n] % 5) - 1
                ax.plot(data.obs[n, :L, 0], data.obs[n, :L, 1], lw=0.7, color=cmap(first % 10), alpha=0.7)
        else:
            traj, success = goal_art["trajs"][name]
            for n in range(min(40, traj.shape[0])):
                ax.plot(traj[n, :, 0], traj[n, :, 1], lw=0.7, color="tab:green" if success[n] else "tab:red",
                        alpha=0.7)
        for gi, (gx, gy) in enumerate(goals.tolist()):
            ax.add_patch(plt.Circle((gx, gy), 0.4, color="k", fill=False, lw=1))
            ax.text(gx, gy, str(gi), ha="center", va="center", fontsize=8)
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.set_aspect("equal")
    pdata = path_art["data"]
    for j, name in enumerate(names):  # same column order as the top row
        ax = axes[1, j]
        if name != "demonstrations" and name not in path_art["trajs"]:
            ax.axis("off")
            continue
        ax.set_title(f"multi-path: {name}", fontsize=9)
        if name == "demonstrations":
            for n in range(min(60, len(pdata))):
                ax.plot(pdata.obs[n, :, 0], pdata.obs[n, :, 1], lw=0.6, color=cmap(int(pdata.modes[n])), alpha=0.6)
        else:
            traj, route = path_art["trajs"][name]
            for n in range(min(60, traj.shape[0])):
                r = int(route[n])
                ax.plot(traj[n, :, 0], traj[n, :, 1], lw=0.6, color=cmap(r) if r >= 0 else "0.5", alpha=0.6)
        ax.set_xlim(-3, 24)
        ax.set_ylim(-3, 24)
        ax.set_aspect("equal")
    fig.suptitle("Sampled trajectories (top: green = reached the specified end state; bottom: colour = route)",
                 fontsize=10)
    fig.tight_layout()
    return savefig(fig, out_dir, "behavior.png")


@register("behavior", "C-BeT: goal-conditioned success and mode coverage on multimodal play data vs BeT and MLP BC")
def run(mode: str, out_dir: str, seed: int) -> dict:
    cfg = CONFIGS[mode]
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    goal_res, goal_art = _multigoal(cfg, seed, timings)
    path_res, path_art = _multipath(cfg, seed, timings)
    plot = _plot(goal_art, path_art, out_dir)
    timings["total"] = round(time.perf_counter() - t0, 1)
    return {"config": {**cfg, "history": HISTORY, "num_bins": NUM_BINS, "offset_weight": OFFSET_WEIGHT, "lr": LR,
                       "temperature": TEMPERATURE, "low_temperature": LOW_TEMPERATURE},
            "multigoal": goal_res, "multipath": path_res, "train_seconds": timings, "plot": plot}
