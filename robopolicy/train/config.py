"""Typed, frozen training config, loaded from a YAML preset with dotted command-line overrides.

A preset has four sections: `policy` (head `type` + that head's config fields), `data`, `optim`, `train`,
and optionally `eval`. `--train.steps=2000 --policy.denoiser.unet.down_dims=[64,128,256]` override any field;
values are parsed as YAML scalars/lists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robopolicy.policies.registry import from_plain


@dataclass(frozen=True)
class DataConfig:
    """uri: dataset to train on; input_keys: observation keys (default: every state and image feature);
    episodes: train episodes (default all); cache_mb: RAM cache of decoded frames; fps: for zarr stores without it."""

    uri: str = ""
    input_keys: tuple[str, ...] | None = None
    action_key: str = "action"
    episodes: tuple[int, ...] | None = None
    cache_mb: float = 0.0
    num_workers: int = 0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainLoopConfig:
    """steps: optimizer steps; batch_size: global batch (split across processes); ema_power: 0 disables EMA.
    amp: "auto" uses bf16 autocast on CUDA devices that support it, "bf16" forces it (also on CPU), "off"."""

    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    amp: str = "auto"
    log_every: int = 50
    save_every: int = 1000
    eval_every: int = 0
    output_dir: str = "outputs/train"
    overwrite: bool = False  # replace an existing run in output_dir (otherwise refuse, or use --resume)
    tensorboard: bool = True
    wandb_project: str | None = None  # log to Weights & Biases too (needs `pip install wandb`)
    progress: bool = True


@dataclass(frozen=True)
class EvalConfig:
    env: str | None = None
    episodes: int = 10
    seed: int = 100_000
    n_envs: int = 1
    max_steps: int | None = None
    videos: int = 1


@dataclass(frozen=True)
class TrainConfig:
    policy: dict[str, Any] = field(default_factory=lambda: {"type": "diffusion"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ["a.b.c=value", ...] to a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.lstrip("-").partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like --section.field=value")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training preset must be a YAML mapping")
    data = apply_overrides(data, overrides or [])
    unknown = set(data) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; expected policy, data, optim, train, eval")
    data.setdefault("policy", {}).setdefault("type", "diffusion")
    return from_plain(TrainConfig, data)
