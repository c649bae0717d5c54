"""ACT (Zhao et al. 2023) config: a CVAE over action chunks with a transformer encoder/decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.common.encoders import EncoderConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class ACTConfig(PolicyConfig):
    """Defaults follow the paper / LeRobot: chunk 100, latent 32, KL weight 10, dim 512, 8 heads, FF 3200,
    4 encoder layers, 1 decoder layer (LeRobot's default; the paper's code runs 7 but only the first is used),
    z-score normalization. `horizon` is the chunk size k; actions start at the current step."""

    name: ClassVar[str] = "act"
    head_class: ClassVar[str] = "ACTHead"

    n_obs_steps: int = 1
    horizon: int = 100
    n_action_steps: int = 100
    state_norm: str = "mean_std"
    action_norm: str = "mean_std"
    dim_model: int = 512
    n_heads: int = 8
    dim_feedforward: int = 3200
    n_encoder_layers: int = 4
    n_decoder_layers: int = 1
    n_vae_encoder_layers: int = 4
    latent_dim: int = 32
    kl_weight: float = 10.0
    dropout: float = 0.1
    use_vae: bool = True
    # ResNet-18 feature map; GroupNorm because weights train from scratch offline (the paper: ImageNet + frozen BN)
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(spatial_softmax_keypoints=0))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.horizon))

    @classmethod
    def test_overrides(cls) -> dict:
        return {"horizon": 10, "n_action_steps": 10, "dim_model": 32, "n_heads": 4, "dim_feedforward": 64,
                "n_encoder_layers": 2, "n_vae_encoder_layers": 2, "dropout": 0.0}

    def __post_init__(self):
        if self.n_obs_steps != 1:
            raise ValueError("ACT conditions on the current observation only (n_obs_steps=1)")
