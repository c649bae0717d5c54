"""Rewards for offline RL: recorded columns, episode success, PushT coverage relabelled from the real demos."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.config_parsing import ConfigError
from robopolicy.data.dataset import open_dataset
from robopolicy.data.errors import DatasetError
from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer
from robopolicy.rl.returns import dataset_returns, monte_carlo_returns
from robopolicy.rl.rewards import column_rewards, episode_success_rewards, pusht_coverage_rewards


def test_returns_by_hand():
    reward = np.array([1.0, 0.0, 2.0, 0.0, 0.0, 1.0])
    terminal = np.array([False, False, False, False, False, True])
    ends = np.array([3, 6])
    np.testing.assert_allclose(monte_carlo_returns(reward, terminal, ends, 0.5), [1.5, 1.0, 2.0, 0.25, 0.5, 1.0])
    # "repeat": episode 0 stops without terminating, its last reward 2 goes on: G_2 = 2 / (1 - 0.5) = 4
    np.testing.assert_allclose(monte_carlo_returns(reward, terminal, ends, 0.5, "repeat"),
                               [2.0, 2.0, 4.0, 0.25, 0.5, 1.0])
    # a terminal frame inside an episode cuts the bootstrap there
    np.testing.assert_allclose(monte_carlo_returns(np.ones(3), np.array([False, True, False]), np.array([3]), 0.9),
                               [1.9, 1.0, 1.0])


def test_a_failed_sparse_episode_has_cal_ql_returns():
    """Cal-QL: an episode that never succeeds (reward -1 throughout) has return -1 / (1 - gamma) everywhere."""
    g = monte_carlo_returns(-np.ones(50), np.zeros(50, bool), np.array([50]), 0.99, "repeat")
    np.testing.assert_allclose(g, -100.0, rtol=1e-5)


@pytest.mark.parametrize("gamma, ends", [(1.0, [4]), (-0.1, [4]), (0.9, [3]), (0.9, [2, 2, 4])])
def test_returns_refuse_bad_arguments(gamma, ends):
    with pytest.raises(ValueError):
        monte_carlo_returns(np.zeros(4), np.zeros(4, bool), np.array(ends), gamma)


def _write(root, lengths, success, with_reward=True):
    feats = {"state": Feature("state", "float32", (2,), "state"),
             "action": Feature("action", "float32", (2,), "action")}
    if with_reward:
        feats["next.reward"] = Feature("next.reward", "float32", (1,), "reward")
    with create_writer(root, feats, 10, format="zarr") as w:
        for n, ok in zip(lengths, success):
            for t in range(n):
                frame = {"state": np.zeros(2, np.float32), "action": np.zeros(2, np.float32)}
                if with_reward:
                    frame["next.reward"] = np.array([float(ok and t >= n - 2)], np.float32)
                w.add_frame(frame)
            w.save_episode(task="t", success=ok)
    return open_dataset(root)


def test_column_and_episode_success_rewards(tmp_path):
    ds = _write(tmp_path / "d.zarr", [3, 4, 2], [True, False, True])
    col = column_rewards(ds)
    np.testing.assert_array_equal(col.reward, [0, 1, 1, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(col.terminal, col.reward >= 1)
    sparse = episode_success_rewards(ds)
    np.testing.assert_array_equal(sparse.reward, [0, 0, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(sparse.success, sparse.reward == 1)
    _, g = dataset_returns(ds, 0.5, "episode_success")
    np.testing.assert_allclose(g, [0.25, 0.5, 1, 0, 0, 0, 0, 0.5, 1])
    assert dataset_returns(ds, 0.5, "episode_success")[1] is g  # computed once


def test_a_missing_reward_column_is_named(tmp_path):
    ds = _write(tmp_path / "d.zarr", [3], [True], with_reward=False)
    with pytest.raises(DatasetError, match="next.reward"):
        column_rewards(ds)


def _write_dense(root, episodes):
    """episodes: (rewards, success of the last frame) per episode, rewards dense as gym-pusht's coverage."""
    feats = {"state": Feature("state", "float32", (2,), "state"),
             "action": Feature("action", "float32", (2,), "action"),
             "next.reward": Feature("next.reward", "float32", (1,), "reward"),
             "next.success": Feature("next.success", "bool", (1,), "done")}
    with create_writer(root, feats, 10, format="zarr") as w:
        for rewards, ok in episodes:
            for t, r in enumerate(rewards):
                w.add_frame({"state": np.zeros(2, np.float32), "action": np.zeros(2, np.float32),
                             "next.reward": np.array([r], np.float32),
                             "next.success": np.array([ok and t == len(rewards) - 1])})
            w.save_episode(task="t", success=ok)
    return open_dataset(root)


