"""Source RL algorithms, vectorized across tasks: one independent learner per environment instance.

Each algorithm keeps the state of ``num_envs`` learners in batched tensors (counts, Q-tables,
the weights of ``num_envs`` small networks) and updates all of them with a few tensor ops per
environment step. Learner ``b`` only ever sees instance ``b``'s experience.

Protocol (what :func:`~fastorals.distillation.collect_learning_histories` calls)::

    algo.begin(env, generator)      # fresh learners for env's current tasks
    for every step:
        a = algo.act(obs)           # (B,) actions
        res = env.step(a)
        algo.update(a, res)         # learn from the transition

Learners may read privileged information from the environment (its Markov state
:meth:`~fastorals.distillation.envs.VecEnv.state_index`, or the task itself for the
:class:`Expert`); the distilled sequence model only ever sees observations, actions and rewards.

* bandits: :class:`UCB`, :class:`ThompsonSampling`;
* grid worlds: :class:`QLearning` (tabular, optimistic, with an optional backward sweep over
  each finished episode), :class:`PPO` (a small actor-critic network per task, clipped
  objective, GAE);
* any environment: :class:`RandomPolicy`, :class:`Expert` (the optimal policy of the task: the
  behaviour-cloning baseline's data).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .envs import BernoulliBandit, GridWorld, StepResult, VecEnv

__all__ = ["PPO", "UCB", "Expert", "QLearning", "RandomPolicy", "SourceAlgorithm", "ThompsonSampling",
           "make_algorithm"]


def _argmax_random_ties(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Row-wise argmax of ``(B, A)`` with ties broken uniformly at random."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    best = x.max(1, keepdim=True).values
    return torch.where(x >= best, noise, torch.full_like(noise, -1.0)).argmax(1)


class SourceAlgorithm:
    """Base class of the vectorized learners (see the module docstring for the protocol)."""

    name = "source"

    def __init__(self) -> None:
        self.env: Optional[VecEnv] = None
        self.generator: Optional[torch.Generator] = None

    def begin(self, env: VecEnv, generator: Optional[torch.Generator] = None) -> None:
        """Start ``env.num_envs`` fresh learners on the environment's current tasks.

        Args:
            env: the environment (already ``reset`` with its tasks).
            generator: random source of the learners (default: a new one seeded from torch's RNG).
        """
        if not isinstance(env, VecEnv):
            raise TypeError(f"{type(self).__name__}.begin: env must be a VecEnv, got {type(env).__name__}")
        self._check_env(env)
        if generator is None:
            generator = torch.Generator(device=env.device)
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        elif generator.device != env.device:
            raise ValueError(f"{type(self).__name__}.begin: generator is on {generator.device}, the env on {env.device}")
        self.env, self.generator = env, generator
        self.episodes = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
        self._begin()

    def _check_env(self, env: VecEnv) -> None:
        pass

    def _begin(self) -> None:
        pass

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """``(B,)`` int64 actions for the current observations ``(B, K)``."""
        raise NotImplementedError

    def update(self, actions: torch.Tensor, result: StepResult) -> None:
        """Learn from the step just taken (``actions`` and the environment's :class:`StepResult`)."""
        self.episodes += result.done

    def config(self) -> dict[str, Any]:
        """Hyper-parameters (JSON-serializable), stored with the learning histories."""
        return {"name": self.name}

    def _need(self) -> VecEnv:
        if self.env is None:
            raise RuntimeError(f"{type(self).__name__}: call begin(env) first")
        return self.env


# ============================================================================= generic


class RandomPolicy(SourceAlgorithm):
    """Uniformly random actions (does not learn)."""

    name = "random"

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        env = self._need()
        return torch.randint(0, env.num_actions, (env.num_envs,), generator=self.generator, device=env.device)


class Expert(SourceAlgorithm):
    """The optimal policy of each instance's task (privileged: it reads the task).

    Grid worlds: greedy in the exact finite-horizon action values (dynamic programming over the
    task's dynamics), ties broken at random. Bandits: always the arm of largest mean.
    """

    name = "expert"

    def _check_env(self, env: VecEnv) -> None:
        if not isinstance(env, (GridWorld, BernoulliBandit)):
            raise TypeError(f"Expert: needs a GridWorld or a BernoulliBandit, got {type(env).__name__}")

    def _begin(self) -> None:
        env = self._need()
        if isinstance(env, GridWorld):
            self.values = env.optimal_values().float()                       # (B, H+1, S)
            nxt, rew = env.markov_tables()
            self.next_state, self.reward = nxt, rew.float()                   # (B, S, A)
        else:
            self.best = env.arm_means().argmax(1)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        env = self._need()
        if isinstance(env, BernoulliBandit):
            return self.best.clone()
        B = env.num_envs
        rows = torch.arange(B, device=env.device)
        s = env.state_index()
        nxt = self.next_state[rows, s]                                         # (B, A)
        v_next = self.values[rows, (env.t + 1).clamp(max=env.horizon)]        # (B, S)
        q = self.reward[rows, s] + v_next.gather(1, nxt)
        return _argmax_random_ties(q, self.generator)


# ============================================================================= bandits


class _BanditLearner(SourceAlgorithm):
    def _check_env(self, env: VecEnv) -> None:
        if env.horizon != 1:
            raise TypeError(f"{type(self).__name__}: a bandit algorithm needs one-step episodes "
                            f"(a bandit env), got horizon {env.horizon}")

    def _begin(self) -> None:
        env = self._need()
        self.counts = torch.zeros(env.num_envs, env.num_actions, device=env.device)
        self.sums = torch.zeros(env.num_envs, env.num_actions, device=env.device)

    def update(self, actions: torch.Tensor, result: StepResult) -> None:
        super().update(actions, result)
        idx = actions.unsqueeze(1)
        self.counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=self.counts.dtype))
        self.sums.scatter_add_(1, idx, result.reward.unsqueeze(1).to(self.sums.dtype))


