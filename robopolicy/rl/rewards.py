"""Per-frame rewards for offline RL: from a dataset column, from episode success, or relabelled (PushT coverage).

Convention (LeRobot's `next.reward` / `next.done`): frame t's reward is what the environment returned after
frame t's action. `terminal[t]` is True where the environment ended the episode by itself after that action
(success in the robosuite / PushT tasks): nothing is bootstrapped past it. An episode that simply stops
(a time limit, the demonstrator let go) is not terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robopolicy.data.dataset import Dataset
from robopolicy.data.errors import DatasetError

REWARD_KEY = "next.reward"
DONE_KEY = "next.done"
SUCCESS_KEY = "next.success"
PUSHT_STATE_KEYS = ("state", "observation.state")  # a 5-D PushT state: agent x, y, block x, y, angle


@dataclass(frozen=True)
class Rewards:
    """reward (N,) float32; terminal (N,) bool; success (N,) bool: the task is solved after frame t's action."""

    reward: np.ndarray
    terminal: np.ndarray
    success: np.ndarray

    def __post_init__(self):
        n = len(self.reward)
        if self.terminal.shape != (n,) or self.success.shape != (n,):
            raise ValueError(f"reward {self.reward.shape}, terminal {self.terminal.shape} and success "
                             f"{self.success.shape} must all be ({n},)")


def _column(dataset: Dataset, key: str) -> np.ndarray:
    values = dataset.read(key, np.arange(dataset.num_frames))
    return values.reshape(dataset.num_frames, -1)[:, 0]


def column_rewards(dataset: Dataset, key: str = REWARD_KEY, success_key: str | None = None) -> Rewards:
    """Rewards recorded in the dataset (`key`, one value per frame).

    Success per frame comes from `success_key` (default `next.success` if present, else reward >= 1, which is
    robopolicy's sparse robosuite reward and gym-aloha's normalised maximum); frames that are successful are
    terminal.
    """
    if key not in dataset.features:
        raise DatasetError(
            f"{dataset.root}: no reward column {key!r} (features: {sorted(dataset.features)}); record one "
            f"(`robopolicy collect` writes {REWARD_KEY!r}) or relabel: reward='episode_success' or 'pusht_coverage'"
        )
    reward = _column(dataset, key).astype(np.float32)
    success_key = success_key or (SUCCESS_KEY if SUCCESS_KEY in dataset.features else None)
    success = _column(dataset, success_key).astype(bool) if success_key else reward >= 1.0
    return Rewards(reward, success.copy(), success)


def episode_success_rewards(dataset: Dataset) -> Rewards:
    """Sparse reward 1 on the last frame of every successful episode (its recorded success flag), else 0."""
    flags = dataset.episode_success
    if flags is None or any(f is None for f in flags):
        missing = "none" if flags is None else f"{sum(f is None for f in flags)} of {len(flags)}"
        raise DatasetError(
            f"{dataset.root}: per-episode success flags are missing ({missing} recorded); relabel from a reward "
            f"column (reward='{REWARD_KEY}') or from the task itself (reward='pusht_coverage')"
        )
    success = np.zeros(dataset.num_frames, dtype=bool)
    last = dataset.episode_ends - 1
    success[last[np.asarray(flags, dtype=bool)]] = True
    return Rewards(success.astype(np.float32), success.copy(), success)


def pusht_coverage_rewards(dataset: Dataset, state_key: str | None = None, action_key: str = "action") -> Rewards:
    """gym-pusht's reward, relabelled from the recorded block pose: clip(coverage / 0.95, 0, 1), success and
    terminal where coverage > 0.95.

    Frame t's reward is the coverage of frame t + 1's recorded block pose, the state its action led to. The last
    frame of an episode has no next state: the episode is replayed in gym-pusht from its first recorded state
    (the real demonstrations' replays track their recorded states within 1e-6 in coverage, velocities included,
    which a reset to the last state would zero) and the replay's last coverage is taken. Needs gym-pusht; about
    0.1 s per episode.
    """
    from robopolicy.sim.pusht_env import SUCCESS_COVERAGE, PushTEnv, block_coverage

    key = state_key or next((k for k in PUSHT_STATE_KEYS if k in dataset.features), None)
    if key is None or tuple(dataset.feature(key).shape) != (5,):
        found = "no state" if key is None else f"{key!r} has shape {tuple(dataset.feature(key).shape)}"
        raise DatasetError(
            f"{dataset.root}: PushT coverage needs the block pose, a 5-D state (agent x, y, block x, y, angle) "
            f"under one of {PUSHT_STATE_KEYS}; {found}. LeRobot's lerobot/pusht keeps only the agent position: "
            f"use the diffusion-policy zarr (pusht_cchi_v7_replay.zarr) or a dataset converted from it"
        )
    frames = np.arange(dataset.num_frames)
    state = dataset.read(key, frames).astype(np.float64)
    actions = dataset.read(action_key, frames).astype(np.float64)
    coverage = np.empty(dataset.num_frames)
    coverage[:-1] = block_coverage(state[1:, 2:5])  # the next frame's pose; episode-last frames are replaced below
    env = PushTEnv()
    try:
        for ep in dataset.episodes:
            env.reset(options={"exact_state": state[ep.start]})
            for t in range(ep.start, ep.stop):
                _, _, _, _, info = env.step(actions[t])
            coverage[ep.stop - 1] = info["coverage"]
    finally:
        env.close()
    success = coverage > SUCCESS_COVERAGE
    reward = np.clip(coverage / SUCCESS_COVERAGE, 0.0, 1.0).astype(np.float32)
    return Rewards(reward, success.copy(), success)


def dataset_rewards(dataset: Dataset, source: str = REWARD_KEY) -> Rewards:
    """Rewards by source name: 'episode_success', 'pusht_coverage', or a dataset column (default next.reward)."""
    if source == "episode_success":
        return episode_success_rewards(dataset)
    if source == "pusht_coverage":
        return pusht_coverage_rewards(dataset)
    return column_rewards(dataset, source)
