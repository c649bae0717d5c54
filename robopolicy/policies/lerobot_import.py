"""LeRobot ACT and Diffusion Policy checkpoints -> robopolicy policies (heads lerobot_act / lerobot_diffusion).

Reads what `PreTrainedPolicy.save_pretrained` writes:
- config.json (`"type": "act" | "diffusion"`, input/output features, normalization_mapping) and model.safetensors;
- LeRobot >= 0.4 (processor pipelines): the normalizer stats in the file that policy_preprocessor.json's
  `normalizer_processor` step names (policy_preprocessor_step_<i>_normalizer_processor.safetensors, keys
  "<feature>.<stat>"); the action's unnormalizer stats in policy_postprocessor.json's step are checked against it;
- LeRobot 0.1 - 0.3 (normalization inside the model): the `normalize_inputs.buffer_<key>.<stat>`,
  `normalize_targets.*` and `unnormalize_outputs.*` buffers of model.safetensors.
A directory may be the pretrained_model folder itself, a LeRobot checkpoint step (…/checkpoints/000100) or a
training run (its checkpoints/last). Nothing is trained or changed: the weights are LeRobot's, by name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopolicy.config_parsing import ConfigError
from robopolicy.data.normalize import Normalizer
from robopolicy.policies.base import FeatureSpec, PolicyConfig
from robopolicy.policies.common.lerobot_parts import ENV_STATE, LEROBOT_EPS
from robopolicy.policies.policy import (
    CheckpointError,
    CheckpointMismatchError,
    Policy,
    read_json,
    read_weights,
    resolve_checkpoint,
    weights_mismatch,
)
from robopolicy.policies.registry import from_plain, get_config_class

SOURCE_FILE = "lerobot_source.json"  # provenance written next to an imported checkpoint
HEADS = {"act": "lerobot_act", "diffusion": "lerobot_diffusion"}
LEROBOT_TYPES = {head: kind for kind, head in HEADS.items()}
MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "IDENTITY": "identity", "QUANTILES": "quantiles"}
KINDS = {"VISUAL": "image", "STATE": "state", "ENV": "state", "ACTION": "action"}
# LeRobot config fields that do not shape the network or its inference (training, hub and device settings)
IGNORED = {"type", "device", "use_amp", "use_peft", "push_to_hub", "repo_id", "private", "tags", "license",
           "pretrained_path", "pretrained_backbone_weights", "optimizer_lr", "optimizer_weight_decay",
           "optimizer_lr_backbone", "optimizer_betas", "optimizer_eps", "scheduler_name", "scheduler_warmup_steps",
           "compile_model", "compile_mode", "drop_n_last_frames", "crop_ratio", "normalization_mapping",
           "input_features", "output_features"}
RENAMED = {"chunk_size": "horizon"}
OLD_BUFFERS = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


def find_lerobot_checkpoint(path: str | Path) -> Path | None:
    """The pretrained_model directory of a LeRobot checkpoint at or under `path`, or None when it is not one."""
    path = Path(path)
    for candidate in (path, path / "pretrained_model", path / "checkpoints" / "last" / "pretrained_model"):
        if is_lerobot_checkpoint(candidate):
            return candidate
    return None


def is_lerobot_checkpoint(directory: Path) -> bool:
    """A config.json in LeRobot's layout (its `normalization_mapping`), not robopolicy's."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "normalization_mapping" in config


