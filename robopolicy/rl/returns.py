"""Monte-Carlo return-to-go per frame (Cal-QL's V^mu), computed once per dataset, reward source and discount.

G_t = r_t + gamma * G_{t+1} inside an episode, nothing bootstrapped past a terminal frame. At an episode end
that is not terminal (a time limit, a demonstration that stopped) `tail` says what follows:
  "zero"   nothing (the plain discounted sum of the recorded rewards);
  "repeat" the last reward forever, r_last / (1 - gamma): Cal-QL's treatment of a sparse-reward episode that
           never succeeded (every return then equals r_neg / (1 - gamma)), generalised to any last reward.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from robopolicy.config_parsing import ConfigError
from robopolicy.data.dataset import Dataset
from robopolicy.rl.rewards import REWARD_KEY, Rewards, dataset_rewards

TAILS = ("zero", "repeat")


def monte_carlo_returns(
    reward: np.ndarray, terminal: np.ndarray, episode_ends: np.ndarray, gamma: float, tail: str = "zero"
) -> np.ndarray:
    """Return-to-go (N,) float32 for rewards (N,), terminal flags (N,) and exclusive episode ends (E,)."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    reward = np.asarray(reward, dtype=np.float64).reshape(-1)
    terminal = np.asarray(terminal, dtype=bool).reshape(-1)
    ends = np.asarray(episode_ends, dtype=np.int64)
    if len(ends) == 0 or ends[-1] != len(reward) or np.any(np.diff(np.r_[0, ends]) <= 0):
        raise ValueError(f"episode_ends must increase strictly up to the {len(reward)} frames, got {ends[:5]}...")
    out = np.empty_like(reward)
    start = 0
    for end in ends:
        last = end - 1
        g = 0.0 if terminal[last] or tail == "zero" else reward[last] / (1.0 - gamma)  # G_{last + 1}
        for t in range(last, start - 1, -1):
            g = reward[t] + gamma * (0.0 if terminal[t] else g)
            out[t] = g
        start = end
    return out.astype(np.float32)


def check_success_not_penalised(rewards: Rewards, source: str, scale: float, bias: float) -> None:
    """Refuse rewards under which finishing the task lowers the return.

    A successful terminal step ends the return (nothing is bootstrapped past it), so if the steps that do not
    end the episode earn positive rewards, a return-maximising critic learns that succeeding forfeits them and
    steers away from success. gym-pusht's coverage reward in [0, 1] with termination at coverage > 0.95 is such
    a reward: ~55 for hovering near the goal against ~1 for finishing. Shifting the rewards to at most 0
    (r - 1) makes the success step the best one, as PA-RL and Cal-QL do for sparse tasks.
    """
    ends_in_success = rewards.terminal & rewards.success
    positive = (rewards.reward > 0) & ~rewards.terminal
    if ends_in_success.any() and positive.any():
        top = float(rewards.reward[positive].max())
        raise ConfigError(
            f"rl.reward={source!r} (scale {scale:g}, bias {bias:g}): {int(positive.sum())} frames that do not end "
            f"the episode have positive rewards (up to {top:.3g}) and {int(ends_in_success.sum())} frames end it "
            f"in success; a terminal success step stops the return, so the critic would learn to avoid succeeding. "
            f"Shift the rewards to at most 0, e.g. rl.reward_bias={-top:.3g} (rl.reward_bias=-1 for rewards in "
            f"[0, 1])"
        )


_REWARDS: dict[tuple, Rewards] = {}
_RETURNS: dict[tuple, tuple[Rewards, np.ndarray]] = {}


def dataset_returns(
    dataset: Dataset, gamma: float, source: str = REWARD_KEY, tail: str = "zero", scale: float = 1.0,
    bias: float = 0.0,
) -> tuple[Rewards, np.ndarray]:
    """(rewards, return-to-go (N,)) of `dataset` with rewards r' = scale * r + bias (PA-RL: bias -1 for sparse
    tasks), computed on the first call and cached for this process (rewards keyed by the dataset's root, frame
    count and source; returns also by gamma, tail, scale and bias)."""
    data_key = (str(dataset.root), dataset.num_frames, source)
    if data_key not in _REWARDS:
        _REWARDS[data_key] = dataset_rewards(dataset, source)
    key = (*data_key, float(gamma), tail, float(scale), float(bias))
    if key not in _RETURNS:
        raw = _REWARDS[data_key]
        rewards = raw if (scale, bias) == (1.0, 0.0) else dataclasses.replace(
            raw, reward=(raw.reward * scale + bias).astype(np.float32))
        check_success_not_penalised(rewards, source, scale, bias)
        _RETURNS[key] = rewards, monte_carlo_returns(rewards.reward, rewards.terminal, dataset.episode_ends, gamma,
                                                     tail)
    return _RETURNS[key]
