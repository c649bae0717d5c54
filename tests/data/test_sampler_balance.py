"""Task- and episode-balanced window sampling: every task is drawn equally often whatever its episodes' lengths,
deterministically per (seed, step) so a resumed run sees the same batches."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.data.dataset import open_dataset
from robopolicy.data.features import Feature
from robopolicy.data.sampler import EpochBatchSampler, WindowSampler
from robopolicy.data.writer import create_writer

FEATURES = {"observation.state": Feature("observation.state", "float32", (2,), "state"),
            "action": Feature("action", "float32", (2,), "action")}


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    """'short' episodes of 10 frames (x3) and 'long' ones of 90 (x1): 30 vs 90 frames."""
    root = tmp_path_factory.mktemp("balance") / "ds"
    with create_writer(root, FEATURES, fps=10, format="lerobot") as w:
        for task, n in (("short", 10), ("long", 90), ("short", 10), ("short", 10)):
            for i in range(n):
                w.add_frame({"observation.state": np.full(2, i, np.float32), "action": np.zeros(2, np.float32)},
                            task=task)
            w.save_episode()
    return open_dataset(root)


def _task_of(ds, windows):
    episode_of = np.repeat(np.arange(ds.num_episodes), [e.length for e in ds.episodes])
    return np.array([ds.episodes[episode_of[i]].tasks[0] for i in range(len(windows))])


@pytest.mark.parametrize("balance,short_share", [("frames", 0.25), ("tasks", 0.5), ("episodes", 0.75)])
def test_balance_sets_how_often_each_task_is_drawn(unbalanced, balance, short_share):
    windows = WindowSampler(unbalanced, {"action": [0, 1]})
    weights = windows.window_weights(balance)
    assert weights is None if balance == "frames" else abs(weights.sum() - 1) < 1e-12
    batches = EpochBatchSampler(len(windows), 40, seed=3, weights=weights)
    tasks = _task_of(unbalanced, windows)
    drawn = np.concatenate([tasks[batches.batch(step)] for step in range(200)])
    assert abs((drawn == "short").mean() - short_share) < 0.03
    resumed = EpochBatchSampler(len(windows), 40, seed=3, weights=weights, start_step=57)
    assert next(iter(resumed)) == batches.batch(57)  # a pure function of (seed, step)


def test_unknown_balance_is_an_error(unbalanced):
    with pytest.raises(ValueError, match="balance must be"):
        WindowSampler(unbalanced, {"action": [0]}).window_weights("task")
