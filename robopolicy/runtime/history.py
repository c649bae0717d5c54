"""Observation history: the last T_o observations of B environments, as the windows a policy expects.

At the first step of an episode the window repeats the initial observation T_o times, which matches the
training-time edge padding of `WindowSampler` (frames before an episode's start repeat its first frame).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import numpy as np
import torch


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.from_numpy(np.ascontiguousarray(value))


class ObservationHistory:
    """Keeps {key: (B, ...)} observations; `window()` returns {key: (B, T_o, ...)}, oldest first."""

    def __init__(self, n_obs_steps: int):
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        self.n_obs_steps = n_obs_steps
        self._frames: deque[dict[str, torch.Tensor]] = deque(maxlen=n_obs_steps)

    def reset(self, obs: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Start an episode: the window becomes T_o copies of `obs`."""
        frame = {k: _as_tensor(v) for k, v in obs.items()}
        self._frames.clear()
        for _ in range(self.n_obs_steps):
            self._frames.append(frame)

    def push(self, obs: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Append the newest observation (same keys and shapes as at reset), dropping the oldest."""
        if not self._frames:
            raise RuntimeError("ObservationHistory.push() before reset()")
        first = self._frames[0]
        frame = {k: _as_tensor(v) for k, v in obs.items()}
        if frame.keys() != first.keys():
            raise KeyError(f"observation keys changed: had {sorted(first)}, got {sorted(frame)}")
        for k, v in frame.items():
            if v.shape != first[k].shape:
                raise ValueError(f"observation {k!r} changed shape from {tuple(first[k].shape)} to {tuple(v.shape)}")
        self._frames.append(frame)

    def window(self) -> dict[str, torch.Tensor]:
        if not self._frames:
            raise RuntimeError("ObservationHistory.window() before reset()")
        return {k: torch.stack([f[k] for f in self._frames], dim=1) for k in self._frames[0]}
