"""What the runtime (simulation evaluation, later hardware deployment) needs from a policy.

Any object with a `config` and `predict_chunk` works; `robopolicy.policies.policy.Policy` is the real one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch


class FeatureSpecLike(Protocol):
    """One input feature: kind "state" (shape (D,) or any numeric shape) or "image" (shape (C, H, W), uint8)."""

    shape: tuple[int, ...]
    kind: str


class PolicyConfigLike(Protocol):
    """The windows a policy was trained with.

    n_obs_steps: observation history T_o; horizon: chunk length H; n_action_steps: actions executed per chunk
    (receding horizon); action_delta_indices: time offset (in control steps, relative to the current step) of
    each chunk index, length H (diffusion: starts at -(T_o - 1); ACT: starts at 0).
    """

    n_obs_steps: int
    horizon: int
    n_action_steps: int
    input_features: Mapping[str, Any]

    @property
    def action_delta_indices(self) -> list[int]: ...


@runtime_checkable
class ChunkPolicy(Protocol):
    """A policy that maps raw observation windows to an unnormalized action chunk.

    predict_chunk(obs): obs = {dataset key: (B, T_o, ...)} raw (unnormalized) windows, oldest first, images uint8
    (B, T_o, C, H, W); returns float actions (B, H, D) in the dataset's action units. Evaluation also calls
    `reset()` at the start of every batch of episodes when the policy defines it.
    """

    config: Any

    def predict_chunk(self, obs: dict[str, torch.Tensor]) -> torch.Tensor: ...
