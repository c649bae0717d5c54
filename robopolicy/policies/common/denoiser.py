"""What diffusion and flow heads share: the observation encoder and the conditional network over chunks.

`ChunkDenoiser.condition(obs)` encodes the observation window once -> (B, cond_dim);
`ChunkDenoiser(x, t, cond)` predicts noise / velocity for a noisy chunk x (B, H, D) at time t (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.policies.base import LossOutput, PolicyConfig
from robopolicy.policies.common.encoders import EncoderConfig, ObsEncoder
from robopolicy.policies.common.transformer1d import TransformerDenoiser
from robopolicy.policies.common.unet1d import ConditionalUnet1D


@dataclass(frozen=True)
class UnetConfig:
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    predict_scale: bool = True


@dataclass(frozen=True)
class TransformerConfig:
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.01
    causal: bool = True


@dataclass(frozen=True)
class DenoiserConfig:
    """backbone: "unet" (1-D UNet with FiLM) or "transformer"."""

    backbone: Literal["unet", "transformer"] = "unet"
    unet: UnetConfig = field(default_factory=UnetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass(frozen=True)
class DenoisingHeadConfig(PolicyConfig):
    """The fields diffusion and flow heads share (the diffusion_policy defaults: T_o 2, H 16, 8 executed).

    denoiser: observation encoder + conditional network; num_inference_steps: denoising / integration steps;
    minibatch_k: Level-2 minibatching (Mini-Diffuser): each encoded observation is reused for K noised action
    samples; mask_padding: drop padded chunk steps from the loss (diffusion_policy trains on edge-repeated pads).
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    num_inference_steps: int = 10
    minibatch_k: int = 1
    mask_padding: bool = False

    @classmethod
    def test_overrides(cls) -> dict:
        return {"denoiser": DenoiserConfig(unet=UnetConfig(down_dims=(32, 64), step_embed_dim=32))}


def repeat_for_minibatch(cond: torch.Tensor, actions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Level-2 minibatching: reuse each encoded observation for k noised action samples (B -> B*k)."""
    if k == 1:
        return cond, actions
    return cond.repeat_interleave(k, 0), actions.repeat_interleave(k, 0)


def chunk_mse(pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor | None, k: int) -> LossOutput:
    """Per-step MSE (B, H) averaged over D and the k samples of each observation; `pad` (B, H) zeroes padded
    steps and becomes the loss's valid mask."""
    per_step = F.mse_loss(pred, target, reduction="none").mean(-1)  # (B*k, H)
    if pad is not None:
        per_step = per_step * (~pad).repeat_interleave(k, 0).to(per_step.dtype)
    per_step = per_step.view(-1, k, per_step.shape[-1]).mean(1)
    return LossOutput(per_step, valid=None if pad is None else ~pad, metrics={"mse": per_step.detach().mean()})


class ChunkDenoiser(nn.Module):
    def __init__(self, config: PolicyConfig, cfg: DenoiserConfig, time_scale: float = 1.0):
        super().__init__()
        self.encoder = ObsEncoder(config.input_features, cfg.encoder)
        cond_dim = self.encoder.out_dim * config.n_obs_steps
        if cfg.backbone == "unet":
            u = cfg.unet
            self.net = ConditionalUnet1D(
                config.action_dim, cond_dim, u.down_dims, u.kernel_size, u.n_groups, u.step_embed_dim, u.predict_scale
            )
        elif cfg.backbone == "transformer":
            t = cfg.transformer
            self.net = TransformerDenoiser(
                config.action_dim, self.encoder.out_dim, config.horizon, config.n_obs_steps,
                t.n_layer, t.n_head, t.n_emb, t.p_drop_emb, t.p_drop_attn, t.causal,
            )
        else:
            raise ValueError(f"unknown backbone {cfg.backbone!r}; use 'unet' or 'transformer'")
        # flow time t in [0, 1] is scaled so the sinusoidal embedding sees the same range as diffusion steps
        self.time_scale = time_scale

    def condition(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs windows {key: (B, T_o, ...)} -> (B, T_o * F)."""
        return self.encoder(obs).flatten(1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(x, t * self.time_scale if self.time_scale != 1.0 else t, cond)
