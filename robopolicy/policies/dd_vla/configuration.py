"""Discrete Diffusion VLA (Liang et al., arXiv 2508.20072; docs/algorithms.md section 5) config.

An action chunk of H steps x D dims is L = H * D discrete tokens (ActionTokenizer: `bins` uniform bins over the
quantile-normalized range [-1, 1], optional binary gripper dims, [MASK] = bins). A backbone reads the observation
prefix (cameras, instruction, state) and the L action tokens with bidirectional attention over the action
positions; training is masked-token cross-entropy on the action positions (cosine mask ratio), inference is
T rounds of parallel decoding (robopolicy.policies.common.masked_decoding).

Backbones (`backbone`):
- "small": a from-scratch pre-norm transformer over [camera feature-map cells of a timm CNN, the instruction
  feature of LanguageEncoder, a state token, L action tokens]; trains on a CPU.
- "vlm": a transformers vision-language model (Idefics3 / SmolVLM, PaliGemma, Qwen2-VL) named by `vlm.model`; its
  architecture is recorded at creation so checkpoints rebuild offline; LoRA through peft is optional.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from robopolicy.config_parsing import NormMode, check
from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.common.encoders import EncoderConfig
from robopolicy.policies.common.masked_decoding import DecodeConfig
from robopolicy.policies.common.pretrained import PretrainedModelConfig
from robopolicy.policies.registry import register_policy

# the language-model linear layers LoRA adapts by default (Llama / Gemma / Qwen2 names; SigLIP's are q/k/v/out_proj)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class SmallBackboneConfig:
    """The from-scratch transformer (backbone="small")."""

    dim: int = 256  # token width
    n_heads: int = 8  # attention heads (divide dim)
    n_layers: int = 6  # pre-norm transformer blocks
    dim_feedforward: int = 1024  # MLP width
    dropout: float = 0.1  # attention / MLP dropout
    # "prefix": observation tokens attend among themselves, action tokens to everything, so the prefix keys and
    # values are computed once per observation and reused by every decoding round; "full": every token attends
    # to every token (the prefix is recomputed every round)
    attention: Literal["prefix", "full"] = "prefix"
    # camera trunk (timm); its feature-map cells become vision tokens (no pooling)
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(spatial_softmax_keypoints=0))

    def __post_init__(self):
        for name in ("dim", "n_heads", "n_layers", "dim_feedforward"):
            check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        check(self.dim % self.n_heads == 0, "dim", self.dim, f"divisible by n_heads ({self.n_heads})")
        check(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        check(self.attention in ("prefix", "full"), "attention", self.attention, "'prefix' or 'full'")


@dataclass(frozen=True)
class VLMBackboneConfig:
    """The vision-language backbone (backbone="vlm")."""

    model: str = ""  # transformers VLM (hub name or local dir): Idefics3 / SmolVLM, PaliGemma or Qwen2-VL
    pretrained: bool = True  # load its weights when the policy is created (false: random, e.g. tests)
    architecture: dict[str, Any] | None = None  # its transformers config, recorded at creation
    image_size: int = 0  # side of the square image fed to the vision tower; 0: the tower's own image_size
    # pixel normalization of the vision tower; null: its image processor's, recorded at creation (else 0.5)
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"  # the language model's attention kernel
    lora_rank: int = 0  # LoRA rank through peft; 0: off (every backbone parameter trains); the paper's repo: 32
    lora_alpha: float = 16.0  # LoRA scale alpha / rank
    lora_dropout: float = 0.0  # dropout on the LoRA path
    lora_targets: tuple[str, ...] = LORA_TARGETS  # module names (suffixes) LoRA adapts, anywhere in the VLM
    freeze_vision: bool = False  # keep the vision tower and connector fixed (without LoRA)
    gradient_checkpointing: bool = False  # recompute the language model's layers in backward (memory at scale)

    def __post_init__(self):
        check(self.image_size >= 0, "image_size", self.image_size, ">= 0 (0: the vision tower's own size)")
        check(self.image_mean is None or len(self.image_mean) == 3, "image_mean", self.image_mean, "3 values or null")
        check(self.image_std is None or (len(self.image_std) == 3 and min(self.image_std) > 0), "image_std",
              self.image_std, "3 positive values or null")
        check(self.lora_rank >= 0, "lora_rank", self.lora_rank, ">= 0 (0: off)")
        check(self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "> 0")
        check(0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "in [0, 1)")
        check(self.lora_rank == 0 or len(self.lora_targets) > 0, "lora_targets", self.lora_targets,
              "at least one module name when lora_rank > 0")

    @property
    def pretrained_model(self) -> PretrainedModelConfig:
        return PretrainedModelConfig(self.model, self.pretrained, self.architecture)

    def resolved(self) -> VLMBackboneConfig:
        """This config with the VLM's architecture and its image processor's pixel mean / std recorded."""
        out = dataclasses.replace(self, architecture=self.pretrained_model.resolved().architecture)
        if (self.image_mean is not None and self.image_std is not None) or not self.model:
            return out
        mean, std = image_processor_stats(self.model)
        return dataclasses.replace(out, image_mean=self.image_mean or mean, image_std=self.image_std or std)


def image_processor_stats(model: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(image_mean, image_std) of the model's preprocessor_config.json; (None, None) without one."""
    import json
    from pathlib import Path

    from robopolicy.policies.common.pretrained import model_source

    path = Path(model_source(model)) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "preprocessor_config.json")
        except Exception:  # not a hub name
            cached = None
        if not isinstance(cached, str):
            return None, None
        path = Path(cached)
    data = json.loads(path.read_text())
    data = data.get("image_processor", data)
    mean, std = data.get("image_mean"), data.get("image_std")
    return (tuple(float(x) for x in mean) if mean else None), (tuple(float(x) for x in std) if std else None)


