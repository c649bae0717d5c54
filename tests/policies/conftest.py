"""Fixtures shared by the policy tests: a small two-instruction dataset."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.data.dataset import open_dataset
from robopolicy.data.features import Feature
from robopolicy.data.writer import create_writer

LANGUAGE_FEATURES = {
    "observation.state": Feature("observation.state", "float32", (3,), "state"),
    "action": Feature("action", "float32", (2,), "action"),
}
LANGUAGE_TASKS = ["pick up the can", "open the door"]


@pytest.fixture(scope="session")
def two_task_dataset(tmp_path_factory):
    """A LeRobot v3 dataset of 4 episodes x 20 random frames (state (3,), action (2,)), tasks alternating
    LANGUAGE_TASKS."""
    root = tmp_path_factory.mktemp("two_tasks") / "ds"
    rng = np.random.default_rng(0)
    with create_writer(root, LANGUAGE_FEATURES, fps=10, format="lerobot") as w:
        for task in LANGUAGE_TASKS * 2:
            for _ in range(20):
                w.add_frame({"observation.state": rng.normal(size=3).astype(np.float32),
                             "action": rng.normal(size=2).astype(np.float32)}, task=task)
            w.save_episode()
    return open_dataset(root)