def load_lerobot_policy(path: str | Path) -> Policy:
    """A LeRobot checkpoint as a robopolicy Policy (eval mode, CPU); a CheckpointError / ConfigError naming the
    file and field otherwise."""
    directory = find_lerobot_checkpoint(path)
    if directory is None:
        if (Path(path) / "config.json").is_file():
            read_json(Path(path) / "config.json", "LeRobot policy config")  # unreadable or not JSON: says which
        raise CheckpointError(f"{path}: not a LeRobot checkpoint (no config.json with `normalization_mapping` here, "
                              "in pretrained_model/ or in checkpoints/last/pretrained_model/)")
    lr_config = read_json(directory / "config.json", "LeRobot policy config")
    weights = read_weights(directory / "model.safetensors")
    stats = _read_stats(directory, weights)
    config = convert_config(lr_config, directory / "config.json")
    stats = _feature_keys(stats, [*config.input_features, *config.output_features])
    normalizer = Normalizer({k: stats.get(k, {}) for k in config.norm_modes()}, _modes(config, stats),
                            eps_std=LEROBOT_EPS)
    policy = Policy(config, normalizer)
    state = {k: v for k, v in weights.items() if not k.startswith(OLD_BUFFERS)}
    if config.name == "lerobot_diffusion":
        from robopolicy.policies.lerobot_diffusion.modeling import lerobot_unet_key

        state = {lerobot_unet_key(k): v for k, v in state.items()}
    head = policy.head
    if config.cameras:  # a camera without stats passes through, as LeRobot's normalizer leaves it
        identity = {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0}
        head.image_norm.set_stats({cam: stats.get(cam) or {k: [v] * config.input_features[cam].shape[0]
                                                           for k, v in identity.items()} for cam in config.cameras})
    state.update({f"image_norm.{k}": v for k, v in head.image_norm.state_dict().items()})
    mismatch = weights_mismatch(head.state_dict(), state)
    if mismatch:
        raise CheckpointMismatchError(f"{directory / 'model.safetensors'} does not fit the {lr_config['type']!r} "
                                      f"network its config.json describes: {mismatch}")
    head.load_state_dict(state)
    return policy.eval()


