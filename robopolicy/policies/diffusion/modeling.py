"""Diffusion Policy head: L = || eps - eps_theta(O_t, A^k, k) ||^2, A^k = sqrt(abar_k) A^0 + sqrt(1 - abar_k) eps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from robopolicy.policies.base import LossOutput, PolicyHead
from robopolicy.policies.common.denoiser import ChunkDenoiser
from robopolicy.policies.diffusion.configuration import DiffusionConfig


def make_schedulers(cfg: DiffusionConfig) -> tuple[DDPMScheduler, DDPMScheduler | DDIMScheduler]:
    common = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        clip_sample=cfg.clip_sample,
        clip_sample_range=cfg.clip_sample_range,
        prediction_type=cfg.prediction_type,
    )
    train = DDPMScheduler(variance_type="fixed_small", **common)
    infer = DDIMScheduler(**common) if cfg.inference_scheduler == "ddim" else DDPMScheduler(
        variance_type="fixed_small", **common
    )
    return train, infer


class DiffusionHead(PolicyHead):
    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        self.model = ChunkDenoiser(config, config.denoiser)
        self.train_scheduler, self.infer_scheduler = make_schedulers(config)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        cfg = self.config
        cond = self.model.condition({k: batch[k] for k in cfg.input_features})
        actions = batch[cfg.action_key]  # (B, H, D), normalized
        b, k = actions.shape[0], cfg.minibatch_k
        if k > 1:  # Level-2 minibatching: one encoding, K noised samples
            cond, actions = cond.repeat_interleave(k, 0), actions.repeat_interleave(k, 0)
        noise = torch.randn_like(actions)
        steps = torch.randint(0, cfg.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, steps)
        pred = self.model(noisy, steps, cond)
        target = noise if cfg.prediction_type == "epsilon" else actions
        per_step = F.mse_loss(pred, target, reduction="none").mean(-1)  # (B*K, H)
        if cfg.mask_padding and f"{cfg.action_key}_is_pad" in batch:
            keep = (~batch[f"{cfg.action_key}_is_pad"]).repeat_interleave(k, 0).float()
            per_step = per_step * keep
        per_step = per_step.view(b, k, -1).mean(1)
        return LossOutput(per_step, {"mse": float(per_step.mean().detach())})

    @torch.no_grad()
    def sample(self, obs: dict[str, torch.Tensor], *, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.config
        cond = self.model.condition({k: obs[k] for k in cfg.input_features})
        b = cond.shape[0]
        x = torch.randn((b, cfg.horizon, cfg.action_dim), generator=generator, device=cond.device, dtype=cond.dtype)
        sched = self.infer_scheduler
        sched.set_timesteps(cfg.num_inference_steps)
        for t in sched.timesteps:
            out = self.model(x, t.to(cond.device).expand(b), cond)
            x = sched.step(out, t, x, generator=generator).prev_sample
        return x
