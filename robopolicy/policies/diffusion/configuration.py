"""Diffusion Policy (Chi et al. 2023) config. Defaults follow the paper's CNN/UNet PushT setup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.common.denoiser import DenoiserConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class DiffusionConfig(PolicyConfig):
    """epsilon prediction with diffusers' DDPM (training, 100 steps, squaredcos_cap_v2) and DDIM or DDPM at inference.

    minibatch_k: Level-2 minibatching (Mini-Diffuser): each encoded observation is reused for K noised action samples.
    mask_padding: drop padded chunk steps from the loss (diffusion_policy trains on edge-repeated pads: off).
    """

    name: ClassVar[str] = "diffusion"
    head_class: ClassVar[str] = "DiffusionHead"

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    inference_scheduler: Literal["ddim", "ddpm"] = "ddim"
    num_inference_steps: int = 10
    minibatch_k: int = 1
    mask_padding: bool = False