def test_rewards_under_which_success_lowers_the_return_are_refused(tmp_path):
    # one episode finishes (reward 1, terminal), one hovers near the goal at 0.9 without finishing
    finish, hover = ([0.5, 0.9, 1.0], True), ([0.5, 0.9, 0.9, 0.9, 0.9, 0.9], False)
    ds = _write_dense(tmp_path / "dense.zarr", [finish, hover])
    with pytest.raises(ConfigError, match=r"rl.reward='next.reward'.*avoid succeeding.*rl.reward_bias=-0.9"):
        dataset_returns(ds, 0.99, "next.reward")
    rewards, g = dataset_returns(ds, 0.99, "next.reward", "repeat", bias=-1.0)  # shifted to [-1, 0]
    np.testing.assert_allclose(rewards.reward, [-0.5, -0.1, 0.0, -0.5, -0.1, -0.1, -0.1, -0.1, -0.1], atol=1e-6)
    assert g[1] > g[4]  # at the same reward, the state that goes on to finish is now worth more
    # sparse 0 / 1 rewards (positive only where the episode ends in success) are accepted unshifted
    sparse = _write_dense(tmp_path / "sparse.zarr", [([0.0, 0.0, 1.0], True), ([0.0, 0.0], False)])
    assert dataset_returns(sparse, 0.99, "next.reward")[1][0] == pytest.approx(0.99 ** 2)


# ----- PushT: gym-pusht's coverage from the recorded block pose of the real human demonstrations ---------------


def test_block_coverage_is_gym_pusht_coverage_on_recorded_states(pusht_zarr):
    pytest.importorskip("gym_pusht")
    from robopolicy.sim.pusht_env import GOAL_POSE, PushTEnv, block_coverage

    ds = open_dataset(pusht_zarr)
    frames = np.random.default_rng(0).choice(ds.num_frames, 100, replace=False)
    state = ds.read("state", frames).astype(np.float64)
    env = PushTEnv()
    expected = []
    for s in state:
        env.reset(options={"exact_state": s})
        expected.append(env.unwrapped._get_coverage())
    np.testing.assert_allclose(block_coverage(state[:, 2:5]), expected, atol=1e-6)
    assert block_coverage(GOAL_POSE) == pytest.approx(1.0)
    assert block_coverage(np.array([0.0, 0.0, 0.0])) == 0.0


def test_pusht_rewards_relabelled_equal_a_replay_in_gym_pusht(pusht_zarr):
    pytest.importorskip("gym_pusht")
    from robopolicy.sim.pusht_env import PushTEnv

    ds = open_dataset(pusht_zarr)
    r = pusht_coverage_rewards(ds)
    state, action = ds.read("state", np.arange(ds.num_frames)), ds.read("action", np.arange(ds.num_frames))
    env = PushTEnv()
    for ep in ds.episodes[:4]:
        env.reset(options={"exact_state": state[ep.start]})
        got = []
        for t in range(ep.start, ep.stop):
            _, reward, terminated, _, _ = env.step(action[t])
            got.append((reward, terminated))
        np.testing.assert_allclose(r.reward[ep.start:ep.stop], [g[0] for g in got], atol=1e-5)
        np.testing.assert_array_equal(r.terminal[ep.start:ep.stop], [g[1] for g in got])
    # the demonstrators' figures (pusht_env's docstring): mean max reward 0.947, 7 of 206 episodes above 0.95
    per_episode = [r.reward[ep.start:ep.stop].max() for ep in ds.episodes]
    assert np.mean(per_episode) == pytest.approx(0.947, abs=0.002)
    assert sum(r.success[ep.start:ep.stop].any() for ep in ds.episodes) == 7
