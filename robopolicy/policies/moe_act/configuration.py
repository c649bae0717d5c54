"""MoE-ACT (Mazza, Rodriguez et al., arXiv 2601.21971; the authors' VersatIL `PhaseACT`) config: ACT's CVAE with a
phase head on every decoded action token and K phase-routed experts for position and for the gripper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from robopolicy.config_parsing import ConfigError, check
from robopolicy.data.features import PHASE_KEY
from robopolicy.policies.act.configuration import ACTConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class MoEACTConfig(ACTConfig):
    """Defaults follow the authors' `phase_act` preset: embedding 256, 8 heads, FF 512, 6 encoder and 6 decoder
    layers, dropout 0.1, chunk 10, KL weight 100; phase CE 0.1 (label smoothing 0.2), routing-entropy bonus 0.1,
    load balance off, learnable routing temperature starting at 10.

    Phase labels: the per-frame int64 dataset feature `phase_key` (shape (1,), its `names` the phase vocabulary),
    loaded at the action offsets (one label per chunk step) and needed in training only; a negative label marks an
    unlabelled frame (left out of the phase loss). `num_phases` K is the number of the feature's names: recorded
    from the dataset when a policy is created (`resolved`), or given; 0 leaves it unset and building the head
    refuses it.

    Gripper dims (`gripper_dims`, negative indices count from the end) are trained with BCE on the normalized
    target: closed (1) where it is above `gripper_threshold` (0 = above the dataset mean under mean_std, the range's
    midpoint under min_max: the closed value of a binary gripper either way). The chunk's gripper value is the
    expected normalized command, open + sigmoid(logit) * (closed - open), with the open / closed levels the mean
    normalized targets of each class seen in training (buffers saved with the weights).
    """

    name: ClassVar[str] = "moe_act"
    head_class: ClassVar[str] = "MoEACTHead"

    horizon: int = 10  # chunk size (the authors' prediction horizon)
    n_action_steps: int = 10  # actions executed per chunk
    dim_model: int = 256  # transformer width
    dim_feedforward: int = 512  # feed-forward width
    n_encoder_layers: int = 6  # transformer encoder layers
    n_decoder_layers: int = 6  # transformer decoder layers
    kl_weight: float = 100.0  # weight of the KL term (ACT: 10)
    num_phases: int = 0  # K phases = experts per MoE head (0: read from the dataset's phase feature at creation)
    phase_key: str = PHASE_KEY  # per-frame int64 phase-label feature; "" = no phase supervision (free routing)
    gripper_dims: tuple[int, ...] = (-1,)  # action dims trained as a binary gripper (BCE); () = every dim is position
    gripper_threshold: float = 0.0  # normalized gripper target above which it counts as closed (BCE target 1)
    phase_hidden: int = 256  # hidden width of the phase head MLP
    position_expert_hidden: int = 256  # hidden width of each position expert MLP
    gripper_expert_hidden: int = 128  # hidden width of each gripper expert MLP
    initial_temperature: float = 10.0  # routing temperature T at initialization (learned, kept positive: log T)
    position_weight: float = 1.0  # weight of the L1 on position dims
    gripper_weight: float = 0.05  # weight of the gripper BCE
    phase_weight: float = 0.1  # weight of the phase cross-entropy
    label_smoothing: float = 0.2  # label smoothing of the phase cross-entropy
    entropy_weight: float = 0.1  # phase-entropy bonus: loss -= weight * H(softmax(phase logits)) (avoids collapse)
    balance_weight: float = 0.0  # weight of the Switch load balance K * sum_k f_k P_k (logged either way)
    phase_stop_gradient: bool = True  # the phase head reads detached action tokens: phase CE trains it alone

    def __post_init__(self):
        super().__post_init__()
        check(self.num_phases >= 0, "num_phases", self.num_phases,
              ">= 1 (0: not set yet; the head refuses it), the number of names of the dataset's phase feature")
        for name in ("phase_hidden", "position_expert_hidden", "gripper_expert_hidden"):
            check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        check(self.initial_temperature > 0, "initial_temperature", self.initial_temperature, "> 0")
        for name in ("position_weight", "gripper_weight", "phase_weight", "entropy_weight", "balance_weight"):
            check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)")
        features = {**self.input_features, **self.output_features}
        check(self.phase_key not in features, "phase_key", self.phase_key,
              f"a key other than the policy's features {sorted(features)}")
        if self.output_features:
            d = self.action_dim
            check(all(-d <= i < d for i in self.gripper_dims), "gripper_dims", self.gripper_dims,
                  f"indices of the {d} action dims (negative from the end)")
            check(len({i % d for i in self.gripper_dims}) == len(self.gripper_dims), "gripper_dims",
                  self.gripper_dims, "distinct action dims")

    @staticmethod
    def phase_names(dataset, key: str = PHASE_KEY) -> tuple[str, ...]:
        """The phase vocabulary of a dataset's phase-label feature (its `names`); num_phases = len of it."""
        names = vocabulary(dataset.feature(key).names)
        if not names:
            raise ValueError(f"feature {key!r} of {dataset.root} has no `names`: the phase vocabulary is unknown")
        return names

    def resolved(self, tasks: Sequence[str] = (), features: Mapping[str, Any] | None = None) -> MoEACTConfig:
        """Also records K = the number of names of the dataset's phase feature when num_phases is not set."""
        out = super().resolved(tasks, features)
        feature = (features or {}).get(self.phase_key) if self.phase_key else None
        if out.num_phases or feature is None:
            return out
        names = vocabulary(feature.names)
        if not names:
            raise ConfigError(f"the dataset's phase feature {self.phase_key!r} has no `names` (the phase "
                              "vocabulary): set policy.num_phases")
        return out.replace(num_phases=len(names))

    @property
    def gripper_index(self) -> list[int]:
        """The gripper action dims, ascending (non-negative)."""
        return sorted(i % self.action_dim for i in self.gripper_dims)

    @property
    def position_index(self) -> list[int]:
        """Every other action dim, ascending: trained with the L1."""
        grip = set(self.gripper_index)
        return [i for i in range(self.action_dim) if i not in grip]

    def delta_indices(self) -> dict[str, list[int]]:
        """ACT's windows plus the phase labels at the action offsets (one label per chunk step)."""
        out = super().delta_indices()
        if self.phase_key:
            out[self.phase_key] = self.action_delta_indices
        return out

    def fake_batch(self, batch_size: int = 2, generator: torch.Generator | None = None) -> dict[str, Any]:
        """ACT's fake batch plus random phase labels (B, H, 1) int64 in [0, K) and their pad mask."""
        if not self.phase_key:
            return super().fake_batch(batch_size, generator)
        batch = self.replace(phase_key="").fake_batch(batch_size, generator)
        steps = len(self.action_delta_indices)
        batch[self.phase_key] = torch.randint(0, self.num_phases, (batch_size, steps, 1), generator=generator)
        batch[f"{self.phase_key}_is_pad"] = torch.zeros(batch_size, steps, dtype=torch.bool)
        return batch

    @classmethod
    def test_overrides(cls) -> dict:
        return {**super().test_overrides(), "n_decoder_layers": 2, "num_phases": 3, "phase_hidden": 16,
                "position_expert_hidden": 16, "gripper_expert_hidden": 8}


def vocabulary(names: Any) -> tuple[str, ...]:
    """A phase feature's `names` as the tuple of phase names ((): none); LeRobot's {"axis": [...]} unwrapped."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return tuple(str(n) for n in names) if names else ()
