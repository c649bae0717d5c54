"""A trained policy = head + normalizer, saved as a plain checkpoint directory.

Checkpoint layout: config.json (head type + config), model.safetensors (weights), stats.json (normalizer), and
processor.json (+ processor/ files: tokenizers, vocabularies) when the policy has processor steps.
`Policy.prepare` turns a raw sampler batch (or observation) into the head's inputs on the head's device:
normalized states/actions, float images, processed language; `predict_chunk` returns unnormalized actions
(B, H, D), or (B, N, H, D) with num_samples=N.
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
from robopolicy.policies.base import FeatureSpec, LossOutput, PolicyConfig
from robopolicy.policies.processor import Processor
from robopolicy.policies.registry import config_from_dict, config_to_dict, feature_specs, make_head

CONFIG_FILE, WEIGHTS_FILE, STATS_FILE = "config.json", "model.safetensors", "stats.json"
TASK_KEY = "task"  # the sampler's per-frame instruction string, as a "language" input


class Policy(nn.Module):
    def __init__(self, config: PolicyConfig, normalizer: Normalizer, processor: Processor | None = None):
        super().__init__()
        self.config = config
        self.normalizer = normalizer
        self.processor = processor or Processor()
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
        processor: Processor | None = None,
        **overrides,
    ) -> Policy:
        """Build a fresh policy whose features come from `dataset` (state + image/video inputs, one action output).

        An input key "task" is the language instruction (the dataset's per-frame task string)."""
        if input_keys is None:
            input_keys = [k for k, f in dataset.features.items() if f.kind in ("state", "image", "video")]
        language = [k for k in input_keys if k == TASK_KEY]
        specs = feature_specs({k: dataset.feature(k) for k in [*input_keys, action_key] if k not in language})
        specs.update({k: FeatureSpec((), "language") for k in language})
        action = specs.pop(action_key)
        action = type(action)(action.shape, "action")
        config = config_cls(input_features=specs, output_features={action_key: action}, **overrides)
        if language and not dataset.tasks:
            raise StatsMismatchError(f"{dataset.root} has no task strings, but {TASK_KEY!r} (the instruction) is "
                                     "among the policy's inputs; record tasks or drop it from the inputs")
        processor = processor if processor is not None else Processor(config.processor_steps(dataset.tasks))
        return cls(config, make_normalizer(config, stats), processor)

    # ----- training / inference ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head.device

    def prepare(self, batch: Mapping[str, object]) -> dict[str, object]:
        """Raw windows -> head inputs on the head's device and in its dtype: states/actions normalized, uint8
        images -> [0, 1], language (a string or one per sample) through the processor steps."""
        out: dict[str, object] = {}
        device, dtype = self.head.device, self.head.dtype
        size = next((len(batch[k]) for k in self.config.windowed_inputs if k in batch), 1)
        for key, spec in {**self.config.input_features, **self.config.output_features}.items():
            if key not in batch:
                continue
            x = batch[key]
            if spec.kind == "language":  # one instruction for the whole batch, or one per sample
                out[key] = [x] * size if isinstance(x, str) else list(x)
                if len(out[key]) != size:
                    raise ValueError(f"{key!r}: {len(out[key])} instructions for a batch of {size}")
                continue
            x = torch.as_tensor(x).to(device, non_blocking=True)
            if spec.kind == "image":
                out[key] = x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)
            else:
                out[key] = self.normalizer.normalize(key, x.to(dtype))
            pad = f"{key}_is_pad"
            if pad in batch:
                out[pad] = torch.as_tensor(batch[pad]).to(device, non_blocking=True)
        return self.processor(out, device)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        return self.head.loss(self.prepare(batch))

    def forward(self, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        """The training loss (forward exists so DistributedDataParallel can wrap a Policy)."""
        return self.loss(batch)

    @torch.no_grad()
    def predict_chunk(
        self, obs: Mapping[str, object], generator: torch.Generator | None = None, *, guide=None,
        num_samples: int | None = None,
    ) -> torch.Tensor:
        """Raw observation windows {key: (B, T_o, ...)} (+ "task": str or B strings for a language input) ->
        unnormalized action chunk (B, H, D), or (B, N, H, D) with num_samples=N, on the head's device.

        guide: sampling guidance (robopolicy.runtime.rtc) for heads with the GUIDANCE capability."""
        missing = [k for k in self.config.input_features if k not in obs]
        if missing:
            raise KeyError(f"observation lacks {missing}; the policy was trained on {list(self.config.input_features)}")
        chunk = self.head.sample(self.prepare(obs), num_samples=num_samples, generator=generator, guide=guide)
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
        self.processor.save(directory)
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
                    if f.kind not in ("image", "language")}
        normalizer.check_compatible(expected, source=str(directory / STATS_FILE))
        policy = cls(config, normalizer, Processor.load(directory))
        weights = load_file(str(directory / WEIGHTS_FILE))
        check_weights(policy.head.state_dict(), weights, directory / WEIGHTS_FILE)
        policy.head.load_state_dict(weights)
        return policy.to(map_location).eval()

    def check_dataset(self, dataset: Dataset) -> None:
        """Refuse a dataset whose keys or shapes differ from what the policy was trained on."""
        for key, spec in {**self.config.input_features, **self.config.output_features}.items():
            if spec.kind == "language":
                continue  # the sampler's task strings
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


def check_weights(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: Path) -> None:
    """Refuse weights whose keys or shapes differ from the head built from config.json, naming the tensors."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(found[k].shape)}, head {tuple(v.shape)}" for k, v in expected.items()
              if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "",
                 f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}" if unexpected else "",
                 f"shape mismatch {shapes[:5]}" if shapes else ""]
        raise StatsMismatchError(f"{source} does not fit the head its config.json describes: "
                                 + "; ".join(p for p in parts if p) + " (config and weights from different runs?)")


def make_normalizer(config: PolicyConfig, stats: Mapping[str, Mapping]) -> Normalizer:
    modes = {k: config.state_norm for k, f in config.input_features.items() if f.kind not in ("image", "language")}
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