class UCB(_BanditLearner):
    """UCB1: pull each arm once, then ``argmax mean_a + c * sqrt(ln t / n_a)`` (random tie-break).

    Args:
        c: exploration coefficient (``sqrt(2)`` is the textbook UCB1 for rewards in [0, 1]).
    """

    name = "ucb"

    def __init__(self, c: float = 1.0) -> None:
        super().__init__()
        if not c >= 0:
            raise ValueError(f"UCB: c must be >= 0, got {c}")
        self.c = float(c)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "c": self.c}

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        self._need()
        n = self.counts
        t = n.sum(1, keepdim=True).clamp(min=1)
        score = self.sums / n.clamp(min=1) + self.c * torch.sqrt(torch.log(t) / n.clamp(min=1))
        score = torch.where(n == 0, torch.full_like(score, math.inf), score)
        return _argmax_random_ties(score, self.generator)


class ThompsonSampling(_BanditLearner):
    """Beta-Bernoulli Thompson sampling: sample ``Beta(a0 + successes, b0 + failures)`` per arm, pull the max.

    Args:
        prior: ``(a0, b0)`` of the Beta prior (uniform: ``(1, 1)``).
    """

    name = "thompson"

    def __init__(self, prior: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        if len(prior) != 2 or min(prior) <= 0:
            raise ValueError(f"ThompsonSampling: prior must be two positive numbers (a0, b0), got {prior}")
        self.prior = (float(prior[0]), float(prior[1]))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "prior": list(self.prior)}

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        self._need()
        a = self.prior[0] + self.sums
        b = self.prior[1] + (self.counts - self.sums)
        x = torch._standard_gamma(a, generator=self.generator)
        y = torch._standard_gamma(b, generator=self.generator)
        return (x / (x + y)).argmax(1)


# ============================================================================= grid worlds


