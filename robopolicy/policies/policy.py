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
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robopolicy.config_parsing import ConfigError, dotted
from robopolicy.data.dataset import Dataset
from robopolicy.data.normalize import Normalizer, StatsMismatchError
from robopolicy.policies.base import DIFFERENTIABLE_SAMPLING, FeatureSpec, LossOutput, PolicyConfig
from robopolicy.policies.processor import Processor
from robopolicy.policies.registry import config_from_dict, config_to_dict, feature_specs, make_head

CONFIG_FILE, WEIGHTS_FILE, STATS_FILE = "config.json", "model.safetensors", "stats.json"
TRAIN_CONFIG_FILE = "train_config.json"  # the run's TrainConfig, saved beside the policy by the trainer
TASK_KEY = "task"  # the sampler's per-frame instruction string, as a "language" input
CORRUPT_HINT = "re-save the checkpoint or pick another one (e.g. an earlier checkpoints/step_* directory)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (missing, corrupt or inconsistent files); the message names the file
    and says what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory, a file in it, or the run's checkpoints/last pointer is missing."""


class CheckpointMismatchError(CheckpointError):
    """Weights whose keys or shapes differ from the head that config.json describes."""


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

        An input key "task" is the language instruction (the dataset's per-frame task string). The config records
        what creation resolves (PolicyConfig.resolved) and pretrained parts load their weights here, once."""
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
        config = config.resolved(dataset.tasks, dataset.features)
        processor = processor if processor is not None else Processor(config.processor_steps(dataset.tasks))
        policy = cls(config, make_normalizer(config, stats), processor)
        policy.head.load_pretrained_weights()
        return policy

    # ----- training / inference ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head.device

    def prepare(self, batch: Mapping[str, object]) -> dict[str, object]:
        """Raw windows -> head inputs on the head's device and in its dtype: states/actions normalized, uint8
        images -> [0, 1], language (a string or one per sample) through the processor steps; other windows the
        head's delta_indices() declares (per-frame labels, e.g. moe_act's phases) as they are."""
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
        for key in self.config.delta_indices():  # windows a head loads beside its features (labels): unnormalized
            if key in out or key not in batch:
                continue
            for name in (key, f"{key}_is_pad"):
                if name in batch:
                    out[name] = torch.as_tensor(batch[name]).to(device, non_blocking=True)
        return self.processor(out, device)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> LossOutput:
        return self.head.loss(self.prepare(batch))

    def forward(self, batch: Mapping[str, torch.Tensor], *, sample: bool = False,
                generator: torch.Generator | None = None) -> LossOutput | torch.Tensor:
        """The training loss (forward exists so DistributedDataParallel can wrap a Policy); with `sample`, a
        normalized chunk (B, H, D) carrying gradients, for heads with DIFFERENTIABLE_SAMPLING (an actor update
        through the wrapper, so that DDP reduces its gradients)."""
        if not sample:
            return self.loss(batch)
        if not self.head.supports(DIFFERENTIABLE_SAMPLING):
            raise TypeError(f"{type(self.head).__name__} has no differentiable sampling (capabilities: "
                            f"{sorted(self.head.capabilities) or 'none'})")
        return self.head.sample_from_condition(self.head.encode(self.prepare(batch)), generator=generator)

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
        weights = plain_tensors(state_dict or self.head.state_dict())
        save_file(weights, str(directory / WEIGHTS_FILE))
        self.normalizer.save(directory / STATS_FILE)
        self.processor.save(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path, map_location: str = "cpu") -> Policy:
        """Load a checkpoint directory, or a training run directory (its checkpoints/last).

        Every failure is a CheckpointError (or ConfigError / StatsMismatchError / ProcessorError) naming the file
        and, where it applies, the field, key or parameter."""
        directory = resolve_checkpoint(directory)
        from robopolicy.policies.lerobot_import import is_lerobot_checkpoint, load_lerobot_policy

        if is_lerobot_checkpoint(directory):
            return load_lerobot_policy(directory).to(map_location)
        for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE):
            if not (directory / name).is_file():
                raise CheckpointNotFoundError(f"{directory}: checkpoint file {name} is missing; pass a checkpoint "
                                              "directory (config.json, model.safetensors, stats.json) or a training "
                                              "run directory")
        config = read_config(directory / CONFIG_FILE)
        normalizer = read_stats(directory / STATS_FILE, config)
        processor = Processor.load(directory)
        try:
            policy = cls(config, normalizer, processor)
        except (ConfigError, StatsMismatchError):
            raise
        except Exception as e:
            raise CheckpointError(f"{directory / CONFIG_FILE}: cannot build the {config.name!r} head it describes "
                                  f"({type(e).__name__}: {e}); {CORRUPT_HINT}") from e
        weights = read_weights(directory / WEIGHTS_FILE)
        mismatch = weights_mismatch(policy.head.state_dict(), weights)
        if mismatch:
            raise CheckpointMismatchError(
                f"{directory / WEIGHTS_FILE} does not fit the head its config.json describes: {mismatch}; "
                f"{_matching_config_hint(directory, config, weights)}")
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


def plain_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors stores it: detached, on the CPU, contiguous, and tied weights (a text encoder's
    shared embeddings) written once per name, as copies (safetensors refuses tensors that share memory)."""
    out, seen = {}, set()
    for key, value in state.items():
        v = value.detach().cpu().contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[key] = v
    return out


