"""Queued actions indexed by absolute control step, so a chunk that arrives late merges at the right place.

A chunk predicted from the observation of step s has entry j for step s + action_delta_indices[j], i.e.
`first_step = s - now`. When it arrives at step t (t - s = the inference delay in steps), entries for steps
before t are dropped (they were executed from the previous chunk meanwhile) and the queue continues with the
new chunk's action for step t: lerobot's `ActionQueue.merge` / RTC's "execute new[d:]".
"""

from __future__ import annotations

import numpy as np


class ActionQueue:
    """Actions (B, n, D) for consecutive steps start .. start + n - 1."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._actions: np.ndarray | None = None
        self._start = 0

    @property
    def start_step(self) -> int:
        return self._start

    @property
    def end_step(self) -> int:
        """One past the last queued step."""
        return self._start + (0 if self._actions is None else self._actions.shape[1])

    def remaining(self, step: int) -> int:
        """How many queued actions are for steps >= step."""
        return max(0, self.end_step - max(step, self._start)) if self._actions is not None else 0

    def actions_from(self, step: int) -> np.ndarray | None:
        """Queued actions (B, r, D) for steps step, step + 1, ... (None when there are none)."""
        if self.remaining(step) == 0 or step < self._start:
            return None
        return self._actions[:, step - self._start :]

    def merge(self, chunk, first_step: int, current_step: int, blend: float | None = None) -> int:
        """Merge chunk (B, L, D), whose entry i is for step first_step + i (first_step <= current_step), at
        `current_step`, the next step to execute. Entries for steps < current_step are dropped as stale; from
        current_step on the chunk replaces the queue (blend=None), or where both have an action it becomes
        blend * new + (1 - blend) * old (lerobot's weighted_average uses 0.7). Queued actions beyond the chunk's
        end are discarded: a newer plan supersedes them. Returns how many chunk entries were dropped as stale."""
        chunk = np.asarray(chunk)
        if chunk.ndim != 3:
            raise ValueError(f"ActionQueue.merge: chunk must be (B, L, D), got shape {chunk.shape}")
        if first_step > current_step:
            raise ValueError(f"ActionQueue.merge: chunk starts at step {first_step}, after the current step "
                             f"{current_step}; a chunk is predicted from an observation that was already taken")
        if blend is not None and not 0.0 <= blend <= 1.0:
            raise ValueError(f"ActionQueue.merge: blend must be in [0, 1], got {blend}")
        if self._actions is not None and self._actions.shape[::2] != chunk.shape[::2]:
            raise ValueError(f"ActionQueue.merge: chunk batch/action dims {chunk.shape[::2]} differ from the queued "
                             f"{self._actions.shape[::2]}")
        stale = min(chunk.shape[1], current_step - first_step)
        new = chunk[:, stale:]
        old = self.actions_from(current_step)
        if new.shape[1] == 0:  # entirely stale: keep executing what is queued
            self._drop_before(current_step)
            return stale
        body = new.astype(new.dtype if old is None else np.result_type(new, old), copy=True)
        if blend is not None and old is not None:
            n = min(old.shape[1], body.shape[1])
            body[:, :n] = blend * body[:, :n] + (1.0 - blend) * old[:, :n]
        self._actions, self._start = body, current_step
        return stale

    def pop(self, step: int) -> np.ndarray | None:
        """The action (B, D) for `step` (None if none is queued); forgets it and everything before it."""
        if self._actions is None or not self._start <= step < self.end_step:
            if self._actions is not None and step >= self.end_step:
                self.reset()
            return None
        action = self._actions[:, step - self._start].copy()
        self._drop_before(step + 1)
        return action

    def _drop_before(self, step: int) -> None:
        if self._actions is None or step <= self._start:
            return
        self._actions = self._actions[:, step - self._start :]
        self._start = step
        if self._actions.shape[1] == 0:
            self.reset()
