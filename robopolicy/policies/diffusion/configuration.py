"""Diffusion Policy (Chi et al. 2023) config. Defaults follow the paper's CNN/UNet PushT setup."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from robopolicy.policies.common.denoiser import DenoisingHeadConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class DiffusionConfig(DenoisingHeadConfig):
    """epsilon prediction with diffusers' DDPM (training, 100 steps, squaredcos_cap_v2) and DDIM or DDPM at inference
    (num_inference_steps)."""

    name: ClassVar[str] = "diffusion"
    head_class: ClassVar[str] = "DiffusionHead"

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    inference_scheduler: Literal["ddim", "ddpm"] = "ddim"