def weights_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """How `found` differs from the `expected` state dict: the first parameter of another shape (both shapes),
    then the counts of shape mismatches, missing and unexpected tensors; "" when they fit."""
    shapes = [k for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    kinds = [k for k, v in expected.items() if k in found and k not in shapes
             and found[k].is_floating_point() != v.is_floating_point()]
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"parameter {k!r} has shape {tuple(found[k].shape)} in the file but {tuple(expected[k].shape)} "
                     f"in the head" + (f" ({len(shapes) - 1} more parameters differ in shape)" if len(shapes) > 1
                                       else ""))
    if kinds:
        parts.append(f"parameter {kinds[0]!r} is {found[kinds[0]].dtype} in the file but "
                     f"{expected[kinds[0]].dtype} in the head")
    if missing:
        parts.append(f"{len(missing)} parameter(s) missing from the file (first: {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected parameter(s) in the file (first: {unexpected[0]!r})")
    return "; ".join(parts)


def _matching_config_hint(directory: Path, config: PolicyConfig, weights: Mapping[str, torch.Tensor]) -> str:
    """What to do about weights that do not fit config.json: name the fields of the run's train_config.json
    whose head fits them, when there is one, else say that config and weights come from different runs."""
    generic = ("config.json and model.safetensors come from different runs or head settings: put back the "
               "config.json saved with these weights, or pick a checkpoint directory whose files belong together")
    preset = _train_config_policy(directory)
    if not preset:
        return generic
    plain = config_to_dict(config)
    candidate = _merge(plain, {k: v for k, v in preset.items() if k not in ("input_features", "output_features")})
    if candidate == plain:
        return generic
    try:
        shapes = make_head(config_from_dict(candidate)).state_dict()  # on the CPU (some heads refuse "meta")
    except Exception:  # the run's preset no longer builds a head: no better advice than the generic one
        return generic
    if weights_mismatch(shapes, weights):
        return generic
    changes = ", ".join(f"{dotted(path)}={new!r} (config.json has {old!r})"
                        for path, old, new in _differences(plain, candidate))
    return (f"the weights fit the policy of {directory / TRAIN_CONFIG_FILE}: set {changes} in config.json, "
            f"or copy the policy fields from {TRAIN_CONFIG_FILE}")


def _train_config_policy(directory: Path) -> dict[str, Any] | None:
    """The `policy` section of train_config.json beside (or one level above) the checkpoint, if readable."""
    for path in (directory / TRAIN_CONFIG_FILE, directory.parent.parent / TRAIN_CONFIG_FILE):
        try:
            policy = json.loads(path.read_text()).get("policy")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(policy, dict):
            return policy
    return None


def _merge(base: Any, update: Any) -> Any:
    """`base` with the values of `update` (nested mappings merged key by key)."""
    if isinstance(base, dict) and isinstance(update, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in update.items()}}
    return update


def _differences(a: Any, b: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(field path, value in a, value in b) for every leaf where the nested mappings a and b differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), (*path, str(k)))]
    return [] if a == b else [(path, a, b)]


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON of a checkpoint file, or a CheckpointError naming the file (`what`: what the file holds)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: the checkpoint's {what} file is missing; {CORRUPT_HINT}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint's {what} ({e}); {CORRUPT_HINT}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt {what}, not valid JSON ({e}); {CORRUPT_HINT}") from None


def read_config(path: Path) -> PolicyConfig:
    """The head config in a checkpoint's config.json; a ConfigError naming the file and the field when a value
    is of the wrong type, unknown or out of range."""
    data = read_json(path, "policy config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a JSON object with the head `type` and its fields, got "
                          f"{type(data).__name__}; {CORRUPT_HINT}")
    if not isinstance(data.get("type"), str):
        problem = "missing" if "type" not in data else f"{data['type']!r}, not a string"
        raise ConfigError(f"{path}: field 'type' (the head name) is {problem}; {CORRUPT_HINT}")
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except KeyError as e:  # an unknown head type
        raise ConfigError(f"{path}: field 'type': {e.args[0] if e.args else e}") from None
    except (TypeError, ValueError) as e:  # a head config's own __post_init__ refusing a value
        raise ConfigError(f"{path}: {e}") from None