def import_lerobot(src: str | Path, out: str | Path) -> Path:
    """Write the robopolicy checkpoint (config.json, model.safetensors, stats.json) of a LeRobot checkpoint to
    `out`, with lerobot_source.json recording where it came from; returns `out`."""
    local = resolve_checkpoint(src) if str(src).startswith("hf:/") else Path(src)
    directory = find_lerobot_checkpoint(local)
    policy = load_lerobot_policy(local)
    out = Path(out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    policy.save(staging)
    layout = "processor files (LeRobot >= 0.4)" if (directory / "policy_preprocessor.json").is_file() else \
        "normalization buffers in model.safetensors (LeRobot < 0.4)"
    (staging / SOURCE_FILE).write_text(json.dumps({"source": str(src), "directory": str(directory),
                                                   "lerobot_type": LEROBOT_TYPES[policy.config.name],
                                                   "head": policy.config.name,
                                                   "stats_from": layout}, indent=2))
    staging.rename(out)  # complete or absent
    return out


def convert_config(lr: Mapping[str, Any], path: Path) -> PolicyConfig:
    """LeRobot's config.json -> the lerobot_act / lerobot_diffusion config; errors name the file and field."""
    kind = lr.get("type")
    if kind not in HEADS:
        raise ConfigError(f"{path}: field 'type' is {kind!r}; robopolicy imports LeRobot policies of type "
                          f"{sorted(HEADS)}")
    cls = get_config_class(HEADS[kind])
    inputs, cameras = {}, []
    for key, feat in (lr.get("input_features") or {}).items():
        inputs[key] = _feature(path, "input_features", key, feat)
        if inputs[key].kind == "image":
            cameras.append(key)
    outputs = {key: _feature(path, "output_features", key, feat) for key, feat in
               (lr.get("output_features") or {}).items()}
    mapping = lr.get("normalization_mapping") or {}
    norms = {}
    for ftype, field in (("STATE", "state_norm"), ("ACTION", "action_norm"), ("VISUAL", "image_norm"),
                         ("ENV", "env_state_norm")):
        mode = mapping.get(ftype, "IDENTITY")
        if mode not in MODES or (field == "image_norm" and MODES[mode] == "quantiles"):
            raise ConfigError(f"{path}: normalization_mapping.{ftype} is {mode!r}; supported: {sorted(MODES)}")
        norms[field] = MODES[mode]
    fields = {RENAMED.get(k, k): v for k, v in lr.items() if k not in IGNORED}
    known = set(cls.__dataclass_fields__)
    unknown = sorted(k for k in fields if k not in known)
    if unknown:
        raise ConfigError(f"{path}: LeRobot fields {unknown} are not understood by robopolicy's {cls.name} head; "
                          "the checkpoint comes from a LeRobot version this importer does not read (see "
                          "`robopolicy import-lerobot --help`)")
    try:
        typed = from_plain(cls, {**fields, **norms})
        values = {k: getattr(typed, k) for k in {**fields, **norms}}
        return cls(input_features=inputs, output_features=outputs, camera_order=tuple(cameras), **values)
    except (ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


def _feature(path: Path, section: str, key: str, feat: Any) -> FeatureSpec:
    if not isinstance(feat, Mapping) or feat.get("type") not in KINDS or not isinstance(feat.get("shape"), list):
        raise ConfigError(f"{path}: {section}.{key} must be {{'type': one of {sorted(KINDS)}, 'shape': [...]}}, "
                          f"got {feat!r}")
    if feat["type"] == "ENV" and key != ENV_STATE:
        raise ConfigError(f"{path}: {section}.{key} is an ENV feature; LeRobot's ACT / Diffusion read it as "
                          f"{ENV_STATE!r} only")
    return FeatureSpec(tuple(int(d) for d in feat["shape"]), KINDS[feat["type"]])


def _read_stats(directory: Path, weights: Mapping[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """{feature: {stat: array}} from the processor files (>= 0.4) or the model's normalization buffers (< 0.4)."""
    pre = directory / "policy_preprocessor.json"
    if pre.is_file():
        stats = _pipeline_stats(pre, "normalizer_processor")
        post = directory / "policy_postprocessor.json"
        if post.is_file():
            for key, values in _pipeline_stats(post, "unnormalizer_processor").items():
                for stat, value in values.items():
                    if key in stats and stat in stats[key] and not np.allclose(stats[key][stat], value):
                        raise CheckpointError(f"{post}: the unnormalizer's {key}.{stat} differs from the "
                                              f"normalizer's in {pre.name}; the processor files do not belong "
                                              "together")
        return stats
    stats: dict[str, dict[str, np.ndarray]] = {}
    for name, value in weights.items():
        if name.startswith(OLD_BUFFERS):
            _, buffer, stat = name.split(".", 2)
            stats.setdefault(buffer.removeprefix("buffer_"), {})[stat] = value.numpy().astype(np.float64)
    if not stats:
        raise CheckpointError(f"{directory}: no normalization stats: neither policy_preprocessor.json (LeRobot >= "
                              "0.4) nor normalize_inputs.* buffers in model.safetensors (older LeRobot)")
    return stats  # keys as the buffers spell them ("observation_state"); see _feature_keys


def _pipeline_stats(pipeline: Path, registry_name: str) -> dict[str, dict[str, np.ndarray]]:
    spec = read_json(pipeline, "LeRobot processor pipeline")
    steps = [s for s in spec.get("steps", []) if isinstance(s, dict) and s.get("registry_name") == registry_name]
    if not steps or not steps[0].get("state_file"):
        raise CheckpointError(f"{pipeline}: no {registry_name!r} step with a state_file; cannot find the "
                              "normalization stats")
    state_file = pipeline.parent / steps[0]["state_file"]
    stats: dict[str, dict[str, np.ndarray]] = {}
    for name, value in read_weights(state_file, "normalizer stats").items():
        key, _, stat = name.rpartition(".")
        stats.setdefault(key, {})[stat] = value.numpy().astype(np.float64)
    return stats


def _modes(config: PolicyConfig, stats: Mapping[str, Mapping]) -> dict[str, str]:
    """The config's modes; a key without stats is passed through, as LeRobot's normalizer does."""
    return {k: mode if k in stats else "identity" for k, mode in config.norm_modes().items()}


def _feature_keys(stats: dict[str, dict[str, np.ndarray]], keys: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Stats under the feature keys: old buffer names ("observation_state") -> "observation.state"."""
    by_flat = {k.replace(".", "_"): k for k in keys}
    return {by_flat.get(k, k): v for k, v in stats.items()}