class QLearning(SourceAlgorithm):
    """Tabular Q-learning on the environment's Markov state, one Q-table per instance (Dyna-Q).

    Epsilon-greedy with ties broken at random; optimistic initial values drive systematic
    exploration (an untried state-action pair looks worth ``init``). Two ways to propagate a
    reward faster than one step per episode, both standard:

    * ``planning`` (Dyna-Q): the learner records every transition it has seen (a tabular model:
      the environments are deterministic) and runs ``planning`` sweeps of
      ``Q(s, a) += lr * (r + gamma * max Q(s') - Q(s, a))`` over all recorded pairs after every
      episode (``plan_every="episode"``) or every step;
    * ``backward_sweep``: each finished episode is replayed once from its last transition to its
      first (episodic backward update).

    Episodes end by a time limit that the Markov state does not show, so updates bootstrap
    through episode ends from the state reached (partial-episode bootstrapping).

    The defaults (deterministic updates, ``init = 5`` between the value of circling next to the
    goal and that of staying on it, backward sweeps and 10 planning sweeps per episode) reach 91%
    of the optimal Dark Room return by episode 20 and 99% by episode 30 (mean over all 81 goals).

    Args:
        lr: learning rate alpha (1: the environments are deterministic).
        gamma: discount.
        epsilon: initial exploration rate; multiplied by ``epsilon_decay`` after each episode
            down to ``min_epsilon``.
        init: initial Q-value (optimism: > 0 with rewards in [0, 1]).
        backward_sweep: replay each finished episode backwards.
        planning: Dyna-Q planning sweeps over the learned model (0: model-free Q-learning).
        plan_every: "episode" (after each finished episode) or "step".
    """

    name = "q_learning"

    def __init__(self, lr: float = 1.0, gamma: float = 0.9, epsilon: float = 0.0, epsilon_decay: float = 1.0,
                 min_epsilon: float = 0.0, init: float = 5.0, backward_sweep: bool = True, planning: int = 10,
                 plan_every: str = "episode") -> None:
        super().__init__()
        for arg, val, lo, hi in (("lr", lr, 0.0, 1.0), ("gamma", gamma, 0.0, 1.0), ("epsilon", epsilon, 0.0, 1.0),
                                 ("epsilon_decay", epsilon_decay, 0.0, 1.0), ("min_epsilon", min_epsilon, 0.0, 1.0)):
            if not lo <= float(val) <= hi:
                raise ValueError(f"QLearning: {arg} must be in [{lo}, {hi}], got {val}")
        if lr == 0:
            raise ValueError("QLearning: lr must be > 0")
        self.lr, self.gamma, self.epsilon = float(lr), float(gamma), float(epsilon)
        self.epsilon_decay, self.min_epsilon, self.init = float(epsilon_decay), float(min_epsilon), float(init)
        self.backward_sweep = bool(backward_sweep)
        if isinstance(planning, bool) or not isinstance(planning, int) or planning < 0:
            raise ValueError(f"QLearning: planning must be a non-negative int, got {planning!r}")
        self.planning = planning
        if plan_every not in ("step", "episode"):
            raise ValueError(f"QLearning: plan_every must be 'step' or 'episode', got {plan_every!r}")
        self.plan_every = plan_every

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "gamma": self.gamma, "epsilon": self.epsilon,
                "epsilon_decay": self.epsilon_decay, "min_epsilon": self.min_epsilon, "init": self.init,
                "backward_sweep": self.backward_sweep, "planning": self.planning,
                "plan_every": self.plan_every}

    def _begin(self) -> None:
        env = self._need()
        B, S, A, H = env.num_envs, env.num_states, env.num_actions, env.horizon
        self.q = torch.full((B, S, A), self.init, device=env.device)
        self.rows = torch.arange(B, device=env.device)
        self.state = env.state_index()
        if self.backward_sweep:
            self.buf_s = torch.zeros(B, H, dtype=torch.long, device=env.device)
            self.buf_a = torch.zeros(B, H, dtype=torch.long, device=env.device)
            self.buf_r = torch.zeros(B, H, device=env.device)
            self.buf_s2 = torch.zeros(B, H, dtype=torch.long, device=env.device)
        if self.planning:
            self.model_next = torch.zeros(B, S, A, dtype=torch.long, device=env.device)
            self.model_r = torch.zeros(B, S, A, device=env.device)
            self.model_known = torch.zeros(B, S, A, dtype=torch.bool, device=env.device)

    def current_epsilon(self) -> torch.Tensor:
        """``(B,)`` exploration rate of each learner now."""
        eps = self.epsilon * torch.pow(torch.tensor(self.epsilon_decay, device=self.episodes.device),
                                       self.episodes.float())
        return eps.clamp(min=self.min_epsilon)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        env = self._need()
        self.state = s = env.state_index()
        self._t = env.t.clone()
        greedy = _argmax_random_ties(self.q[self.rows, s], self.generator)
        rand = torch.randint(0, env.num_actions, (env.num_envs,), generator=self.generator, device=env.device)
        explore = torch.rand(env.num_envs, generator=self.generator, device=env.device) < self.current_epsilon()
        return torch.where(explore, rand, greedy)

    def _td(self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor, terminal: torch.Tensor,
            mask: Optional[torch.Tensor] = None) -> None:
        boot = self.q[self.rows, s2].max(1).values.masked_fill(terminal, 0.0)
        q_sa = self.q[self.rows, s, a]
        delta = self.lr * (r + self.gamma * boot - q_sa)
        if mask is not None:
            delta = delta * mask
        self.q[self.rows, s, a] = q_sa + delta

    def update(self, actions: torch.Tensor, result: StepResult) -> None:
        env = self._need()
        # the episode ends by a time limit the Markov state does not show: bootstrap through it
        # (partial-episode bootstrapping) from the state reached before the reset
        s2 = env.final_state
        s, r, done = self.state, result.reward, result.done
        no_term = torch.zeros_like(done)
        self._td(s, actions, r, s2, no_term)
        if self.backward_sweep:
            t = self._t.clamp(max=env.horizon - 1)
            self.buf_s[self.rows, t] = s
            self.buf_a[self.rows, t] = actions
            self.buf_r[self.rows, t] = r
            self.buf_s2[self.rows, t] = s2
            if bool(done.any()):
                mask = done.float()
                for k in range(env.horizon - 1, -1, -1):
                    self._td(self.buf_s[:, k], self.buf_a[:, k], self.buf_r[:, k], self.buf_s2[:, k], no_term, mask)
        if self.planning:
            self.model_next[self.rows, s, actions] = s2
            self.model_r[self.rows, s, actions] = r
            self.model_known[self.rows, s, actions] = True
            if self.plan_every == "step" or bool(done.any()):
                self._plan()
        super().update(actions, result)

    def _plan(self) -> None:
        """Dyna-Q planning: ``planning`` sweeps of the Q-learning update over every recorded pair."""
        B, S, A = self.q.shape
        flat_next = self.model_next.reshape(B, S * A)
        for _ in range(self.planning):
            target = self.q.amax(2).gather(1, flat_next).view(B, S, A)
            target.mul_(self.gamma).add_(self.model_r)
            if self.lr != 1.0:
                target.sub_(self.q).mul_(self.lr).add_(self.q)
            torch.where(self.model_known, target, self.q, out=self.q)


