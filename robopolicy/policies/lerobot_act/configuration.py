"""LeRobot's ACT, layer for layer: the head that `robopolicy import-lerobot` turns LeRobot ACT checkpoints into.

Same fields and defaults as LeRobot 0.4's ACTConfig (chunk_size is `horizon`); its weights load by their LeRobot
names. Differences from robopolicy's own `act` head: DETR-style positions added to queries and keys in every
layer, a torchvision ResNet with frozen BatchNorm, and LeRobot's image normalization inside the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from robopolicy.config_parsing import NormMode, check
from robopolicy.policies.common.lerobot_parts import LeRobotHeadConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class LeRobotACTConfig(LeRobotHeadConfig):
    """LeRobot ACTConfig's architecture fields; `temporal_ensemble_coeff` is kept for the runtime's ensembling."""

    name: ClassVar[str] = "lerobot_act"
    head_class: ClassVar[str] = "LeRobotACTHead"

    n_obs_steps: int = 1  # ACT reads the current observation only
    horizon: int = 100  # LeRobot's chunk_size
    n_action_steps: int = 100  # actions executed per chunk
    state_norm: NormMode = "mean_std"  # LeRobot's STATE mapping
    action_norm: NormMode = "mean_std"  # LeRobot's ACTION mapping
    replace_final_stride_with_dilation: bool = False  # dilate the ResNet's last stage instead of striding
    pre_norm: bool = False  # pre-norm transformer layers
    dim_model: int = 512  # transformer width
    n_heads: int = 8  # attention heads
    dim_feedforward: int = 3200  # feed-forward width
    feedforward_activation: Literal["relu", "gelu", "glu"] = "relu"  # feed-forward activation
    n_encoder_layers: int = 4  # transformer encoder layers
    n_decoder_layers: int = 1  # transformer decoder layers
    use_vae: bool = True  # train the CVAE objective
    latent_dim: int = 32  # CVAE latent size
    n_vae_encoder_layers: int = 4  # layers of the CVAE encoder
    temporal_ensemble_coeff: float | None = None  # LeRobot's temporal ensembling coefficient (None: off)
    dropout: float = 0.1  # transformer dropout
    kl_weight: float = 10.0  # weight of the KL term

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.horizon))

    @classmethod
    def test_overrides(cls) -> dict:
        return {"horizon": 8, "n_action_steps": 8, "dim_model": 32, "n_heads": 4, "dim_feedforward": 64,
                "n_encoder_layers": 2, "n_vae_encoder_layers": 2, "latent_dim": 8, "dropout": 0.0}

    def __post_init__(self):
        super().__post_init__()
        check(self.n_obs_steps == 1, "n_obs_steps", self.n_obs_steps, "1 (LeRobot's ACT reads one observation)")
        check(1 <= self.n_action_steps <= self.horizon, "n_action_steps", self.n_action_steps,
              f"in [1, horizon] ([1, {self.horizon}])")
        check(self.dim_model % self.n_heads == 0, "dim_model", self.dim_model, f"divisible by n_heads ({self.n_heads})")
        for name in ("dim_feedforward", "n_encoder_layers", "n_decoder_layers", "latent_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
