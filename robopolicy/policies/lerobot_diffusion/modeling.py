"""LeRobot's Diffusion Policy (Chi et al. 2023, as LeRobot 0.4 builds it).

Camera encoder under LeRobot's names (`diffusion.rgb_encoder.*`): [resize], crop, ResNet trunk (GroupNorm),
spatial softmax over K keypoints with its coordinate grid, linear + ReLU -> (2K,). The UNet is robopolicy's own
`ConditionalUnet1D`, which has LeRobot's structure (with LeRobot's step-embedding frequencies, and 8 GroupNorm
groups in the last block whatever n_groups says, as LeRobot builds it); the importer renames LeRobot's UNet
weights to it (`lerobot_unet_key`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from robopolicy.policies.base import GUIDANCE, DenoisingStep, Guide, LossOutput, PolicyHead
from robopolicy.policies.common.lerobot_parts import ENV_STATE, ROBOT_STATE, ImageNormalizer, resnet, stack_cameras
from robopolicy.policies.common.unet1d import ConditionalUnet1D
from robopolicy.policies.diffusion.modeling import denoising_step, reverse_diffusion
from robopolicy.policies.lerobot_diffusion.configuration import LeRobotDiffusionConfig

# LeRobot's UNet parameter names -> ConditionalUnet1D's, applied in order to `diffusion.unet.*` keys
UNET_RENAMES = (("diffusion_step_encoder.", "step_embed."), ("down_modules.", "down."), ("mid_modules.", "mid."),
                ("up_modules.", "up."), ("final_conv.", "final."), (".block.", "."), ("cond_encoder.", "film."),
                ("residual_conv.", "skip."))


def lerobot_unet_key(key: str) -> str:
    """A LeRobot DiffusionConditionalUnet1d parameter name -> the ConditionalUnet1D one (other keys unchanged)."""
    if ".unet." not in key:
        return key
    head, _, tail = key.partition(".unet.")
    for old, new in UNET_RENAMES:
        tail = tail.replace(old, new)
    return f"{head}.unet.{tail}"


class KeypointPool(nn.Module):
    """Spatial softmax: (N, C, h, w) -> (N, K, 2) expected (x, y) in [-1, 1] of K learned keypoint maps."""

    def __init__(self, channels: int, h: int, w: int, keypoints: int):
        super().__init__()
        self.nets = nn.Conv2d(channels, keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, h, dtype=torch.float64),
                                torch.linspace(-1.0, 1.0, w, dtype=torch.float64), indexing="ij")
        self.register_buffer("pos_grid", torch.stack([xs.flatten(), ys.flatten()], dim=1).float())  # (h*w, 2)
        self.keypoints = keypoints

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        maps = self.nets(fmap)
        attn = F.softmax(maps.flatten(2), dim=-1)  # (N, K, h*w)
        return attn @ self.pos_grid.to(attn.dtype)


class RgbEncoder(nn.Module):
    """One camera's images (N, 3, H, W), normalized -> (N, 2K) features."""

    def __init__(self, cfg: LeRobotDiffusionConfig):
        super().__init__()
        self.cfg = cfg
        norm = (lambda c: nn.GroupNorm(c // 16, c)) if cfg.use_group_norm else None
        self.backbone = nn.Sequential(*list(resnet(cfg.vision_backbone, norm).children())[:-2])
        c, h, w = cfg.input_features[cfg.cameras[0]].shape
        h, w = cfg.crop_shape or cfg.resize_shape or (h, w)
        with torch.no_grad():
            fmap = self.backbone.eval()(torch.zeros(1, c, h, w))
        self.backbone.train()
        k = cfg.spatial_softmax_num_keypoints
        self.pool = KeypointPool(fmap.shape[1], fmap.shape[2], fmap.shape[3], k)
        self.out = nn.Linear(2 * k, 2 * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.resize_shape is not None:
            x = TF.resize(x, list(cfg.resize_shape), antialias=True)
        if cfg.crop_shape is not None:
            if self.training and cfg.crop_is_random:
                h, w = cfg.crop_shape
                top = int(torch.randint(0, x.shape[-2] - h + 1, (1,)))
                left = int(torch.randint(0, x.shape[-1] - w + 1, (1,)))
                x = x[..., top : top + h, left : left + w]
            else:
                x = TF.center_crop(x, list(cfg.crop_shape))
        return F.relu(self.out(self.pool(self.backbone(x)).flatten(1)))


class DiffusionModel(nn.Module):
    """LeRobot's DiffusionModel: `rgb_encoder` (one, or one per camera) and the UNet."""

    def __init__(self, cfg: LeRobotDiffusionConfig):
        super().__init__()
        cams = cfg.cameras
        cond_dim = cfg.input_features[ROBOT_STATE].shape[0]
        if cams:
            if cfg.use_separate_rgb_encoder_per_camera:
                self.rgb_encoder = nn.ModuleList(RgbEncoder(cfg) for _ in cams)
            else:
                self.rgb_encoder = RgbEncoder(cfg)
            cond_dim += 2 * cfg.spatial_softmax_num_keypoints * len(cams)
        if cfg.has_env_state:
            cond_dim += cfg.input_features[ENV_STATE].shape[0]
        self.unet = ConditionalUnet1D(cfg.action_dim, cond_dim * cfg.n_obs_steps, tuple(cfg.down_dims),
                                      cfg.kernel_size, cfg.n_groups, cfg.diffusion_step_embed_dim,
                                      cfg.use_film_scale_modulation, step_embed_shift=1, final_groups=8)

    def camera_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, T, N_cam, C, H, W) normalized -> (B, T, N_cam * 2K)."""
        b, t = images.shape[:2]
        if isinstance(self.rgb_encoder, nn.ModuleList):
            feats = [enc(images[:, :, i].flatten(0, 1)).view(b, t, -1) for i, enc in enumerate(self.rgb_encoder)]
            return torch.cat(feats, dim=-1)
        return self.rgb_encoder(images.flatten(0, 2)).view(b, t, -1)


def make_scheduler(cfg: LeRobotDiffusionConfig) -> DDPMScheduler | DDIMScheduler:
    kind = DDPMScheduler if cfg.noise_scheduler_type == "DDPM" else DDIMScheduler
    return kind(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                beta_schedule=cfg.beta_schedule, clip_sample=cfg.clip_sample, clip_sample_range=cfg.clip_sample_range,
                prediction_type=cfg.prediction_type)


class LeRobotDiffusionHead(PolicyHead):
    """L = mean || target - unet(A^k, k, O) ||^2 (target: the noise or the chunk), as LeRobot's DiffusionPolicy;
    guidable (real-time chunking) like robopolicy's diffusion head."""

    config_class = LeRobotDiffusionConfig
    capabilities = frozenset({GUIDANCE})

    def __init__(self, config: LeRobotDiffusionConfig):
        super().__init__(config)
        self.diffusion = DiffusionModel(config)
        self.image_norm = ImageNormalizer(config)
        self.scheduler = make_scheduler(config)

    @property
    def inference_steps(self) -> int:
        return self.config.num_inference_steps or self.config.num_train_timesteps

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Observation windows {key: (B, T_o, ...)} -> (B, T_o * F) global condition, F = [state, cameras, env]."""
        cfg = self.config
        parts = [obs[ROBOT_STATE]]
        if cfg.cameras:
            parts.append(self.diffusion.camera_features(self.image_norm(stack_cameras(cfg, obs))))
        if cfg.has_env_state:
            parts.append(obs[ENV_STATE])
        return torch.cat(parts, dim=-1).flatten(1)

    def loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        cfg = self.config
        cond = self.encode(batch)
        actions = batch[cfg.action_key]
        noise = torch.randn_like(actions)
        steps = torch.randint(0, cfg.num_train_timesteps, (actions.shape[0],), device=actions.device)
        pred = self.diffusion.unet(self.scheduler.add_noise(actions, noise, steps), steps, cond)
        target = noise if cfg.prediction_type == "epsilon" else actions
        per_step = F.mse_loss(pred, target, reduction="none").mean(-1)  # (B, H)
        pad = batch.get(f"{cfg.action_key}_is_pad")
        if cfg.do_mask_loss_for_padding and pad is not None:
            return LossOutput(per_sample=per_step * ~pad, valid=~pad)
        return LossOutput(per_sample=per_step)

    def sample_from_condition(self, cond: torch.Tensor, *, generator: torch.Generator | None = None,
                              guide: Guide | None = None) -> torch.Tensor:
        """Reverse diffusion from noise (B, H, D) drawn from `generator`; the scheduler's own noise too (DDPM)."""
        cfg = self.config
        return reverse_diffusion(self.diffusion.unet, self.scheduler, self.inference_steps,
                                 (cfg.horizon, cfg.action_dim), cond, generator=generator, guide=guide,
                                 step_of=self._step)

    def _step(self, t: int) -> DenoisingStep:
        cfg = self.config
        clip = cfg.clip_sample_range if cfg.clip_sample else None
        return denoising_step(float(self.scheduler.alphas_cumprod[t]), cfg.prediction_type, clip)
