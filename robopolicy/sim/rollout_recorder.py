"""Evaluation rollouts written as a dataset with their rewards (`robopolicy eval --record DIR`), for offline RL.

Each episode's frames hold the observation the policy saw (its input keys, as the environment gave them: images
(H, W, 3) uint8), the action executed, `next.reward` (the environment's reward after that action: robosuite's
sparse success, PushT's clip(coverage / 0.95)), `next.done` (True on the last frame) and `next.success`; the
episode is saved with its task string (the instruction, or the env task's own) and its success flag. Episodes
of one round are buffered and saved in episode order, so a dataset does not depend on --n-envs. An existing
dataset at DIR is appended to (its features must be the same); the writer's journal keeps a crash from leaving
a half-written episode behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from robopolicy.data.features import Feature
from robopolicy.rl.rewards import DONE_KEY, REWARD_KEY, SUCCESS_KEY


def dataset_format(path: str | Path, fmt: str | None = None) -> str:
    """zarr for a path ending in .zarr, else LeRobot v3 (unless `fmt` says)."""
    return fmt or ("zarr" if str(path).rstrip("/").endswith(".zarr") else "lerobot")


class RolloutRecorder:
    """Buffers frames per env slot; `save(slot, task, success)` writes one episode (the writer opens lazily)."""

    def __init__(self, root: str | Path, fps: float, obs_kinds: Mapping[str, str], action_key: str,
                 fmt: str | None = None):
        self.root, self.fps, self.fmt = Path(root), fps, dataset_format(root, fmt)
        self.obs_kinds = dict(obs_kinds)  # key -> "state" | "image"
        self.action_key = action_key
        self._writer = None
        self._frames: dict[int, list[dict[str, np.ndarray]]] = {}
        self.saved = 0

    def _features(self, frame: Mapping[str, np.ndarray]) -> dict[str, Feature]:
        feats = {}
        for key, kind in self.obs_kinds.items():
            x = np.asarray(frame[key])
            if kind == "image":
                visual = "video" if self.fmt == "lerobot" else "image"
                feats[key] = Feature(key, visual, tuple(x.shape), visual, names=["height", "width", "channels"])
            else:
                feats[key] = Feature(key, "float32", tuple(x.shape), "state")
        a = np.asarray(frame[self.action_key])
        feats[self.action_key] = Feature(self.action_key, "float32", tuple(a.shape), "action")
        feats[REWARD_KEY] = Feature(REWARD_KEY, "float32", (1,), "reward")
        feats[DONE_KEY] = Feature(DONE_KEY, "bool", (1,), "done")
        feats[SUCCESS_KEY] = Feature(SUCCESS_KEY, "bool", (1,), "done")
        return feats

    def add(self, slot: int, obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float, success: bool,
            done: bool) -> None:
        frame = {k: (np.asarray(obs[k]) if self.obs_kinds[k] == "image" else np.asarray(obs[k], np.float32))
                 for k in self.obs_kinds}
        frame[self.action_key] = np.asarray(action, np.float32)
        frame[REWARD_KEY] = np.array([reward], np.float32)
        frame[DONE_KEY] = np.array([done])
        frame[SUCCESS_KEY] = np.array([success])
        self._frames.setdefault(slot, []).append(frame)

    def save(self, slot: int, task: str | None, success: bool) -> None:
        frames = self._frames.pop(slot, [])
        if not frames:
            return
        if self._writer is None:
            from robopolicy.data.writer import create_writer

            append = self.root.exists() and any(self.root.iterdir())
            self._writer = create_writer(self.root, self._features(frames[0]), self.fps, format=self.fmt,
                                         append=append)
        for frame in frames:
            self._writer.add_frame(frame, task=task)
        self._writer.save_episode(task=task, success=success)
        self.saved += 1

    def save_in_order(self, slots: Sequence[int], task: str | None, success: Sequence[bool]) -> None:
        for slot in slots:
            self.save(slot, task, bool(success[slot]))

    def close(self) -> None:
        self._frames.clear()  # an unfinished round is dropped, never saved as if complete
        if self._writer is not None:
            self._writer.finalize()
            self._writer = None
