"""Flow-matching action head config (pi0 / openpi convention), same conditioning stack as diffusion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from robopolicy.config_parsing import check
from robopolicy.policies.common.denoiser import DenoisingHeadConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class FlowConfig(DenoisingHeadConfig):
    """t ~ 0.999 * Beta(1.5, 1) + 0.001, x_t = t * eps + (1 - t) * A, target u = eps - A; Euler from t=1 (noise) to 0
    in num_inference_steps steps."""

    name: ClassVar[str] = "flow"
    head_class: ClassVar[str] = "FlowHead"

    time_beta_a: float = 1.5  # training times t ~ 0.999 * Beta(a, b) + 0.001
    time_beta_b: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check(self.time_beta_a > 0, "time_beta_a", self.time_beta_a, "> 0")
        check(self.time_beta_b > 0, "time_beta_b", self.time_beta_b, "> 0")
