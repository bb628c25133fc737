"""C-BeT: "From Play to Policy: Conditional Behavior Generation from Uncurated Robot Data"
(Cui, Wang, Shafiullah, Pinto, ICLR 2023), and the Behavior Transformer (BeT) it builds on.

Public API:

* k-means on actions: :func:`kmeans`, :func:`kmeans_assign`, :func:`kmeans_plusplus`,
  :class:`KMeansDiscretizer` (exact assignments, C++ SIMD kernel on the CPU, GEMM elsewhere).
* The BeT head: :func:`bet_loss` (fused focal + offset MSE, forward and gradient in one pass),
  :func:`sample_actions`, :class:`BeTHead`.
* Models: :class:`BehaviorTransformer` (BeT with ``goal_tokens=0``, C-BeT with goal tokens),
  :class:`MLPPolicy` (behaviour cloning baselines, optionally goal-conditioned).
* Play data: :class:`MultiPathEnv`, :class:`MultiGoalArena` (vectorised), scripted
  demonstrators :func:`multipath_demos`, :func:`multigoal_demos`, :class:`PlayData`,
  :class:`WindowSampler`.
* Training and evaluation: :func:`train_policy`, :func:`rollout`.
* :mod:`fastorals.behavior.reference`: the plain math (the tests' oracle).

Example:
    >>> from fastorals.behavior import BehaviorTransformer, multigoal_demos, train_policy, rollout, MultiGoalArena
    >>> data = multigoal_demos(1000, seed=0)
    >>> cbet = BehaviorTransformer(data.obs.shape[-1], 2, num_bins=24, history=5, goal_tokens=1)
    >>> train_policy(cbet, data, steps=2000, lr=3e-4)
    >>> env = MultiGoalArena(200, seed=1)
    >>> goal = held_out.goal_frames(1)[:200]                   # end states of held-out demos
    >>> traj = rollout(env, cbet, goal=goal)
    >>> env.success(goal).float().mean()
"""

from . import reference
from .baselines import MLPPolicy
from .cluster import KMeansDiscretizer, KMeansResult, kmeans, kmeans_assign, kmeans_plusplus
from .data import GOAL_MODES, PlayData, WindowSampler
from .envs import MultiGoalArena, MultiPathEnv, multigoal_demos, multipath_demos
from .head import BeTHead, BeTLoss, bet_loss, sample_actions
from .model import BehaviorTransformer, Normalizer
from .train import Policy, rollout, train_policy

__all__ = [
    "GOAL_MODES",
    "BeTHead",
    "BeTLoss",
    "BehaviorTransformer",
    "KMeansDiscretizer",
    "KMeansResult",
    "MLPPolicy",
    "MultiGoalArena",
    "MultiPathEnv",
    "Normalizer",
    "PlayData",
    "Policy",
    "WindowSampler",
    "bet_loss",
    "kmeans",
    "kmeans_assign",
    "kmeans_plusplus",
    "multigoal_demos",
    "multipath_demos",
    "reference",
    "rollout",
    "sample_actions",
    "train_policy",
]
