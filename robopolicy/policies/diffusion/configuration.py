"""Diffusion Policy (Chi et al. 2023) config. Defaults follow the paper's CNN/UNet PushT setup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from robopolicy.config_parsing import check
from robopolicy.policies.common.denoiser import DenoisingHeadConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class DiffusionConfig(DenoisingHeadConfig):
    """epsilon prediction with diffusers' DDPM (training, 100 steps, squaredcos_cap_v2) and DDIM or DDPM at inference
    (num_inference_steps)."""

    name: ClassVar[str] = "diffusion"
    head_class: ClassVar[str] = "DiffusionHead"

    num_train_timesteps: int = 100  # diffusion steps at training
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"  # noise schedule
    prediction_type: Literal["epsilon", "sample"] = "epsilon"  # the network predicts the noise or the clean chunk
    clip_sample: bool = True  # clip the predicted clean chunk to +-clip_sample_range while sampling
    clip_sample_range: float = 1.0  # bound of the clip
    inference_scheduler: Literal["ddim", "ddpm"] = "ddim"  # sampler at inference

    def __post_init__(self):
        super().__post_init__()
        check(self.num_train_timesteps >= 1, "num_train_timesteps", self.num_train_timesteps, ">= 1")
        check(self.num_inference_steps <= self.num_train_timesteps, "num_inference_steps", self.num_inference_steps,
              f"<= num_train_timesteps ({self.num_train_timesteps})")
        check(self.clip_sample_range > 0, "clip_sample_range", self.clip_sample_range, "> 0")
