"""Diffusion Policy head: L = || eps - eps_theta(O_t, A^k, k) ||^2, A^k = sqrt(abar_k) A^0 + sqrt(1 - abar_k) eps."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler

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
    capabilities = frozenset({GUIDANCE, LANGUAGE, DIFFERENTIABLE_SAMPLING})

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        self.model = ChunkDenoiser(config, config.denoiser)
        self.train_scheduler, self.infer_scheduler = make_schedulers(config)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        cfg = self.config
        cond = self.encode(batch)
        cond, actions = repeat_for_minibatch(cond, batch[cfg.action_key], cfg.minibatch_k)  # (B*K, H, D)
        noise = torch.randn_like(actions)
        steps = torch.randint(0, cfg.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, steps)
        pred = self.model(noisy, steps, cond)
        target = noise if cfg.prediction_type == "epsilon" else actions
        pad = batch.get(f"{cfg.action_key}_is_pad") if cfg.mask_padding else None
        return chunk_mse(pred, target, pad, cfg.minibatch_k)

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Observation windows (+ the processed instruction) -> (B, T_o * F [+ language.embed_dim]) condition."""
        return self.model.condition(obs)

    def sample_from_condition(
        self, cond: torch.Tensor, *, generator: torch.Generator | None = None, guide: Guide | None = None
    ) -> torch.Tensor:
        """Reverse diffusion from Gaussian noise (B, H, D) with the inference scheduler; with `guide`, its output
        replaces the network's at every step (see DenoisingStep)."""
        cfg = self.config
        return reverse_diffusion(self.model, self.infer_scheduler, cfg.num_inference_steps,
                                 (cfg.horizon, cfg.action_dim), cond, generator=generator, guide=guide,
                                 step_of=self.denoising_step)

    def denoising_step(self, t: int) -> DenoisingStep:
        cfg = self.config
        clip = cfg.clip_sample_range if cfg.clip_sample else None
        return denoising_step(float(self.infer_scheduler.alphas_cumprod[t]), cfg.prediction_type, clip)


def reverse_diffusion(net: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                      scheduler: DDPMScheduler | DDIMScheduler, num_steps: int, chunk_shape: tuple[int, int],
                      cond: torch.Tensor, *, generator: torch.Generator | None, guide: Guide | None,
                      step_of: Callable[[int], DenoisingStep]) -> torch.Tensor:
    """Reverse diffusion with a diffusers scheduler over `num_steps` timesteps, from Gaussian noise
    (B, *chunk_shape) drawn from `generator` (so is the scheduler's step noise): net(x, timesteps (B,), cond) at
    every step; with `guide`, its output replaces the network's (step_of(t) describes step t)."""
    b = cond.shape[0]
    x = torch.randn((b, *chunk_shape), generator=generator, device=cond.device, dtype=cond.dtype)
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        steps = t.to(cond.device).expand(b)
        if guide is None:
            out = net(x, steps, cond)
        else:
            out = guide(lambda x_, steps=steps: net(x_, steps, cond), x, step_of(int(t)))
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


def denoising_step(abar: float, prediction_type: str, clip: float | None) -> DenoisingStep:
    """The VP step with cumulative alpha abar: x = a A + s eps (a = sqrt(abar), s = sqrt(1 - abar)); its
    flow-equivalent tau = a / (a + s) has the same noise-to-signal ratio; x0 is clipped where the scheduler clips."""
    a, s = math.sqrt(abar), math.sqrt(1.0 - abar)
    eps = prediction_type == "epsilon"

    def to_x0(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        x0 = (x - s * out) / a if eps else out
        return x0 if clip is None else x0.clamp(-clip, clip)

    return DenoisingStep(tau=a / (a + s), noise_std=s, to_x0=to_x0, x0_per_out=-s / a if eps else 1.0)
