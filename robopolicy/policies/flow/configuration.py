"""Flow-matching action head config (pi0 / openpi convention), same conditioning stack as diffusion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.common.denoiser import DenoiserConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class FlowConfig(PolicyConfig):
    """t ~ 0.999 * Beta(1.5, 1) + 0.001, x_t = t * eps + (1 - t) * A, target u = eps - A; Euler from t=1 (noise) to 0.

    minibatch_k: Level-2 minibatching, as for diffusion.
    """

    name: ClassVar[str] = "flow"
    head_class: ClassVar[str] = "FlowHead"

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    num_inference_steps: int = 10
    time_beta_a: float = 1.5
    time_beta_b: float = 1.0
    minibatch_k: int = 1
    mask_padding: bool = False
