"""What the LeRobot-compatible heads (lerobot_act, lerobot_diffusion) share: their config fields, input roles and
LeRobot's image normalization.

LeRobot gives inputs roles by key: "observation.state" is the robot state, "observation.environment_state" the
environment state (e.g. PushT keypoints), every image input a camera, in the order of the config's
input_features (the order the checkpoint's config.json lists them). Images are normalized inside the head with the
stats the checkpoint's processor holds (LeRobot's NormalizerProcessorStep: (x - mean) / (std + 1e-8), or
min-max to [-1, 1]); states and actions go through robopolicy's Normalizer like every head's. LeRobot refuses a
policy without an image or an environment state; these heads also run on the robot state alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torchvision
from torch import nn

from robopolicy.config_parsing import ConfigError, NormMode, check
from robopolicy.policies.base import PolicyConfig

ROBOT_STATE = "observation.state"
ENV_STATE = "observation.environment_state"
LEROBOT_EPS = 1e-8  # LeRobot's normalizer epsilon
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LeRobotHeadConfig(PolicyConfig):
    """Fields every LeRobot-compatible head has beside LeRobot's own.

    camera_order: the cameras in LeRobot's order (empty: sorted image keys); image_norm: how images are
    normalized ("mean_std", "min_max" or "identity"; the stats are weights of the head, ImageNet's for a fresh
    one as LeRobot's default `use_imagenet_stats`); env_state_norm: normalization of the environment state
    (LeRobot's default mapping has no ENV entry: identity); vision_backbone: the torchvision ResNet."""

    std_floor: ClassVar[float] = LEROBOT_EPS
    camera_order: tuple[str, ...] = ()
    image_norm: Literal["mean_std", "min_max", "identity"] = "mean_std"  # how images are normalized
    env_state_norm: NormMode = "identity"  # normalization of observation.environment_state
    vision_backbone: str = "resnet18"  # torchvision ResNet

    def __post_init__(self):
        super().__post_init__()
        check(self.vision_backbone.startswith("resnet"), "vision_backbone", self.vision_backbone,
              "a torchvision ResNet (resnet18, resnet34, ...), as LeRobot requires")
        check(self.image_norm in ("mean_std", "min_max", "identity"), "image_norm", self.image_norm,
              "mean_std, min_max or identity")
        if self.camera_order and sorted(self.camera_order) != self.image_keys:
            raise ConfigError(f"camera_order {list(self.camera_order)} must list the image inputs "
                              f"{self.image_keys} once each")
        extra = [k for k in self.state_keys if k not in (ROBOT_STATE, ENV_STATE)]
        if extra:
            raise ConfigError(f"{type(self).__name__}: inputs {extra} have no LeRobot role; LeRobot's ACT and "
                              f"Diffusion Policy read {ROBOT_STATE!r}, {ENV_STATE!r} and images only")

    @property
    def cameras(self) -> list[str]:
        return list(self.camera_order) or self.image_keys

    @property
    def has_robot_state(self) -> bool:
        return ROBOT_STATE in self.input_features

    @property
    def has_env_state(self) -> bool:
        return ENV_STATE in self.input_features

    def norm_modes(self) -> dict[str, str]:
        modes = super().norm_modes()
        if ENV_STATE in modes:
            modes[ENV_STATE] = self.env_state_norm
        return modes


class ImageNormalizer(nn.Module):
    """Float images (..., N_cam, C, H, W) in [0, 1] -> LeRobot-normalized, per camera and channel.

    x_norm = (x - center) / denom; the buffers are saved with the weights (`set_stats` puts a checkpoint's in)."""

    def __init__(self, config: LeRobotHeadConfig):
        super().__init__()
        cams = config.cameras
        self.cameras, self.mode = cams, config.image_norm
        channels = config.input_features[cams[0]].shape[0] if cams else 3
        self.register_buffer("center", torch.zeros(len(cams), channels, 1, 1))
        self.register_buffer("denom", torch.ones(len(cams), channels, 1, 1))
        if self.mode == "mean_std" and channels == 3:
            self.set_stats({cam: {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} for cam in cams})

    @torch.no_grad()
    def set_stats(self, stats: dict[str, dict[str, object]]) -> None:
        """stats {camera: {"mean", "std"} or {"min", "max"}: C values (any shape that flattens to C)}."""
        for i, cam in enumerate(self.cameras):
            st = {k: torch.as_tensor(v, dtype=torch.float32).flatten() for k, v in stats[cam].items()}
            if self.mode == "mean_std":
                self.center[i, :, 0, 0], self.denom[i, :, 0, 0] = st["mean"], st["std"] + LEROBOT_EPS
            elif self.mode == "min_max":
                rng = st["max"] - st["min"]
                rng = torch.where(rng == 0, torch.full_like(rng, LEROBOT_EPS), rng)
                self.center[i, :, 0, 0], self.denom[i, :, 0, 0] = st["min"] + rng / 2, rng / 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity":
            return images
        return (images - self.center.to(images.dtype)) / self.denom.to(images.dtype)


def stack_cameras(config: LeRobotHeadConfig, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """{camera: (B, T, C, H, W)} -> (B, T, N_cam, C, H, W) in LeRobot's camera order."""
    return torch.stack([obs[k] for k in config.cameras], dim=2)


def resnet(name: str, norm_layer: type[nn.Module] | None = None, dilate_last: bool = False) -> nn.Module:
    """A torchvision ResNet without pretrained weights (an imported checkpoint brings its own)."""
    kwargs = {"norm_layer": norm_layer} if norm_layer is not None else {}
    return getattr(torchvision.models, name)(weights=None, replace_stride_with_dilation=[False, False, dilate_last],
                                             **kwargs)