@register_policy
@dataclass(frozen=True)
class DDVLAConfig(PolicyConfig):
    """Defaults follow the paper's LIBERO setup: chunk H = 8, 256 bins, T = 12 rounds, max-confidence order,
    random crop to 90% of the image area in training (centre crop at eval)."""

    name: ClassVar[str] = "dd_vla"
    head_class: ClassVar[str] = "DDVLAHead"

    n_obs_steps: int = 1  # the current observation only
    horizon: int = 8  # chunk length H (actions from the current step); L = H * action_dim tokens
    n_action_steps: int = 8  # actions executed per chunk
    state_norm: NormMode = "min_max"  # normalization of state inputs
    # actions -> [-1, 1] before binning: "quantiles" (q01 -> -1, q99 -> +1, the paper's) or "min_max"
    action_norm: NormMode = "quantiles"
    backbone: Literal["small", "vlm"] = "small"  # see the module docstring
    small: SmallBackboneConfig = field(default_factory=SmallBackboneConfig)
    vlm: VLMBackboneConfig = field(default_factory=VLMBackboneConfig)
    bins: int = 256  # uniform bins per continuous action dimension
    gripper_dims: tuple[int, ...] = ()  # action dims tokenized as binary open / closed (LIBERO: the last, -1)
    crop_ratio: float = 0.9  # random crop to this fraction of the image area in training, centre crop at eval
    state_token: bool = True  # state inputs through an MLP as one prefix token (else ignored)
    decoding: DecodeConfig = field(default_factory=DecodeConfig)  # rounds T, order, re-masking, variant
    backbone_lr: float | None = None  # lr of the backbone's trainable parameters; null: the optimizer's lr
    head_lr: float | None = None  # lr of the new parts (action embedding, output head, state MLP); null: optimizer's

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.horizon))

    @property
    def num_tokens(self) -> int:
        """L = H * D action positions, step-major (position h * D + d)."""
        return self.horizon * self.action_dim

    @classmethod
    def test_overrides(cls) -> dict:
        # the contract tests' stats have min / max / mean / std only: min_max maps to [-1, 1] like quantiles
        return {"horizon": 4, "n_action_steps": 4, "action_norm": "min_max", "bins": 32,
                "small": SmallBackboneConfig(dim=64, n_heads=4, n_layers=2, dim_feedforward=128, dropout=0.0),
                "decoding": DecodeConfig(rounds=4)}

    def __post_init__(self):
        super().__post_init__()
        check(self.n_obs_steps == 1, "n_obs_steps", self.n_obs_steps, "1 (the current observation only)")
        check(self.horizon >= 1, "horizon", self.horizon, ">= 1")
        check(1 <= self.n_action_steps <= self.horizon, "n_action_steps", self.n_action_steps,
              f"in [1, horizon] ([1, {self.horizon}])")
        check(self.action_norm in ("quantiles", "min_max"), "action_norm", self.action_norm,
              "'quantiles' or 'min_max' (the tokenizer bins [-1, 1])")
        check(self.backbone in ("small", "vlm"), "backbone", self.backbone, "'small' or 'vlm'")
        check(self.backbone != "vlm" or bool(self.vlm.model or self.vlm.architecture), "vlm.model", self.vlm.model,
              "a transformers VLM name or directory when backbone='vlm'")
        check(self.bins >= 2, "bins", self.bins, ">= 2")
        check(0 < self.crop_ratio <= 1, "crop_ratio", self.crop_ratio, "in (0, 1] (1: no crop)")
        for name in ("backbone_lr", "head_lr"):
            value = getattr(self, name)
            check(value is None or value > 0, name, value, "> 0 or null")
        if self.output_features:
            d = self.action_dim
            check(all(-d <= g < d for g in self.gripper_dims), "gripper_dims", self.gripper_dims,
                  f"indices of the {d} action dimensions")
        if self.backbone == "vlm":
            check(not self.language_keys or not self.language.encoder, "language.encoder", self.language.encoder,
                  "'' with backbone='vlm' (the VLM reads the instruction with its own tokenizer)")

    def resolved(self, tasks: Sequence[str] = (), features: Mapping[str, Any] | None = None) -> DDVLAConfig:
        """Records the VLM's architecture and pixel stats (backbone="vlm") or what the language encoder needs."""
        if self.backbone == "vlm":
            return dataclasses.replace(self, vlm=self.vlm.resolved())
        return super().resolved(tasks, features)

    def processor_steps(self, tasks: Sequence[str]) -> list:
        """The VLM's own tokenizer for the instruction (backbone="vlm"), else the language config's steps."""
        if self.backbone != "vlm":
            return super().processor_steps(tasks)
        from robopolicy.policies.common.pretrained import model_source
        from robopolicy.policies.processor import TaskTokenizer

        return [TaskTokenizer(model_source(self.vlm.model), key, self.language.max_length)
                for key in self.language_keys]
