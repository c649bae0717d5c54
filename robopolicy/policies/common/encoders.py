"""Observation encoders shared by every head: a ResNet per camera (timm) and the low-dim state vector.

Input: normalized obs windows {key: (B, T_o, D)} for state keys and float images {key: (B, T_o, C, H, W)} in [0, 1].
Output: per-step features (B, T_o, F); `ObsEncoder.out_dim` = F.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robopolicy.config_parsing import check
from robopolicy.policies.base import FeatureSpec
from robopolicy.policies.common.prepacked import prepack_layers, release

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderConfig:
    """The image encoder of every camera; state inputs are concatenated as they are."""

    backbone: str = "resnet18"  # timm model name of the image trunk
    pretrained: bool = False  # load ImageNet weights (needs the Hugging Face hub)
    group_norm: bool = True  # replace BatchNorm with GroupNorm (EMA breaks BatchNorm)
    spatial_softmax_keypoints: int = 32  # > 0: spatial softmax over that many keypoints; 0: global average pooling
    crop_shape: tuple[int, int] | None = None  # [H, W] random crop at train time, centre crop at eval; null: none
    image_feature_dim: int = 64  # feature size per camera
    shared_backbone: bool = False  # one trunk for every camera

    def __post_init__(self):
        check(self.backbone != "", "backbone", self.backbone, "a timm model name, e.g. 'resnet18'")
        check(self.spatial_softmax_keypoints >= 0, "spatial_softmax_keypoints", self.spatial_softmax_keypoints,
              ">= 0 (0: global average pooling)")
        check(self.crop_shape is None or min(self.crop_shape) >= 1, "crop_shape", self.crop_shape,
              "[H, W] with H, W >= 1, or null")
        check(self.image_feature_dim >= 1, "image_feature_dim", self.image_feature_dim, ">= 1")


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, H, W) -> expected (x, y) image coordinates of K learned keypoints, (B, K * 2)."""

    def __init__(self, channels: int, num_keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        b, k, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        attn = F.softmax(x.flatten(2), dim=-1).view(b, k, h, w)
        ex = (attn.sum(dim=2) * xs).sum(-1)
        ey = (attn.sum(dim=3) * ys).sum(-1)
        return torch.stack([ex, ey], dim=-1).flatten(1)


def _group_norm(channels: int, **_ignored) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)


def image_trunk(cfg: EncoderConfig) -> nn.Module:
    """A timm CNN without pooling or classifier: (N, C, H, W) -> feature map (N, C', H', W').

    Its convolutions run with prepacked weights at inference where the CPU kernels are on (prepacked.py,
    kernels.py); parameters and state dict are timm's.
    """
    import timm

    kwargs = {"norm_layer": _group_norm} if cfg.group_norm else {}
    return prepack_layers(
        timm.create_model(cfg.backbone, pretrained=cfg.pretrained, num_classes=0, global_pool="", **kwargs))


@torch.no_grad()
def feature_map_shape(trunk: nn.Module, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C', H', W') of the trunk's output for one (C, H, W) input (probed in eval mode: BatchNorm-safe)."""
    was_training = trunk.training
    trunk.eval()
    shape = tuple(trunk(torch.zeros(1, *in_shape)).shape[1:])
    trunk.train(was_training)
    release(trunk)  # the probe packed the weights for its 1-image input: not worth holding through training
    return shape


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """Float images (N, 3, H, W) in [0, 1] -> ImageNet-normalized."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def crop_images(x: torch.Tensor, shape: tuple[int, int] | None, train: bool) -> torch.Tensor:
    """Random crop when training, one offset per sample (x's first dimension; shared by its cameras' channels and
    time steps), as diffusion_policy's CropRandomizer does; centre crop otherwise. x (N, ..., H, W) ->
    (N, ..., ch, cw)."""
    if shape is None:
        return x
    ch, cw = shape
    h, w = x.shape[-2:]
    if not train:
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[..., top : top + ch, left : left + cw]
    n = x.shape[0]
    flat = x.reshape(n, -1, h, w)
    top = torch.randint(0, h - ch + 1, (n, 1, 1, 1), device=x.device)
    left = torch.randint(0, w - cw + 1, (n, 1, 1, 1), device=x.device)
    rows = top + torch.arange(ch, device=x.device).view(1, 1, ch, 1)  # (N, 1, ch, 1)
    cols = left + torch.arange(cw, device=x.device).view(1, 1, 1, cw)  # (N, 1, 1, cw)
    samples = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    planes = torch.arange(flat.shape[1], device=x.device).view(1, -1, 1, 1)
    return flat[samples, planes, rows, cols].reshape(*x.shape[:-2], ch, cw)


class ImageEncoder(nn.Module):
    """One camera: crop, ImageNet-normalize, ResNet trunk, pooling, linear -> (N, image_feature_dim)."""

    def __init__(self, spec: FeatureSpec, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.trunk = image_trunk(cfg)
        c, h, w = spec.shape
        channels = feature_map_shape(self.trunk, (c, *(cfg.crop_shape or (h, w))))[0]
        if cfg.spatial_softmax_keypoints > 0:
            self.pool = SpatialSoftmax(channels, cfg.spatial_softmax_keypoints)
            pooled = cfg.spatial_softmax_keypoints * 2
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            pooled = channels
        self.out = nn.Sequential(nn.Linear(pooled, cfg.image_feature_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) float in [0, 1] -> (N, image_feature_dim)."""
        x = crop_images(x, self.cfg.crop_shape, self.training)
        if x.shape[1] == 3:
            x = imagenet_normalize(x)
        return self.out(self.pool(self.trunk(x)))


class ObsEncoder(nn.Module):
    """Concatenate normalized state vectors and per-camera image features at every observation step."""

    def __init__(self, input_features: dict[str, FeatureSpec], cfg: EncoderConfig):
        super().__init__()
        self.state_keys = sorted(k for k, f in input_features.items() if f.kind != "image")
        self.image_keys = sorted(k for k, f in input_features.items() if f.kind == "image")
        self.state_dim = sum(int(torch.tensor(input_features[k].shape).prod()) for k in self.state_keys)
        if cfg.shared_backbone and self.image_keys:
            shared = ImageEncoder(input_features[self.image_keys[0]], cfg)
            self.cameras = nn.ModuleDict({_mod(k): shared for k in self.image_keys})
        else:
            self.cameras = nn.ModuleDict({_mod(k): ImageEncoder(input_features[k], cfg) for k in self.image_keys})
        self.out_dim = self.state_dim + len(self.image_keys) * cfg.image_feature_dim

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [obs[k].flatten(2) for k in self.state_keys]
        for k in self.image_keys:
            img = obs[k]
            b, t = img.shape[:2]
            parts.append(self.cameras[_mod(k)](img.flatten(0, 1)).view(b, t, -1))
        return torch.cat(parts, dim=-1)


def _mod(key: str) -> str:
    return key.replace(".", "__")
