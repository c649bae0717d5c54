"""Flow-matching head: L = mean_{H,D} || v_theta(x_t, t, o) - (eps - A) ||^2, sampled by Euler integration."""

from __future__ import annotations

import torch

from robopolicy.policies.base import (
    DIFFERENTIABLE_SAMPLING,
    GUIDANCE,
    LANGUAGE,
    DenoisingStep,
    Guide,
    LossOutput,
    PolicyHead,
)
from robopolicy.policies.common.denoiser import ChunkDenoiser, chunk_mse, repeat_for_minibatch
from robopolicy.policies.common.flow_matching import euler_integrate, interpolate, sample_time
from robopolicy.policies.flow.configuration import FlowConfig

# the denoiser's time embedding is tuned for diffusion step indices; scale t in [0, 1] to that range
TIME_SCALE = 100.0


class FlowHead(PolicyHead):
    config_class = FlowConfig
    capabilities = frozenset({GUIDANCE, LANGUAGE, DIFFERENTIABLE_SAMPLING})

    def __init__(self, config: FlowConfig):
        super().__init__(config)
        self.model = ChunkDenoiser(config, config.denoiser, time_scale=TIME_SCALE)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        cfg = self.config
        cond = self.encode(batch)
        cond, actions = repeat_for_minibatch(cond, batch[cfg.action_key], cfg.minibatch_k)  # (B*K, H, D)
        noise = torch.randn_like(actions)
        t = sample_time(actions.shape[0], cfg.time_beta_a, cfg.time_beta_b, device=actions.device)
        x_t, target = interpolate(actions, noise, t)
        pad = batch.get(f"{cfg.action_key}_is_pad") if cfg.mask_padding else None
        return chunk_mse(self.model(x_t, t, cond), target, pad, cfg.minibatch_k)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Observation windows (+ the processed instruction) -> (B, T_o * F [+ language.embed_dim]) condition."""
        return self.model.condition(obs)

    def sample_from_condition(
        self, cond: torch.Tensor, *, generator: torch.Generator | None = None, guide: Guide | None = None
    ) -> torch.Tensor:
        """Euler integration from noise (t = 1) to data (t = 0); with `guide`, its output replaces the velocity
        at every step (see DenoisingStep)."""
        cfg = self.config
        noise = torch.randn(
            (cond.shape[0], cfg.horizon, cfg.action_dim), generator=generator, device=cond.device, dtype=cond.dtype
        )

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if guide is None:
                return self.model(x, t, cond)
            return guide(lambda x_: self.model(x_, t, cond), x, denoising_step(float(t.flatten()[0])))

        return euler_integrate(velocity, noise, cfg.num_inference_steps)


def denoising_step(t: float) -> DenoisingStep:
    """Flow time t (1 noise, 0 data): x_t = t * eps + (1 - t) * A, clean chunk A1 = x_t - t * v."""
    return DenoisingStep(tau=1.0 - t, noise_std=t, to_x0=lambda x, v: x - t * v, x0_per_out=-t)
