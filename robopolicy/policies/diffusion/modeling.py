"""Diffusion Policy head: L = || eps - eps_theta(O_t, A^k, k) ||^2, A^k = sqrt(abar_k) A^0 + sqrt(1 - abar_k) eps."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from robopolicy.policies.base import Guide, LossOutput, PolicyHead
from robopolicy.policies.common.denoiser import ChunkDenoiser, chunk_mse, repeat_for_minibatch
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
        cond, actions = repeat_for_minibatch(cond, batch[cfg.action_key], cfg.minibatch_k)  # (B*K, H, D)
        noise = torch.randn_like(actions)
        steps = torch.randint(0, cfg.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, steps)
        pred = self.model(noisy, steps, cond)
        target = noise if cfg.prediction_type == "epsilon" else actions
        pad = batch.get(f"{cfg.action_key}_is_pad") if cfg.mask_padding else None
        return chunk_mse(pred, target, pad, cfg.minibatch_k)

    @torch.no_grad()
    def sample(
        self, obs: dict[str, torch.Tensor], *, generator: torch.Generator | None = None, guide: Guide | None = None
    ) -> torch.Tensor:
        """guide(denoise, x, t) -> model output replaces the network's prediction at each scheduler step t
        (real-time chunking); denoise(x) evaluates the network at t."""
        cfg = self.config
        cond = self.model.condition({k: obs[k] for k in cfg.input_features})
        b = cond.shape[0]
        x = torch.randn((b, cfg.horizon, cfg.action_dim), generator=generator, device=cond.device, dtype=cond.dtype)
        sched = self.infer_scheduler
        sched.set_timesteps(cfg.num_inference_steps)
        for t in sched.timesteps:
            steps = t.to(cond.device).expand(b)
            if guide is None:
                out = self.model(x, steps, cond)
            else:
                out = guide(lambda x_, steps=steps: self.model(x_, steps, cond), x, t)
            x = sched.step(out, t, x, generator=generator).prev_sample
        return x
