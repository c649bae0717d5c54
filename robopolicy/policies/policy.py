"""A trained policy = head + normalizer, saved as a plain checkpoint directory.

Checkpoint layout: config.json (head type + config), model.safetensors (weights), stats.json (normalizer).
`Policy.prepare` turns a raw sampler batch into the head's normalized inputs; `predict_chunk` returns
unnormalized actions (B, H, D).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robopolicy.data.dataset import Dataset
from robopolicy.data.normalize import Normalizer, StatsMismatchError
from robopolicy.policies.base import LossOutput, PolicyConfig
from robopolicy.policies.registry import config_from_dict, config_to_dict, feature_specs, make_head

CONFIG_FILE, WEIGHTS_FILE, STATS_FILE = "config.json", "model.safetensors", "stats.json"


class Policy(nn.Module):
    def __init__(self, config: PolicyConfig, normalizer: Normalizer):
        super().__init__()
        self.config = config
        self.normalizer = normalizer
        self.head = make_head(config)

    # ----- construction --------------------------------------------------------------------------
    @classmethod
    def from_dataset(
        cls,
        config_cls: type[PolicyConfig],
        dataset: Dataset,
        stats: Mapping[str, Mapping],
        *,
        input_keys: Sequence[str] | None = None,
        action_key: str = "action",
        **overrides,
    ) -> Policy:
        """Build a fresh policy whose features come from `dataset` (state + image/video inputs, one action output)."""
        if input_keys is None:
            input_keys = [k for k, f in dataset.features.items() if f.kind in ("state", "image", "video")]
        specs = feature_specs({k: dataset.feature(k) for k in [*input_keys, action_key]})
        action = specs.pop(action_key)
        action = type(action)(action.shape, "action")
        config = config_cls(input_features=specs, output_features={action_key: action}, **overrides)
        return cls(config, make_normalizer(config, stats))

    # ----- training / inference ------------------------------------------------------------------
    def prepare(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw windows -> normalized head inputs: states/actions normalized, uint8 images -> float in [0, 1]."""
        out = {}
        keys = [*self.config.input_features, *self.config.output_features]
        for key in keys:
            if key not in batch:
                continue
            x = batch[key]
            spec = self.config.input_features.get(key) or self.config.output_features[key]
            if spec.kind == "image":
                out[key] = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            else:
                out[key] = self.normalizer.normalize(key, x.float())
            pad = f"{key}_is_pad"
            if pad in batch:
                out[pad] = batch[pad]
        return out

    def loss(self, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        return self.head.loss(self.prepare(batch))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """The training loss (forward exists so DistributedDataParallel can wrap a Policy)."""
        return self.loss(batch)

    @torch.no_grad()
    def predict_chunk(
        self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None, *, guide=None
    ) -> torch.Tensor:
        """Raw observation windows {key: (B, T_o, ...)} -> unnormalized action chunk (B, H, D).

        guide: sampling guidance for flow / diffusion heads (see robopolicy.runtime.rtc), in normalized units."""
        missing = [k for k in self.config.input_features if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing}; the policy was trained on {list(self.config.input_features)}")
        extra = {} if guide is None else {"guide": guide}
        chunk = self.head.sample(self.prepare(obs), generator=generator, **extra)
        return self.normalizer.unnormalize(self.config.action_key, chunk)

    # ----- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write config.json, model.safetensors (the given weights, e.g. EMA, or the live ones) and stats.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(config_to_dict(self.config), indent=2))
        weights = {k: v.detach().cpu().contiguous() for k, v in (state_dict or self.head.state_dict()).items()}
        save_file(weights, str(directory / WEIGHTS_FILE))
        self.normalizer.save(directory / STATS_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path, map_location: str = "cpu") -> Policy:
        """Load a checkpoint directory, or a training run directory (its checkpoints/last)."""
        directory = resolve_checkpoint(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory}: checkpoint file {name} is missing")
        config = config_from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        normalizer = Normalizer.load(directory / STATS_FILE)
        expected = {k: f.shape for k, f in {**config.input_features, **config.output_features}.items()
                    if f.kind != "image"}
        normalizer.check_compatible(expected, source=str(directory / STATS_FILE))
        policy = cls(config, normalizer)
        policy.head.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=map_location))
        return policy.eval()

    def check_dataset(self, dataset: Dataset) -> None:
        """Refuse a dataset whose keys or shapes differ from what the policy was trained on."""
        for key, spec in {**self.config.input_features, **self.config.output_features}.items():
            if key not in dataset.features:
                raise StatsMismatchError(
                    f"policy expects feature {key!r} which {dataset.root} lacks; it has {sorted(dataset.features)}"
                )
            feat = dataset.features[key]
            shape = feat.shape if not feat.is_visual else (feat.shape[2], feat.shape[0], feat.shape[1])
            if tuple(shape) != tuple(spec.shape):
                raise StatsMismatchError(
                    f"feature {key!r}: policy was trained on shape {spec.shape}, {dataset.root} has {tuple(shape)}"
                )


def make_normalizer(config: PolicyConfig, stats: Mapping[str, Mapping]) -> Normalizer:
    modes = {k: config.state_norm for k, f in config.input_features.items() if f.kind != "image"}
    modes[config.action_key] = config.action_norm
    return Normalizer({k: stats[k] for k in modes if k in stats}, modes)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, or for a run dir the one named in <run>/checkpoints/last."""
    path = Path(path)
    last = path / "checkpoints" / "last"
    if not (path / CONFIG_FILE).exists() and last.exists():
        return last.parent / last.read_text().strip()
    return path


def load_policy(directory: str | Path, map_location: str = "cpu") -> Policy:
    return Policy.load(directory, map_location)
