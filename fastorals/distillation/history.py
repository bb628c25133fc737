"""Learning histories: generation with a vectorized source algorithm, and a safe on-disk format.

A learning history is the stream of (observation, action, reward) of one source-algorithm
learner across many episodes on one task, while it learns. :func:`collect_learning_histories`
runs ``env.num_envs`` learners at once (one per task) and keeps every ``subsample``-th episode.

On disk (``.npz``, a zip of raw ``.npy`` arrays, written atomically; read with
``numpy.load(allow_pickle=False)``: no pickle anywhere)::

    obs       (N, L, K)  uint8/int16/int32  observation components
    actions   (N, L)     uint8/int16/int32
    rewards   (N, L)     float32
    dones     (N, L)     bool               True on the last step of each episode
    task_ids  (N,)       int64
    episodes  (E,)       int64              source episode number of each kept episode
    meta      (bytes,)   uint8              UTF-8 JSON: format version, env and algorithm configs, ...

with ``L = E * horizon``. Every field is validated on load; a truncated, corrupted or foreign
file raises :class:`DatasetFormatError` naming the file and the problem.

Example:
    >>> env = DarkRoom(num_envs=512, seed=0)
    >>> hist = collect_learning_histories(env, QLearning(), num_tasks=1024, num_episodes=60,
    ...                                   subsample=2, path="dark_room.npz")
    >>> hist = LearningHistories.load("dark_room.npz")
    >>> hist.episode_returns().mean(0)      # (30,) the source's learning curve
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from .._io import atomic_write
from .algorithms import SourceAlgorithm
from .envs import VecEnv

__all__ = ["FORMAT_VERSION", "DatasetFormatError", "LearningHistories", "collect_learning_histories"]

FORMAT_VERSION = 1
_KEYS = ("obs", "actions", "rewards", "dones", "task_ids", "episodes", "meta")
PathLike = Union[str, "os.PathLike[str]"]


class DatasetFormatError(ValueError):
    """A learning-history file is missing fields, corrupted, truncated or inconsistent."""


def _int_dtype(max_value: int) -> torch.dtype:
    if max_value <= 255:
        return torch.uint8
    if max_value <= 32767:
        return torch.int16
    return torch.int32


@dataclass
class LearningHistories:
    """``N`` learning histories of ``L`` steps each (``E`` kept episodes of ``horizon`` steps).

    Attributes:
        obs: ``(N, L, K)`` integer observations.
        actions: ``(N, L)`` integer actions.
        rewards: ``(N, L)`` float32 rewards.
        dones: ``(N, L)`` bool, True on the last step of every episode.
        task_ids: ``(N,)`` int64 task of each history.
        episodes: ``(E,)`` int64 index of each kept episode in the source algorithm's run.
        meta: JSON-serializable description (``horizon``, ``num_actions``, ``obs_nvec``, ``env``,
            ``algorithm``, ``subsample``, ``seed``, ``format_version``).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    task_ids: torch.Tensor
    episodes: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ description
    @property
    def num_histories(self) -> int:
        return self.actions.shape[0]

    @property
    def length(self) -> int:
        """Steps per history L."""
        return self.actions.shape[1]

    @property
    def horizon(self) -> int:
        return int(self.meta["horizon"])

    @property
    def num_actions(self) -> int:
        return int(self.meta["num_actions"])

    @property
    def obs_nvec(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.meta["obs_nvec"])

    @property
    def num_episodes(self) -> int:
        """Kept episodes per history E."""
        return self.length // self.horizon

    def __len__(self) -> int:
        return self.num_histories

    def __repr__(self) -> str:
        env = self.meta.get("env", {}).get("name", "?")
        algo = self.meta.get("algorithm", {}).get("name", "?")
        return (f"LearningHistories(env={env!r}, algorithm={algo!r}, histories={self.num_histories}, "
                f"episodes={self.num_episodes}, horizon={self.horizon}, steps={self.num_histories * self.length})")

    def episode_returns(self) -> torch.Tensor:
        """``(N, E)`` float32 return of every kept episode."""
        return self.rewards.float().view(self.num_histories, self.num_episodes, self.horizon).sum(-1)

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "LearningHistories") -> None:
        """Check shapes, dtypes, ranges and episode boundaries; raise :class:`DatasetFormatError`."""

        def bad(msg: str) -> DatasetFormatError:
            return DatasetFormatError(f"{source}: {msg}")

        m = self.meta
        for key in ("horizon", "num_actions", "obs_nvec"):
            if key not in m:
                raise bad(f"meta has no {key!r}")
        try:
            H, A, nvec = int(m["horizon"]), int(m["num_actions"]), [int(v) for v in m["obs_nvec"]]
        except (TypeError, ValueError) as e:
            raise bad(f"meta horizon/num_actions/obs_nvec are not integers ({e})") from None
        if H < 1 or A < 1 or not nvec or min(nvec) < 1:
            raise bad(f"meta must have horizon >= 1, num_actions >= 1 and positive obs_nvec, got {H}, {A}, {nvec}")
        for name in ("obs", "actions", "rewards", "dones", "task_ids", "episodes"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise bad(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.actions.dim() != 2:
            raise bad(f"actions must be (N, L), got shape {tuple(self.actions.shape)}")
        N, L = self.actions.shape
        if L % H:
            raise bad(f"history length {L} is not a multiple of the horizon {H}")
        expect = {"obs": (N, L, len(nvec)), "rewards": (N, L), "dones": (N, L), "task_ids": (N,),
                  "episodes": (L // H,)}
        for name, shape in expect.items():
            if tuple(getattr(self, name).shape) != shape:
                raise bad(f"{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}")
        for name in ("obs", "actions", "task_ids", "episodes"):
            t = getattr(self, name)
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
                raise bad(f"{name} must hold integers, got dtype {t.dtype}")
        if not self.rewards.dtype.is_floating_point:
            raise bad(f"rewards must be floating point, got dtype {self.rewards.dtype}")
        if self.dones.dtype != torch.bool:
            raise bad(f"dones must be bool, got dtype {self.dones.dtype}")
        if N and L:
            if int(self.actions.min()) < 0 or int(self.actions.max()) >= A:
                raise bad(f"actions must lie in [0, {A})")
            hi = torch.tensor(nvec, dtype=torch.long, device=self.obs.device)
            if bool((self.obs.long() < 0).any()) or bool((self.obs.long() >= hi).any()):
                raise bad(f"observation components must lie in [0, obs_nvec={nvec})")
            if not bool(torch.isfinite(self.rewards).all()):
                raise bad("rewards contain NaN or inf")
            want = torch.zeros(L, dtype=torch.bool, device=self.dones.device)
            want[H - 1::H] = True
            if not bool((self.dones == want).all()):
                raise bad(f"dones must mark exactly every {H}-th step (fixed-horizon episodes)")
            if bool((self.task_ids < 0).any()):
                raise bad("task_ids must be >= 0")

    # ------------------------------------------------------------------ views
    def to(self, device: Union[str, torch.device]) -> LearningHistories:
        """A copy on ``device``."""
        return LearningHistories(self.obs.to(device), self.actions.to(device), self.rewards.to(device),
                                 self.dones.to(device), self.task_ids.to(device), self.episodes.to(device),
                                 dict(self.meta))

    def subset(self, index: Any) -> LearningHistories:
        """Histories ``index`` (indices, slice or bool mask over N)."""
        return LearningHistories(self.obs[index], self.actions[index], self.rewards[index], self.dones[index],
                                 self.task_ids[index], self.episodes.clone(), dict(self.meta))

    @staticmethod
    def concatenate(parts: list[LearningHistories]) -> LearningHistories:
        """Join histories of the same environment/horizon/episodes along N."""
        if not parts:
            raise ValueError("LearningHistories.concatenate: parts is empty")
        first = parts[0]
        for p in parts[1:]:
            if (p.horizon, p.num_actions, p.obs_nvec, p.length) != (first.horizon, first.num_actions, first.obs_nvec,
                                                                    first.length):
                raise ValueError("LearningHistories.concatenate: parts differ in horizon, actions, observations or length")
        return LearningHistories(*(torch.cat([getattr(p, k) for p in parts]) for k in
                                   ("obs", "actions", "rewards", "dones", "task_ids")),
                                 first.episodes.clone(), dict(first.meta))

    # ------------------------------------------------------------------ disk
    def save(self, path: PathLike, compress: bool = False) -> None:
        """Write an ``.npz`` (atomically: a temporary file renamed into place).

        Args:
            path: destination file, written under exactly this name (no ``.npz`` is appended:
                give the extension yourself).
            compress: zip-deflate the arrays (smaller, slower).
        """
        path = os.fspath(path)
        meta = dict(self.meta)
        meta["format_version"] = FORMAT_VERSION
        arrays = {
            "obs": self.obs.cpu().numpy(), "actions": self.actions.cpu().numpy(),
            "rewards": self.rewards.cpu().float().numpy(), "dones": self.dones.cpu().numpy(),
            "task_ids": self.task_ids.cpu().long().numpy(), "episodes": self.episodes.cpu().long().numpy(),
            "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
        }
        atomic_write(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))

    @classmethod
    def load(cls, path: PathLike, device: Union[str, torch.device, None] = None) -> LearningHistories:
        """Read and validate a file written by :meth:`save` (``allow_pickle=False``).

        Raises:
            FileNotFoundError: no such file.
            DatasetFormatError: not a learning-history file, corrupted (CRC or truncation),
                missing fields, pickled objects, wrong shapes/dtypes/ranges, unknown version.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"LearningHistories.load: no such file {path!r}")
        src = f"LearningHistories.load({path!r})"
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DatasetFormatError(f"{src}: not an .npz archive of learning histories (a bare "
                                         f"{type(z).__name__})")
            with z:
                missing = [k for k in _KEYS if k not in z.files]
                if missing:
                    raise DatasetFormatError(f"{src}: missing fields {missing} (has {sorted(z.files)})")
                arrays = {k: z[k] for k in _KEYS}
        except DatasetFormatError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError, TypeError) as e:
            raise DatasetFormatError(f"{src}: corrupted or not a learning-history file ({type(e).__name__}: {e})") from e
        meta_bytes = arrays.pop("meta")
        if meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
            raise DatasetFormatError(f"{src}: meta must be a 1-D uint8 array of UTF-8 JSON")
        try:
            meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetFormatError(f"{src}: meta is not valid UTF-8 JSON ({e})") from e
        if not isinstance(meta, dict):
            raise DatasetFormatError(f"{src}: meta must be a JSON object")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DatasetFormatError(f"{src}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        for k, a in arrays.items():
            if a.dtype.kind not in "biuf":
                raise DatasetFormatError(f"{src}: {k} has unsupported dtype {a.dtype}")
        tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()}
        if tensors["rewards"].dtype != torch.float32 and tensors["rewards"].dtype.is_floating_point:
            tensors["rewards"] = tensors["rewards"].float()
        try:
            out = cls.__new__(cls)
            out.obs, out.actions, out.rewards = tensors["obs"], tensors["actions"], tensors["rewards"]
            out.dones, out.task_ids, out.episodes = tensors["dones"], tensors["task_ids"], tensors["episodes"]
            out.meta = meta
            out.validate(src)
        except DatasetFormatError:
            raise
        except (TypeError, ValueError, RuntimeError) as e:
            raise DatasetFormatError(f"{src}: inconsistent fields ({e})") from e
        return out.to(device) if device is not None else out


def _balanced_tasks(ids: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` ids covering ``ids`` as evenly as possible (each id ``floor`` or ``ceil(n / len)`` times), shuffled."""
    reps = ids.cpu().repeat(math.ceil(n / ids.numel()))
    head = reps[: (n // ids.numel()) * ids.numel()]
    extra = ids.cpu()[torch.randperm(ids.numel(), generator=generator)[: n - head.numel()]]
    allv = torch.cat([head, extra])
    return allv[torch.randperm(n, generator=generator)]


def collect_learning_histories(
    env: VecEnv,
    algorithm: SourceAlgorithm,
    num_tasks: Optional[int] = None,
    num_episodes: int = 100,
    subsample: int = 1,
    *,
    task_ids: Optional[torch.Tensor] = None,
    split: str = "train",
    path: Optional[PathLike] = None,
    seed: int = 0,
    progress: bool = True,
    compress: bool = False,
) -> LearningHistories:
    """Run the source algorithm on many tasks and record its learning histories.

    Tasks are processed ``env.num_envs`` at a time: each batch starts fresh learners
    (``algorithm.begin``), runs ``num_episodes`` episodes and keeps episodes
    ``0, subsample, 2 * subsample, ...`` (all their steps), so a context of a few kept episodes
    spans more of the learning progress.

    Args:
        env: a vectorized environment (its ``num_envs`` is the batch of simultaneous learners).
        algorithm: a :class:`~fastorals.distillation.algorithms.SourceAlgorithm`.
        num_tasks: number of histories N; tasks are drawn from ``split`` as evenly as possible
            (each task ``N / |split|`` times, rounded). Ignored when ``task_ids`` is given.
        num_episodes: episodes the source algorithm runs per history.
        subsample: keep every ``subsample``-th episode.
        task_ids: ``(N,)`` explicit task of each history.
        split: "train", "test" or "all".
        path: if given, the histories are also saved there (``.npz``, see :meth:`LearningHistories.save`).
        seed: seeds the environments and learners (the result is reproducible on CPU).
        progress: show a progress bar (tqdm).
        compress: compress the file.
    Returns:
        :class:`LearningHistories` on the CPU.

    Example:
        >>> env = BernoulliBandit(num_envs=1000, seed=0)
        >>> hist = collect_learning_histories(env, UCB(), num_tasks=5000, num_episodes=100)
    """
    if not isinstance(env, VecEnv):
        raise TypeError(f"collect_learning_histories: env must be a VecEnv, got {type(env).__name__}")
    if not isinstance(algorithm, SourceAlgorithm):
        raise TypeError(f"collect_learning_histories: algorithm must be a SourceAlgorithm, got {type(algorithm).__name__}")
    for arg, val in (("num_episodes", num_episodes), ("subsample", subsample)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"collect_learning_histories: {arg} must be a positive int, got {val!r}")
    if subsample > num_episodes:
        raise ValueError(f"collect_learning_histories: subsample ({subsample}) must be <= num_episodes ({num_episodes})")
    g = torch.Generator().manual_seed(int(seed))
    if task_ids is None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"collect_learning_histories: num_tasks must be a positive int, got {num_tasks!r}")
        ids = env.task_split(split)
        if ids.numel() == 0:
            raise ValueError(f"collect_learning_histories: split {split!r} of {type(env).__name__} is empty "
                             "(no task ids; check test_fraction)")
        tasks = _balanced_tasks(ids, num_tasks, g)
    else:
        tasks = torch.as_tensor(task_ids).reshape(-1)
        if tasks.numel() == 0:
            raise ValueError("collect_learning_histories: task_ids is empty")
        if tasks.dtype.is_floating_point or tasks.dtype == torch.bool:
            raise TypeError(f"collect_learning_histories: task_ids must be integers, got dtype {tasks.dtype}")
        if int(tasks.min()) < 0 or int(tasks.max()) >= env.num_tasks:
            raise ValueError(f"collect_learning_histories: unknown task ids: task_ids must lie in [0, {env.num_tasks})")
        tasks = tasks.long().cpu()
    N, B, H = tasks.numel(), env.num_envs, env.horizon
    kept = list(range(0, num_episodes, subsample))
    E = len(kept)
    K = env.obs_dim
    obs_dt = _int_dtype(max(env.obs_nvec) - 1)
    act_dt = _int_dtype(env.num_actions - 1)
    obs_out = torch.empty(N, E * H, K, dtype=obs_dt)
    act_out = torch.empty(N, E * H, dtype=act_dt)
    rew_out = torch.empty(N, E * H, dtype=torch.float32)
    n_chunks = math.ceil(N / B)

    from tqdm.auto import tqdm

    bar = tqdm(total=n_chunks * num_episodes, disable=not progress, desc="histories", unit="episode", leave=False)
    for c in range(n_chunks):
        lo, hi = c * B, min((c + 1) * B, N)
        chunk = tasks[lo:hi]
        if chunk.numel() < B:  # pad the last batch with repeats; the padding is discarded
            chunk = torch.cat([chunk, chunk.repeat(math.ceil(B / chunk.numel()))[: B - chunk.numel()]])
        env_seed = int(torch.randint(0, 2**62, (1,), generator=g).item())
        obs = env.reset(chunk, seed=env_seed)
        algo_gen = torch.Generator(device=env.device)
        algo_gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g).item()))
        algorithm.begin(env, algo_gen)
        ep_obs = torch.empty(H, B, K, dtype=torch.long, device=env.device)
        ep_act = torch.empty(H, B, dtype=torch.long, device=env.device)
        ep_rew = torch.empty(H, B, dtype=torch.float32, device=env.device)
        j = 0
        for e in range(num_episodes):
            keep = e % subsample == 0
            for t in range(H):
                a = algorithm.act(obs)
                res = env.step(a)
                algorithm.update(a, res)
                if keep:
                    ep_obs[t], ep_act[t], ep_rew[t] = obs, a, res.reward
                obs = res.obs
            if keep:
                n = hi - lo
                obs_out[lo:hi, j * H:(j + 1) * H] = ep_obs.transpose(0, 1)[:n].to("cpu", obs_dt)
                act_out[lo:hi, j * H:(j + 1) * H] = ep_act.transpose(0, 1)[:n].to("cpu", act_dt)
                rew_out[lo:hi, j * H:(j + 1) * H] = ep_rew.transpose(0, 1)[:n].cpu()
                j += 1
            bar.update(1)
    bar.close()
    dones = torch.zeros(N, E * H, dtype=torch.bool)
    dones[:, H - 1::H] = True
    meta = {"horizon": H, "num_actions": env.num_actions, "obs_nvec": list(env.obs_nvec), "env": env.config(),
            "algorithm": algorithm.config(), "subsample": subsample, "num_source_episodes": num_episodes,
            "seed": int(seed), "format_version": FORMAT_VERSION}
    hist = LearningHistories(obs_out, act_out, rew_out, dones, tasks.clone(), torch.tensor(kept, dtype=torch.long), meta)
    if path is not None:
        hist.save(path, compress=compress)
    return hist
