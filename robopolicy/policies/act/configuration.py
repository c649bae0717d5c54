"""ACT (Zhao et al. 2023) config: a CVAE over action chunks with a transformer encoder/decoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from robopolicy.config_parsing import NormMode, check
from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.common.encoders import EncoderConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class ACTConfig(PolicyConfig):
    """Defaults follow the paper / LeRobot: chunk 100, latent 32, KL weight 10, dim 512, 8 heads, FF 3200,
    4 encoder layers, 1 decoder layer (LeRobot's default; the paper's code runs 7 but only the first is used),
    z-score normalization. `horizon` is the chunk size k; actions start at the current step. A "language" input
    (the dataset's task) becomes one more encoder token, read as `language` says (learned task embedding or a
    transformers text encoder)."""

    name: ClassVar[str] = "act"
    head_class: ClassVar[str] = "ACTHead"

    n_obs_steps: int = 1  # ACT conditions on the current observation only
    horizon: int = 100  # chunk size k (actions from the current step)
    n_action_steps: int = 100  # actions executed per chunk
    state_norm: NormMode = "mean_std"  # normalization of state inputs
    action_norm: NormMode = "mean_std"  # normalization of actions
    dim_model: int = 512  # transformer width
    n_heads: int = 8  # attention heads (divide dim_model)
    dim_feedforward: int = 3200  # feed-forward width
    n_encoder_layers: int = 4  # transformer encoder layers
    n_decoder_layers: int = 1  # transformer decoder layers
    n_vae_encoder_layers: int = 4  # layers of the CVAE's action-chunk encoder
    latent_dim: int = 32  # CVAE latent size
    kl_weight: float = 10.0  # weight of the KL term
    dropout: float = 0.1  # transformer dropout
    use_vae: bool = True  # train the CVAE (else a deterministic chunk transformer)
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
        super().__post_init__()
        check(self.n_obs_steps == 1, "n_obs_steps", self.n_obs_steps,
              "1 (ACT conditions on the current observation only)")
        check(self.horizon >= 1, "horizon", self.horizon, ">= 1")
        check(1 <= self.n_action_steps <= self.horizon, "n_action_steps", self.n_action_steps,
              f"in [1, horizon] ([1, {self.horizon}])")
        for name in ("dim_model", "n_heads", "dim_feedforward", "n_encoder_layers", "n_decoder_layers",
                     "n_vae_encoder_layers", "latent_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        check(self.dim_model % self.n_heads == 0, "dim_model", self.dim_model, f"divisible by n_heads ({self.n_heads})")
        check(self.kl_weight >= 0, "kl_weight", self.kl_weight, ">= 0")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
