"""What diffusion and flow heads share: the observation encoder and the conditional network over chunks.

`ChunkDenoiser.condition(obs)` encodes the observation window (and the instruction, for a language input) once
-> (B, cond_dim);
`ChunkDenoiser(x, t, cond)` predicts noise / velocity for a noisy chunk x (B, H, D) at time t (B,).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.config_parsing import NormMode, check
from robopolicy.policies.base import LossOutput, PolicyConfig
from robopolicy.policies.common.encoders import EncoderConfig, ObsEncoder
from robopolicy.policies.common.text_encoder import LanguageEncoder
from robopolicy.policies.common.transformer1d import TransformerDenoiser
from robopolicy.policies.common.unet1d import ConditionalUnet1D


@dataclass(frozen=True)
class UnetConfig:
    down_dims: tuple[int, ...] = (256, 512, 1024)  # channels per level; the horizon must divide by 2**(levels-1)
    kernel_size: int = 5  # temporal convolution width (odd)
    n_groups: int = 8  # GroupNorm groups (divide every down_dims entry)
    step_embed_dim: int = 128  # sinusoidal timestep embedding size (even)
    predict_scale: bool = True  # FiLM predicts scale and bias (else bias only)

    def __post_init__(self):
        check(len(self.down_dims) > 0 and min(self.down_dims) >= 1, "down_dims", self.down_dims,
              "a non-empty list of channel counts >= 1")
        check(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size", self.kernel_size, "odd and >= 1")
        check(self.n_groups >= 1, "n_groups", self.n_groups, ">= 1")
        check(all(d % self.n_groups == 0 for d in self.down_dims), "down_dims", self.down_dims,
              f"divisible by n_groups ({self.n_groups})")
        check(self.step_embed_dim >= 2 and self.step_embed_dim % 2 == 0, "step_embed_dim", self.step_embed_dim,
              "even and >= 2")


@dataclass(frozen=True)
class TransformerConfig:
    n_layer: int = 8  # decoder layers
    n_head: int = 4  # attention heads (divide n_emb)
    n_emb: int = 256  # token width
    p_drop_emb: float = 0.0  # dropout on the input embeddings
    p_drop_attn: float = 0.01  # dropout in the attention layers
    causal: bool = True  # action tokens attend to earlier ones only

    def __post_init__(self):
        check(self.n_layer >= 1, "n_layer", self.n_layer, ">= 1")
        check(self.n_head >= 1, "n_head", self.n_head, ">= 1")
        check(self.n_emb >= 2 and self.n_emb % 2 == 0, "n_emb", self.n_emb, "even and >= 2")
        check(self.n_emb % self.n_head == 0, "n_emb", self.n_emb, f"divisible by n_head ({self.n_head})")
        check(0 <= self.p_drop_emb < 1, "p_drop_emb", self.p_drop_emb, "in [0, 1)")
        check(0 <= self.p_drop_attn < 1, "p_drop_attn", self.p_drop_attn, "in [0, 1)")


@dataclass(frozen=True)
class DenoiserConfig:
    backbone: Literal["unet", "transformer"] = "unet"  # the conditional network: 1-D UNet with FiLM, or transformer
    unet: UnetConfig = field(default_factory=UnetConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


@dataclass(frozen=True)
class DenoisingHeadConfig(PolicyConfig):
    """The fields diffusion and flow heads share (the diffusion_policy defaults: T_o 2, H 16, 8 executed)."""

    n_obs_steps: int = 2  # observation history T_o
    horizon: int = 16  # predicted chunk length H (starts at the oldest observation step)
    n_action_steps: int = 8  # actions executed per chunk, from the current step
    state_norm: NormMode = "min_max"  # normalization of state inputs
    action_norm: NormMode = "min_max"  # normalization of actions
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)  # observation encoder + conditional network
    num_inference_steps: int = 10  # denoising / integration steps at inference
    minibatch_k: int = 1  # Level-2 minibatching (Mini-Diffuser): noised action samples per encoded observation
    mask_padding: bool = False  # drop padded chunk steps from the loss (diffusion_policy trains on edge-repeated pads)

    def __post_init__(self):
        super().__post_init__()
        check(self.n_obs_steps >= 1, "n_obs_steps", self.n_obs_steps, ">= 1")
        check(self.horizon >= 1, "horizon", self.horizon, ">= 1")
        check(self.n_action_steps >= 1, "n_action_steps", self.n_action_steps, ">= 1")
        check(self.n_obs_steps - 1 + self.n_action_steps <= self.horizon, "n_action_steps", self.n_action_steps,
              f"<= horizon - n_obs_steps + 1 ({self.horizon - self.n_obs_steps + 1}): the chunk starts at the "
              "oldest observation step")
        levels = len(self.denoiser.unet.down_dims)
        check(self.denoiser.backbone != "unet" or self.horizon % 2 ** (levels - 1) == 0, "horizon", self.horizon,
              f"divisible by {2 ** (levels - 1)} for a {levels}-level UNet (denoiser.unet.down_dims)")
        check(self.num_inference_steps >= 1, "num_inference_steps", self.num_inference_steps, ">= 1")
        check(self.minibatch_k >= 1, "minibatch_k", self.minibatch_k, ">= 1")

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
        self.encoder = ObsEncoder({k: config.input_features[k] for k in config.windowed_inputs}, cfg.encoder)
        self.windowed = config.windowed_inputs
        keys = config.language_keys
        self.language = LanguageEncoder(config.language, keys[0]) if keys else None
        lang_dim = config.language.embed_dim if keys else 0
        cond_dim = self.encoder.out_dim * config.n_obs_steps + lang_dim
        if cfg.backbone == "unet":
            u = cfg.unet
            self.net = ConditionalUnet1D(
                config.action_dim, cond_dim, u.down_dims, u.kernel_size, u.n_groups, u.step_embed_dim, u.predict_scale
            )
        elif cfg.backbone == "transformer":
            t = cfg.transformer
            self.net = TransformerDenoiser(
                config.action_dim, self.encoder.out_dim, config.horizon, config.n_obs_steps,
                t.n_layer, t.n_head, t.n_emb, t.p_drop_emb, t.p_drop_attn, t.causal, lang_dim=lang_dim,
            )
        else:
            raise ValueError(f"unknown backbone {cfg.backbone!r}; use 'unet' or 'transformer'")
        # flow time t in [0, 1] is scaled so the sinusoidal embedding sees the same range as diffusion steps
        self.time_scale = time_scale

    def condition(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """obs windows {key: (B, T_o, ...)} (+ the processed instruction) -> (B, T_o * F [+ embed_dim]): the UNet's
        global condition (FiLM in every block), or the transformer's condition tokens (the instruction feature
        last: one more token)."""
        cond = self.encoder({k: obs[k] for k in self.windowed}).flatten(1)
        if self.language is None:
            return cond
        return torch.cat([cond, self.language(obs).to(cond.dtype)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(x, t * self.time_scale if self.time_scale != 1.0 else t, cond)
