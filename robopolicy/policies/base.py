"""The policy-head contract: a frozen config that declares its windows and can fake inputs, and a module with
exactly two public duties, `loss(batch)` and `sample(obs)`.

Everything else (action queues, temporal ensembling, real-time chunking) lives in `robopolicy.runtime`;
normalization lives in the policy wrapper, so heads see normalized tensors only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

# Sampling guidance hook (real-time chunking, robopolicy.runtime.rtc): guide(fn, x, t) returns what the head
# uses instead of fn(x) at denoising time t, where fn(x) evaluates the network (velocity or noise) at t.
Guide = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureSpec:
    """Shape of one input or output feature as the head sees it: state/action (D,), image (C, H, W)."""

    shape: tuple[int, ...]
    kind: str  # "state" | "image" | "action" | "language"


@dataclass(frozen=True)
class PolicyConfig:
    """Base of every head's config. Subclasses are frozen dataclasses registered with `@register_policy`.

    input_features / output_features: {dataset key: FeatureSpec}; exactly one output of kind "action".
    n_obs_steps: observation history T_o; horizon: predicted chunk length H.
    """

    name: ClassVar[str] = ""
    head_class: ClassVar[str] = ""  # class name in robopolicy.policies.<name>.modeling
    input_features: dict[str, FeatureSpec] = field(default_factory=dict)
    output_features: dict[str, FeatureSpec] = field(default_factory=dict)
    n_obs_steps: int = 1
    horizon: int = 16
    n_action_steps: int = 8
    state_norm: str = "min_max"  # Normalizer mode for state inputs (see robopolicy.data.normalize)
    action_norm: str = "min_max"

    @property
    def action_key(self) -> str:
        keys = [k for k, f in self.output_features.items() if f.kind == "action"]
        if len(keys) != 1:
            raise ValueError(f"{type(self).__name__}: expected exactly one action output, got {keys}")
        return keys[0]

    @property
    def action_dim(self) -> int:
        return self.output_features[self.action_key].shape[-1]

    @property
    def obs_delta_indices(self) -> list[int]:
        """Frame offsets of the observation window, oldest first, ending at the current frame (0)."""
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        """Frame offsets of the predicted action chunk (diffusion_policy: starts at the first obs step)."""
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))

    def delta_indices(self) -> dict[str, list[int]]:
        """What the WindowSampler must load for this head."""
        out = {k: self.obs_delta_indices for k in self.input_features}
        out[self.action_key] = self.action_delta_indices
        return out

    def fake_batch(self, batch_size: int = 2, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A normalized training batch with the right shapes (images float in [0, 1])."""
        batch: dict[str, torch.Tensor] = {}
        for key, steps in self.delta_indices().items():
            spec = self.input_features.get(key) or self.output_features[key]
            shape = (batch_size, len(steps), *spec.shape)
            batch[key] = (
                torch.rand(shape, generator=generator)
                if spec.kind == "image"
                else torch.randn(shape, generator=generator)
            )
            batch[f"{key}_is_pad"] = torch.zeros(batch_size, len(steps), dtype=torch.bool)
        return batch

    def fake_obs(self, batch_size: int = 2, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        batch = self.fake_batch(batch_size, generator)
        return {k: v for k, v in batch.items() if k in self.input_features}


@dataclass
class LossOutput:
    """per_sample: loss per sample (B,) or per chunk step (B, H), so PTR weights / PA-RL targets plug in."""

    per_sample: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        return self.per_sample.mean()


class PolicyHead(nn.Module, ABC):
    """A policy head. Inputs and outputs are normalized; images are float (B, T_o, C, H, W) in [0, 1]."""

    config_class: ClassVar[type[PolicyConfig]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if ABC not in cls.__bases__ and not getattr(cls, "config_class", None):
            raise TypeError(f"{cls.__name__} must set `config_class`")

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config

    @abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        """Training loss on a normalized batch of windows."""

    @abstractmethod
    def sample(self, obs: dict[str, torch.Tensor], *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A normalized action chunk (B, H, D) for observation windows {key: (B, T_o, ...)}."""
