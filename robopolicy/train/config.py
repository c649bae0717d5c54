"""Typed, frozen training config, loaded from a YAML preset with dotted command-line overrides.

A preset has four sections: `policy` (head `type` + that head's config fields), `data`, `optim`, `train`,
and optionally `eval` and `rl` (the offline-RL method of `robopolicy finetune`: `method` + its fields).
`--train.steps=2000 --policy.denoiser.unet.down_dims=[64,128,256]` override any field;
values are parsed as YAML (with YAML 1.2 booleans: only true/false, so `amp: off` is the string "off").
Every invalid value is a `ConfigError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from robopolicy.config_parsing import ConfigError, check, field_lines, from_plain, suggest
from robopolicy.policies.base import PolicyConfig
from robopolicy.policies.registry import available_policies, get_config_class

# head config fields that come from the dataset, not from the preset
DATASET_FIELDS = ("input_features", "output_features")


@dataclass(frozen=True)
class DataConfig:
    uri: str = ""  # dataset to train on: a Zarr store or LeRobot v3 directory (required)
    input_keys: tuple[str, ...] | None = None  # observation keys; null: every state and image feature
    action_key: str = "action"  # the dataset key the policy predicts
    episodes: tuple[int, ...] | None = None  # episode indices to train on; null: all
    cache_mb: float = 0.0  # RAM cache of decoded video frames, in MB (0: none)
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    balance: Literal["frames", "episodes", "tasks"] = "frames"  # draw windows uniformly, or each episode / task equally
    streaming: bool = False  # read a LeRobot v3 dataset (hf://, fsspec URL) in place, fetching only what is read
    stream_cache_dir: str | None = None  # block cache of streaming; null: ~/.cache/robopolicy/stream
    stream_cache_gb: float = 20.0  # bound of that cache on disk, in GB

    def __post_init__(self):
        check(self.input_keys is None or len(self.input_keys) > 0, "input_keys", self.input_keys,
              "a non-empty list of keys, or null for every state and image feature")
        check(self.episodes is None or len(self.episodes) > 0, "episodes", self.episodes,
              "a non-empty list of episode indices, or null for all")
        check(self.episodes is None or min(self.episodes) >= 0, "episodes", self.episodes, "indices >= 0")
        check(self.cache_mb >= 0, "cache_mb", self.cache_mb, ">= 0")
        check(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        check(self.stream_cache_gb > 0, "stream_cache_gb", self.stream_cache_gb, "> 0")

    def open_options(self) -> dict[str, Any]:
        """Keyword arguments of robopolicy.data.dataset.open_dataset for this section."""
        if not self.streaming:
            return {"cache_mb": self.cache_mb}
        return {"cache_mb": self.cache_mb, "streaming": True, "cache_dir": self.stream_cache_dir,
                "cache_gb": self.stream_cache_gb}


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4  # peak AdamW learning rate (linear warmup, then cosine decay to 0)
    betas: tuple[float, float] = (0.95, 0.999)  # AdamW betas
    weight_decay: float = 1e-6  # AdamW weight decay
    warmup_steps: int = 500  # linear learning-rate warmup steps
    grad_clip: float = 1.0  # clip the gradient norm to this

    def __post_init__(self):
        check(self.lr > 0, "lr", self.lr, "> 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "two values in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        check(self.grad_clip > 0, "grad_clip", self.grad_clip, "> 0")


@dataclass(frozen=True)
class TrainLoopConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # global batch, split across processes
    seed: int = 0  # seed of initialization, sampling and noise (each process adds its rank)
    ema_power: float = 0.75  # EMA warmup power (decay = 1 - (1 + step)^-power); 0 disables EMA
    ema_max_decay: float = 0.9999  # upper bound of the EMA decay
    amp: Literal["auto", "bf16", "off"] = "auto"  # bf16 autocast: auto (CUDA devices with bf16), always, never
    log_every: int = 50  # steps between metric logs
    save_every: int = 1000  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 0  # keep only this many newest step_<N>/ checkpoints of the run; 0: keep all
    eval_every: int = 0  # steps between simulation evaluations (needs eval.env); 0: never
    output_dir: str = "outputs/train"  # run directory: checkpoints, metrics.csv, tensorboard, eval
    overwrite: bool = False  # replace an existing run in output_dir (otherwise refuse, or use --resume)
    tensorboard: bool = True  # write tensorboard logs under output_dir/tensorboard
    wandb_project: str | None = None  # log to Weights & Biases too (needs `pip install wandb`)
    progress: bool = True  # show a progress bar
    fsdp: bool = False  # shard the policy's weights, grads, optimizer state over processes (FSDP2); needs ema_power 0

    def __post_init__(self):
        check(self.steps >= 1, "steps", self.steps, ">= 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        check(self.seed >= 0, "seed", self.seed, ">= 0")
        check(self.ema_power >= 0, "ema_power", self.ema_power, ">= 0 (0 disables EMA)")
        check(0 <= self.ema_max_decay < 1, "ema_max_decay", self.ema_max_decay, "in [0, 1)")
        check(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        check(self.save_every >= 1, "save_every", self.save_every, ">= 1")
        check(self.keep_checkpoints >= 0, "keep_checkpoints", self.keep_checkpoints, ">= 0 (0 keeps all)")
        check(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0 (0: never)")
        check(self.output_dir != "", "output_dir", self.output_dir, "a directory path")
        check(not self.fsdp or self.ema_power == 0, "ema_power", self.ema_power,
              "0 with fsdp=true (the EMA would keep a full copy of the sharded weights on every process)")
        check(not self.fsdp or self.eval_every == 0, "eval_every", self.eval_every,
              "0 with fsdp=true (evaluate the saved checkpoint with `robopolicy eval`)")


@dataclass(frozen=True)
class EvalConfig:
    env: str | None = None  # simulation to evaluate in (pusht, robosuite:Lift, ...); null: no evaluation
    episodes: int = 10  # episodes per evaluation
    seed: int = 100_000  # seed of the first episode (episode i uses seed + i)
    n_envs: int = 1  # environments stepped in parallel
    max_steps: int | None = None  # episode step limit; null: the environment's own
    videos: int = 1  # episodes recorded as videos

    def __post_init__(self):
        check(self.episodes >= 1, "episodes", self.episodes, ">= 1")
        check(self.seed >= 0, "seed", self.seed, ">= 0")
        check(self.n_envs >= 1, "n_envs", self.n_envs, ">= 1")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, ">= 1 or null")
        check(self.videos >= 0, "videos", self.videos, ">= 0")


@dataclass(frozen=True)
class TrainConfig:
    # head `type` + the head config fields the preset sets (validated against that head's config class)
    policy: dict[str, Any] = field(default_factory=lambda: {"type": "diffusion"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # offline-RL fine-tuning (robopolicy finetune): the method `method` + its config fields; empty for training
    rl: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.policy_config()
        if self.rl:
            from robopolicy.rl.registry import method_config

            method_config(self.rl)
        if self.train.eval_every > 0 and self.eval.env is None:
            raise ConfigError(f"train.eval_every={self.train.eval_every}: needs eval.env (e.g. --eval.env=pusht), "
                              "or 0 to never evaluate")

    def policy_config(self) -> PolicyConfig:
        """The head config that `policy` describes (its own defaults for the fields it leaves out), validated."""
        fields = dict(self.policy)
        cls = policy_class(fields.pop("type", None))
        for key in DATASET_FIELDS:
            if key in fields:
                raise ConfigError(f"policy.{key}: comes from the dataset; choose the inputs with data.input_keys "
                                  "and the action with data.action_key")
        return from_plain(cls, fields, ("policy",))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def policy_class(name: Any) -> type[PolicyConfig]:
    """The registered head config class called `name`, or a ConfigError listing the registered heads."""
    if isinstance(name, str):
        try:
            return get_config_class(name)
        except KeyError:
            pass
    heads = available_policies()
    raise ConfigError(f"policy.type={name!r}: must be one of {', '.join(map(repr, heads))}"
                      f"{suggest(str(name), heads)} (heads of other packages register through entry points)")


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: yes/no/on/off stay strings (and are refused for bools)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ["--a.b.c=value", ...] to a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.lstrip("-").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like --section.field=value")
        node = data
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
        node[parts[-1]] = parse_yaml(raw, f"override {item!r}")
    return data


def merge_sections(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` laid over `base`, mappings merged key by key (update wins), anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge_sections(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """The preset at `path` (or the defaults) laid over `base` (e.g. what a checkpoint being fine-tuned fixes),
    with `overrides` applied, validated."""
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"--config {path}: cannot read the preset ({e.strerror})") from None
        data = parse_yaml(text, str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a training preset must be a YAML mapping of sections")
    data = apply_overrides(merge_sections(base or {}, data), overrides or [])
    if not isinstance(data.get("policy", {}), dict):
        raise ConfigError(f"policy={data['policy']!r}: must be a mapping with the head `type` and its fields")
    data.setdefault("policy", {}).setdefault("type", "diffusion")
    return from_plain(TrainConfig, data)


def describe_fields(policy_type: str = "diffusion") -> str:
    """Every field with its default, type and one line of help: the sections, then the head `policy_type`."""
    lines = []
    defaults = TrainConfig()
    for name in ("data", "optim", "train", "eval"):
        lines += [f"{name}:", *_format(field_lines(type(getattr(defaults, name)), name))]
    cls = policy_class(policy_type)
    others = ", ".join(h for h in available_policies() if h != policy_type)
    lines += [f"policy (--policy.type={policy_type}; other heads: {others}; see "
              "robopolicy train --policy.type=NAME --help):",
              *_format(field_lines(cls, "policy", skip=DATASET_FIELDS))]
    return "\n".join(lines)


def _format(rows) -> list[str]:
    return [f"  {flag:<44} {kind}" + (f": {text}" if text else "") for flag, kind, text in rows]