def read_stats(path: Path, config: PolicyConfig) -> Normalizer:
    """The normalizer in a checkpoint's stats.json, checked against the features of `config`."""
    data = read_json(path, "normalizer stats")
    try:
        if not isinstance(data, dict) or not isinstance(data.get("stats"), dict) or not isinstance(
                data.get("modes"), dict):
            raise TypeError("expected a JSON object with 'modes' and 'stats' mappings")
        normalizer = Normalizer.from_json(data)
    except StatsMismatchError as e:
        raise StatsMismatchError(f"{path}: {e.args[0] if e.args else e}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: corrupt normalizer stats ({type(e).__name__}: {e}); {CORRUPT_HINT}") from None
    for key, values in normalizer.stats.items():
        for name, value in values.items():
            if not np.issubdtype(np.asarray(value).dtype, np.number) or not np.isfinite(value).all():
                raise CheckpointError(f"{path}: stats {key!r}/{name!r} are not finite numbers; {CORRUPT_HINT}")
    expected = {k: f.shape for k, f in {**config.input_features, **config.output_features}.items()
                if f.kind not in ("image", "language")}
    normalizer.check_compatible(expected, source=str(path))
    return normalizer


def read_weights(path: Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a CheckpointError naming the file when it is truncated, not a safetensors
    file, or holds NaN / inf."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: the checkpoint's {what} file is missing; {CORRUPT_HINT}") from None
    except Exception as e:  # safetensors raises SafetensorError (truncated, random bytes) or OSError
        raise CheckpointError(f"{path}: corrupt or truncated {what} file, not a readable safetensors file "
                              f"({' '.join(str(e).split())}); {CORRUPT_HINT}") from None
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or inf (a diverged run or a damaged file); "
                                  f"{CORRUPT_HINT}")
    return tensors


def make_normalizer(config: PolicyConfig, stats: Mapping[str, Mapping]) -> Normalizer:
    modes = config.norm_modes()
    return Normalizer({k: stats[k] for k in modes if k in stats}, modes, eps_std=config.std_floor)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir as given, or for a run dir the one named in <run>/checkpoints/last; a
    CheckpointNotFoundError saying what is missing otherwise. `hf://owner/name[@revision]` is a checkpoint on the
    hub, downloaded into the HF cache once (also as Path("hf://...") makes it, with one slash). A LeRobot run or
    checkpoint step resolves to its pretrained_model directory."""
    text = str(path)
    if text.startswith("hf:/"):
        from robopolicy.hub import HF_PREFIX, HubError, download_checkpoint

        try:
            path = download_checkpoint(HF_PREFIX + text[len("hf:/"):].lstrip("/"))
        except HubError as e:
            raise CheckpointNotFoundError(str(e)) from None
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: checkpoint file config.json is missing: no such directory; pass a "
                                      "checkpoint directory (config.json, model.safetensors, stats.json) or a "
                                      "training run directory")
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path}: is a file, not a checkpoint directory; pass the directory that "
                                      "holds config.json, model.safetensors and stats.json, or a training run")
    from robopolicy.policies.lerobot_import import find_lerobot_checkpoint

    if (path / CONFIG_FILE).exists():
        return path
    lerobot = find_lerobot_checkpoint(path)
    if lerobot is not None:
        return lerobot
    return checkpoint_from_last(path) if (path / "checkpoints").is_dir() else path


def checkpoint_from_last(run_dir: Path) -> Path:
    """The step directory that <run_dir>/checkpoints/last names; a CheckpointNotFoundError naming the pointer and
    the step directories there when it is missing, unreadable or names no directory."""
    ckpts = Path(run_dir) / "checkpoints"
    last = ckpts / "last"
    steps = sorted(p.name for p in ckpts.glob("step_*") if p.is_dir()) if ckpts.is_dir() else []
    choose = (f"pass one of {steps[-3:]} directly (or write its name into {last})" if steps
              else "no step_* directories are there either; train first")
    try:
        name = last.read_text().strip()
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{ckpts}: no `last` pointer (checkpoints/last is missing); {choose}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointNotFoundError(f"{last}: unreadable `last` pointer ({e}); {choose}") from None
    if not name or "/" in name or name in (".", ".."):
        raise CheckpointNotFoundError(f"{last}: the `last` pointer should name a step directory, got {name!r}; "
                                      f"{choose}")
    target = ckpts / name
    if not target.is_dir():
        raise CheckpointNotFoundError(f"{last} names {name}, which does not exist in {ckpts}; {choose}")
    return target


def load_policy(directory: str | Path, map_location: str = "cpu") -> Policy:
    return Policy.load(directory, map_location)
