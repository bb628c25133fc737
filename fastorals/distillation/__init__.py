"""Algorithm Distillation (Laskin et al., "In-context Reinforcement Learning with Algorithm Distillation", ICLR 2023).

Vectorized environments, source RL algorithms that learn across episodes (one learner per
task, all in a few tensor ops), learning-history datasets in a safe on-disk format, the AD
transformer (:mod:`fastorals.transformer`), its training loop (seeded, checkpointed, DDP) and
in-context evaluation with KV-cache decoding over hundreds of environments at once.

Example:
    >>> from fastorals import distillation as ad
    >>> env = ad.DarkRoom(num_envs=512, seed=0)
    >>> hist = ad.collect_learning_histories(env, ad.QLearning(), num_tasks=2048, num_episodes=60)
    >>> model = ad.ADModel(num_actions=5, obs_nvec=(9, 9), context=80, horizon=20)
    >>> ad.train_ad(model, hist, steps=3000)
    >>> res = ad.evaluate_in_context(model, env, num_envs=256, num_episodes=40)   # held-out goals
    >>> res.curve()      # mean return per episode: rises from random to near optimal
"""

from . import reference
from .algorithms import (
    ALGORITHMS,
    PPO,
    UCB,
    Expert,
    QLearning,
    RandomPolicy,
    SourceAlgorithm,
    ThompsonSampling,
    make_algorithm,
)
from .envs import (
    ENVIRONMENTS,
    AdversarialBandit,
    BernoulliBandit,
    DarkKeyToDoor,
    DarkRoom,
    DarkRoomHard,
    GridWorld,
    StepResult,
    VecEnv,
    make_env,
)
from .evaluate import InContextResult, default_slide, evaluate_algorithm, evaluate_in_context, sample_actions
from .gym import gymnasium_vector_env_class, to_gymnasium
from .history import FORMAT_VERSION, DatasetFormatError, LearningHistories, collect_learning_histories
from .model import ADConfig, ADModel, shift_history
from .train import TrainResult, load_ad_checkpoint, sample_windows, train_ad

__all__ = [
    "ALGORITHMS",
    "ENVIRONMENTS",
    "FORMAT_VERSION",
    "PPO",
    "UCB",
    "ADConfig",
    "ADModel",
    "AdversarialBandit",
    "BernoulliBandit",
    "DarkKeyToDoor",
    "DarkRoom",
    "DarkRoomHard",
    "DatasetFormatError",
    "Expert",
    "GridWorld",
    "InContextResult",
    "LearningHistories",
    "QLearning",
    "RandomPolicy",
    "SourceAlgorithm",
    "StepResult",
    "ThompsonSampling",
    "TrainResult",
    "VecEnv",
    "collect_learning_histories",
    "default_slide",
    "evaluate_algorithm",
    "evaluate_in_context",
    "gymnasium_vector_env_class",
    "load_ad_checkpoint",
    "make_algorithm",
    "make_env",
    "reference",
    "sample_actions",
    "sample_windows",
    "shift_history",
    "to_gymnasium",
    "train_ad",
]


def __getattr__(name: str):
    if name == "GymnasiumVectorEnv":  # built on first use: imports gymnasium
        return gymnasium_vector_env_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