class PPO(SourceAlgorithm):
    """Proximal policy optimization with one small actor-critic network per instance.

    The ``B`` networks (one-hot Markov state -> ``hidden`` tanh units -> action logits and a
    value) live in batched weight tensors and are trained by one Adam optimizer on the sum of
    the per-instance losses; Adam is element-wise, so each instance's update depends only on its
    own experience, exactly as if ``B`` optimizers ran side by side.

    Every ``episodes_per_update`` episodes (a rollout of ``episodes_per_update * horizon``
    steps per instance) it computes GAE(lambda) advantages and takes ``epochs`` full-batch steps
    of the clipped surrogate objective with a value loss and an entropy bonus.

    Args:
        hidden: hidden units of each network.
        lr: Adam learning rate.
        gamma: discount.
        lam: GAE lambda.
        clip: PPO ratio clip.
        epochs: optimisation passes per rollout.
        episodes_per_update: episodes per rollout.
        entropy_coef: entropy bonus.
        value_coef: weight of the value loss.
    """

    name = "ppo"

    def __init__(self, hidden: int = 32, lr: float = 0.01, gamma: float = 0.95, lam: float = 0.9, clip: float = 0.2,
                 epochs: int = 4, episodes_per_update: int = 2, entropy_coef: float = 0.02,
                 value_coef: float = 0.5) -> None:
        super().__init__()
        if hidden < 1 or epochs < 1 or episodes_per_update < 1:
            raise ValueError("PPO: hidden, epochs and episodes_per_update must be >= 1")
        if not (lr > 0 and 0 <= gamma <= 1 and 0 <= lam <= 1 and clip > 0):
            raise ValueError(f"PPO: need lr > 0, gamma and lam in [0, 1], clip > 0; got {lr}, {gamma}, {lam}, {clip}")
        self.hidden, self.lr, self.gamma, self.lam, self.clip = int(hidden), float(lr), float(gamma), float(lam), float(clip)
        self.epochs, self.episodes_per_update = int(epochs), int(episodes_per_update)
        self.entropy_coef, self.value_coef = float(entropy_coef), float(value_coef)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "hidden": self.hidden, "lr": self.lr, "gamma": self.gamma, "lam": self.lam,
                "clip": self.clip, "epochs": self.epochs, "episodes_per_update": self.episodes_per_update,
                "entropy_coef": self.entropy_coef, "value_coef": self.value_coef}

    def _begin(self) -> None:
        env = self._need()
        B, S, A, Hd = env.num_envs, env.num_states, env.num_actions, self.hidden
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator,
                                                            device=env.device).item()))
        dev = env.device

        def init(*shape: int, scale: float) -> torch.Tensor:
            return (torch.randn(*shape, generator=g) * scale).to(dev).requires_grad_()

        self.w1 = init(B, S, Hd, scale=1.0)
        self.b1 = torch.zeros(B, Hd, device=dev, requires_grad=True)
        self.w_pi = init(B, Hd, A, scale=0.01)
        self.b_pi = torch.zeros(B, A, device=dev, requires_grad=True)
        self.w_v = init(B, Hd, 1, scale=1.0 / math.sqrt(Hd))
        self.b_v = torch.zeros(B, 1, device=dev, requires_grad=True)
        self.params = [self.w1, self.b1, self.w_pi, self.b_pi, self.w_v, self.b_v]
        self.opt = torch.optim.Adam(self.params, lr=self.lr)
        T = self.episodes_per_update * env.horizon
        self.T = T
        self.buf_s = torch.zeros(B, T, dtype=torch.long, device=dev)
        self.buf_a = torch.zeros(B, T, dtype=torch.long, device=dev)
        self.buf_logp = torch.zeros(B, T, device=dev)
        self.buf_v = torch.zeros(B, T, device=dev)
        self.buf_r = torch.zeros(B, T, device=dev)
        self.buf_done = torch.zeros(B, T, dtype=torch.bool, device=dev)
        self.k = 0

    def _forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``s`` ``(B, N)`` states -> logits ``(B, N, A)``, values ``(B, N)``."""
        B = s.shape[0]
        h = torch.tanh(self.w1[torch.arange(B, device=s.device).unsqueeze(1), s] + self.b1.unsqueeze(1))
        logits = torch.baddbmm(self.b_pi.unsqueeze(1), h, self.w_pi)
        v = torch.baddbmm(self.b_v.unsqueeze(1), h, self.w_v).squeeze(-1)
        return logits, v

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        env = self._need()
        s = env.state_index()
        with torch.no_grad():
            logits, v = self._forward(s.unsqueeze(1))
            logp_all = torch.log_softmax(logits[:, 0], -1)
            u = torch.rand(logp_all.shape, generator=self.generator, device=env.device).clamp_(1e-12, 1 - 1e-7)
            a = (logp_all - torch.log(-torch.log(u))).argmax(1)  # Gumbel-max sample
        k = self.k
        self.buf_s[:, k], self.buf_a[:, k] = s, a
        self.buf_logp[:, k] = logp_all.gather(1, a.unsqueeze(1)).squeeze(1)
        self.buf_v[:, k] = v[:, 0]
        return a

    def update(self, actions: torch.Tensor, result: StepResult) -> None:
        env = self._need()
        k = self.k
        self.buf_r[:, k] = result.reward
        self.buf_done[:, k] = result.done
        self.k += 1
        super().update(actions, result)
        if self.k < self.T:
            return
        self.k = 0
        with torch.no_grad():
            _, v_last = self._forward(env.state_index().unsqueeze(1))
            adv = torch.zeros_like(self.buf_r)
            gae = torch.zeros(env.num_envs, device=env.device)
            next_v = v_last[:, 0]
            for t in range(self.T - 1, -1, -1):
                nonterm = (~self.buf_done[:, t]).float()
                delta = self.buf_r[:, t] + self.gamma * next_v * nonterm - self.buf_v[:, t]
                gae = delta + self.gamma * self.lam * nonterm * gae
                adv[:, t] = gae
                next_v = self.buf_v[:, t]
            ret = adv + self.buf_v
            adv_n = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
        for _ in range(self.epochs):
            logits, v = self._forward(self.buf_s)
            logp_all = torch.log_softmax(logits, -1)
            logp = logp_all.gather(2, self.buf_a.unsqueeze(2)).squeeze(2)
            ratio = torch.exp(logp - self.buf_logp)
            surr = torch.minimum(ratio * adv_n, ratio.clamp(1 - self.clip, 1 + self.clip) * adv_n)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            loss_b = (-surr - self.entropy_coef * entropy).mean(1) + self.value_coef * (v - ret).pow(2).mean(1)
            self.opt.zero_grad(set_to_none=True)
            loss_b.sum().backward()
            self.opt.step()


ALGORITHMS: dict[str, type[SourceAlgorithm]] = {
    cls.name: cls for cls in (UCB, ThompsonSampling, QLearning, PPO, RandomPolicy, Expert)
}


def make_algorithm(name: str, **kwargs: Any) -> SourceAlgorithm:
    """Build a source algorithm by name: "ucb", "thompson", "q_learning", "ppo", "random", "expert"."""
    if name not in ALGORITHMS:
        raise ValueError(f"make_algorithm: name must be one of {sorted(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name](**kwargs)
