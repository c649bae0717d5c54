"""LeRobot's Diffusion Policy, layer for layer: the head `robopolicy import-lerobot` turns LeRobot Diffusion
checkpoints into. Same fields and defaults as LeRobot 0.4's DiffusionConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from robopolicy.config_parsing import ConfigError, NormMode, check
from robopolicy.policies.common.lerobot_parts import ROBOT_STATE, LeRobotHeadConfig
from robopolicy.policies.registry import register_policy


@register_policy
@dataclass(frozen=True)
class LeRobotDiffusionConfig(LeRobotHeadConfig):
    """UNet denoiser over the chunk, FiLM-conditioned on [robot state, camera keypoint features, env state] of
    every observation step; one diffusers scheduler (DDPM or DDIM) for training and sampling."""

    name: ClassVar[str] = "lerobot_diffusion"
    head_class: ClassVar[str] = "LeRobotDiffusionHead"

    n_obs_steps: int = 2  # observation history
    horizon: int = 16  # chunk length, from the oldest observation step
    n_action_steps: int = 8  # actions executed per chunk
    state_norm: NormMode = "min_max"  # LeRobot's STATE mapping
    action_norm: NormMode = "min_max"  # LeRobot's ACTION mapping
    resize_shape: tuple[int, int] | None = None  # [H, W] resize before cropping (LeRobot >= 0.4)
    crop_shape: tuple[int, int] | None = (84, 84)  # [H, W] random crop in training, centre crop at inference
    crop_is_random: bool = True  # random crop in training (else the centre crop)
    use_group_norm: bool = True  # GroupNorm(C / 16) instead of BatchNorm in the ResNet
    spatial_softmax_num_keypoints: int = 32  # keypoints per camera (feature = 2 x keypoints)
    use_separate_rgb_encoder_per_camera: bool = False  # one ResNet per camera
    down_dims: tuple[int, ...] = (512, 1024, 2048)  # UNet channels per level
    kernel_size: int = 5  # UNet convolution width
    n_groups: int = 8  # GroupNorm groups in the UNet
    diffusion_step_embed_dim: int = 128  # timestep embedding size
    use_film_scale_modulation: bool = True  # FiLM predicts scale and bias (else bias only)
    noise_scheduler_type: Literal["DDPM", "DDIM"] = "DDPM"  # diffusers scheduler
    num_train_timesteps: int = 100  # diffusion steps
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"  # noise schedule
    beta_start: float = 0.0001  # first beta (linear schedules)
    beta_end: float = 0.02  # last beta (linear schedules)
    prediction_type: Literal["epsilon", "sample"] = "epsilon"  # what the UNet predicts
    clip_sample: bool = True  # clip the predicted clean chunk while sampling
    clip_sample_range: float = 1.0  # bound of the clip
    num_inference_steps: int | None = None  # sampling steps (None: num_train_timesteps)
    do_mask_loss_for_padding: bool = False  # zero the loss on padded action steps

    @classmethod
    def test_overrides(cls) -> dict:
        return {"horizon": 16, "n_action_steps": 8, "down_dims": (32, 64), "diffusion_step_embed_dim": 32,
                "spatial_softmax_num_keypoints": 4, "crop_shape": None, "num_inference_steps": 4}

    def __post_init__(self):
        super().__post_init__()
        if self.input_features and not self.has_robot_state:
            raise ConfigError(f"lerobot_diffusion needs {ROBOT_STATE!r} among the inputs (LeRobot's Diffusion "
                              "Policy conditions on the robot state)")
        check(self.horizon % 2 ** len(self.down_dims) == 0, "horizon", self.horizon,
              f"a multiple of 2^len(down_dims) = {2 ** len(self.down_dims)}")
        check(1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1, "n_action_steps",
              self.n_action_steps, f"in [1, horizon - n_obs_steps + 1] ([1, {self.horizon - self.n_obs_steps + 1}])")
        steps = self.num_inference_steps or self.num_train_timesteps
        check(1 <= steps <= self.num_train_timesteps, "num_inference_steps", self.num_inference_steps,
              f"in [1, num_train_timesteps] ([1, {self.num_train_timesteps}])")
        check(self.spatial_softmax_num_keypoints >= 1, "spatial_softmax_num_keypoints",
              self.spatial_softmax_num_keypoints, ">= 1")
        check(self.clip_sample_range > 0, "clip_sample_range", self.clip_sample_range, "> 0")
