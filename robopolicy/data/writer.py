"""One `EpisodeWriter` API for every format: add_frame, save_episode, discard_episode, finalize.

Crash safety contract (all formats): frames of the current episode are buffered outside the dataset's
visible state; `save_episode` makes an episode visible atomically (the episode index is updated last), so a
crash mid-episode leaves every earlier episode readable and no half episode visible. Opening a non-empty
directory needs `overwrite=True` (wipe) or `append=True` (continue an existing dataset of the same features).
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.data.errors import DatasetError, DatasetExistsError
from robopolicy.data.features import Feature

# Entries a dataset directory may hold (LeRobot v3 and zarr v2/v3); anything else means "not a dataset".
_DATASET_ENTRIES = {"meta", "data", "videos", "images", ".zgroup", ".zattrs", ".zmetadata", "zarr.json"}


class EpisodeWriter(ABC):
    """Write episodes frame by frame.

    features: the per-frame features to record (excluding LeRobot's bookkeeping columns timestamp /
      frame_index / episode_index / index / task_index, which writers fill in). Visual features have
      shape (H, W, C) and take uint8 HWC frames in `add_frame`.
    fps: frames per second of the recording.
    """

    def __init__(self, root: str | Path, features: Mapping[str, Feature], fps: float):
        self.root = Path(root)
        self.features = dict(features)
        self.fps = fps
        self._buffer: dict[str, list[np.ndarray]] = {k: [] for k in self.features}
        self._task: str | None = None

    @property
    def frames_in_episode(self) -> int:
        return len(next(iter(self._buffer.values()))) if self._buffer else 0

    def add_frame(self, frame: Mapping[str, Any], task: str | None = None) -> None:
        """Append one frame: {key: array with the feature's shape}; `task` is the episode's task string."""
        missing = set(self.features) - set(frame)
        if missing:
            raise KeyError(f"add_frame: frame is missing features {sorted(missing)}")
        for key, feat in self.features.items():
            value = np.asarray(frame[key])
            if feat.is_visual:
                if value.shape != feat.shape or value.dtype != np.uint8:
                    raise ValueError(
                        f"add_frame: {key!r} must be uint8 {feat.shape} (H, W, C), got {value.dtype} {value.shape}"
                    )
            elif value.size != int(np.prod(feat.shape)):
                raise ValueError(f"add_frame: {key!r} must have shape {feat.shape}, got {value.shape}")
            self._buffer[key].append(value.reshape(feat.shape) if not feat.is_visual else value)
        if task is not None:
            self._task = task

    def discard_episode(self) -> None:
        """Drop the frames buffered for the current episode."""
        for v in self._buffer.values():
            v.clear()
        self._task = None

    def _drop_unsaved(self) -> None:
        """At finalize: warn about and drop frames added since the last save_episode."""
        if self.frames_in_episode:
            import warnings

            warnings.warn(
                f"{self.root}: finalize() dropped {self.frames_in_episode} frames never saved with save_episode()",
                stacklevel=3,
            )
            self.discard_episode()

    def _take_episode(self) -> tuple[dict[str, np.ndarray], str | None]:
        n = self.frames_in_episode
        if n == 0:
            raise ValueError("save_episode: no frames were added since the last save")
        data = {k: np.stack(v) for k, v in self._buffer.items()}
        task = self._task
        self.discard_episode()
        return data, task

    @abstractmethod
    def save_episode(self, task: str | None = None, success: bool | None = None) -> int:
        """Write the buffered frames as one episode; returns its episode index."""

    @abstractmethod
    def finalize(self) -> None:
        """Flush everything and write final metadata. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.finalize()
        else:
            self.discard_episode()
            self.finalize()


def prepare_root(root: Path, *, overwrite: bool, append: bool) -> bool:
    """Check the target directory; returns True when an existing dataset should be continued.

    Empty or missing: fine (created). Non-empty: needs `append=True` (continue) or `overwrite=True` (the
    old dataset is deleted; refused when the directory does not look like a dataset, so a mistyped path
    never wipes unrelated files).
    """
    if overwrite and append:
        raise ValueError("pass either overwrite=True or append=True, not both")
    if root.exists() and not root.is_dir():
        raise DatasetExistsError(f"{root}: exists and is not a directory")
    entries = [p for p in root.iterdir()] if root.exists() else []
    if not entries:
        root.mkdir(parents=True, exist_ok=True)
        return False
    if append:
        return True
    if not overwrite:
        raise DatasetExistsError(
            f"{root}: directory is not empty; pass overwrite=True to replace it or append=True to add episodes"
        )
    foreign = sorted(p.name for p in entries if p.name not in _DATASET_ENTRIES and not p.name.startswith("."))
    if foreign:
        raise DatasetError(
            f"{root}: refusing to overwrite a directory that does not look like a dataset "
            f"(unexpected entries {foreign[:5]}); delete it yourself or choose another path"
        )
    shutil.rmtree(root)
    root.mkdir(parents=True)
    return False


def create_writer(
    root: str | Path,
    features: Mapping[str, Feature],
    fps: float,
    *,
    format: str = "lerobot",
    overwrite: bool = False,
    append: bool = False,
    **options,
) -> EpisodeWriter:
    """Make a writer for `format` "lerobot" (v3.0) or "zarr" (diffusion-policy layout)."""
    if format == "zarr":
        from robopolicy.data.zarr_writer import ZarrWriter

        return ZarrWriter(root, features, fps, overwrite=overwrite, append=append, **options)
    if format in ("lerobot", "lerobot_v3"):
        from robopolicy.data.lerobot_writer import LeRobotWriter

        return LeRobotWriter(root, features, fps, overwrite=overwrite, append=append, **options)
    raise ValueError(f"unknown dataset format {format!r}; use 'lerobot' or 'zarr'")
