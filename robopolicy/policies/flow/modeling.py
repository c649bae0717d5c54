"""Flow-matching head: L = mean_{H,D} || v_theta(x_t, t, o) - (eps - A) ||^2, sampled by Euler integration."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robopolicy.policies.base import LossOutput, PolicyHead
from robopolicy.policies.common.denoiser import ChunkDenoiser
from robopolicy.policies.common.flow_matching import euler_integrate, interpolate, sample_time
from robopolicy.policies.flow.configuration import FlowConfig

# the denoiser's time embedding is tuned for diffusion step indices; scale t in [0, 1] to that range
TIME_SCALE = 100.0


class FlowHead(PolicyHead):
    config_class = FlowConfig

    def __init__(self, config: FlowConfig):
        super().__init__(config)
        self.model = ChunkDenoiser(config, config.denoiser, time_scale=TIME_SCALE)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        cfg = self.config
        cond = self.model.condition({k: batch[k] for k in cfg.input_features})
        actions = batch[cfg.action_key]
        b, k = actions.shape[0], cfg.minibatch_k
        if k > 1:
            cond, actions = cond.repeat_interleave(k, 0), actions.repeat_interleave(k, 0)
        noise = torch.randn_like(actions)
        t = sample_time(actions.shape[0], cfg.time_beta_a, cfg.time_beta_b, device=actions.device)
        x_t, target = interpolate(actions, noise, t)
        per_step = F.mse_loss(self.model(x_t, t, cond), target, reduction="none").mean(-1)  # (B*K, H)
        if cfg.mask_padding and f"{cfg.action_key}_is_pad" in batch:
            per_step = per_step * (~batch[f"{cfg.action_key}_is_pad"]).repeat_interleave(k, 0).float()
        per_step = per_step.view(b, k, -1).mean(1)
        return LossOutput(per_step, {"mse": float(per_step.mean().detach())})

    @torch.no_grad()
    def sample(self, obs: dict[str, torch.Tensor], *, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.config
        cond = self.model.condition({k: obs[k] for k in cfg.input_features})
        noise = torch.randn(
            (cond.shape[0], cfg.horizon, cfg.action_dim), generator=generator, device=cond.device, dtype=cond.dtype
        )
        return euler_integrate(lambda x, t: self.model(x, t, cond), noise, cfg.num_inference_steps)
