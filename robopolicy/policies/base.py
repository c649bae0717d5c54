"""The policy-head contract.

A head is a frozen config (registered by name; declares its windows, builds fake inputs and a tiny test variant)
and an `nn.Module` with three duties:

- `loss(batch) -> LossOutput`: per-sample (B,) or per-step (B, H) losses, the valid mask, named batch-level
  auxiliary losses and metrics (tensors: no host sync per step).
- `encode(obs) -> Tensor (B, ...)`: the observation conditioning (image/state encoders, run once per observation),
  reusable by critics and RL methods.
- `sample(obs, *, num_samples=None, generator=None, guide=None)`: a normalized chunk (B, H, D), or
  (B, N, H, D) for `num_samples=N`; each observation is encoded once whatever N is.

Optional capabilities are declared in `capabilities`, never discovered with isinstance:
`GUIDANCE` (the head calls a `Guide` at every denoising step, what real-time chunking needs), `LANGUAGE` (the
head conditions on a "language" input; a head without it refuses one instead of ignoring the instruction) and
`DIFFERENTIABLE_SAMPLING` (`sample_from_condition` run with gradients enabled is differentiable in the head's
parameters: the reparameterised chunk, noise from the generator; what an actor-critic update such as CO-RFT's
needs. `sample` itself always runs without gradients).

Everything else (action queues, temporal ensembling, real-time chunking) lives in `robopolicy.runtime`;
normalization and processors live in the policy wrapper, so heads see normalized tensors only.
"""

from __future__ import annotations

import dataclasses
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robopolicy.config_parsing import ConfigError
from robopolicy.policies.common.text_encoder import LanguageConfig

GUIDANCE = "guidance"
LANGUAGE = "language"
TOKENIZED_ACTIONS = "tokenized_actions"  # discrete action tokens: `head.tokenizer`, `head.token_logits` (dd_vla)
DIFFERENTIABLE_SAMPLING = "differentiable_sampling"  # sample_from_condition carries gradients when enabled
CAPABILITIES = frozenset({GUIDANCE, LANGUAGE, TOKENIZED_ACTIONS, DIFFERENTIABLE_SAMPLING})


@dataclass(frozen=True)
class DenoisingStep:
    """What a guidable head tells its guide at one denoising step, in the head's own parameterization.

    tau: noise level in flow time, 0 = pure noise, 1 = data; noise_std: std of the noise in x at this step
    (flow: 1 - tau; VP diffusion: sqrt(1 - abar)); to_x0(x, out): the clean chunk the sampler will use for
    network output `out` (differentiable in x; clipped where the sampler clips); x0_per_out: d x0 / d out (a
    scalar: every supported parameterization is affine in the output).
    """

    tau: float
    noise_std: float
    to_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    x0_per_out: float


# guide(denoise, x, step) -> the output the sampler uses instead of denoise(x); denoise(x) evaluates the network
# at this step for noisy chunks x (B, H, D). Built by robopolicy.runtime.rtc (PiGDM), usable by any guidable head.
Guide = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, DenoisingStep], torch.Tensor]


@dataclass(frozen=True)
class FeatureSpec:
    """Shape of one input or output feature as the head sees it: state/action (D,), image (C, H, W),
    language () (one instruction string per sample)."""

    shape: tuple[int, ...]
    kind: str  # "state" | "image" | "action" | "language"


@dataclass(frozen=True)
class PolicyConfig:
    """Base of every head's config. Subclasses are frozen dataclasses registered with `@register_policy`.

    input_features / output_features: {dataset key: FeatureSpec}; exactly one output of kind "action";
    a "language" input (the dataset's `task`) is a string per sample. n_obs_steps: observation history T_o;
    horizon: predicted chunk length H.
    """

    name: ClassVar[str] = ""
    std_floor: ClassVar[float] = 1e-2  # the Normalizer's floor on std (mean_std mode)
    # the head class: "Class" in the sibling `modeling` module of the config's package, or "package.module:Class"
    head_class: ClassVar[str] = ""
    input_features: dict[str, FeatureSpec] = field(default_factory=dict)
    output_features: dict[str, FeatureSpec] = field(default_factory=dict)
    n_obs_steps: int = 1
    horizon: int = 16
    n_action_steps: int = 8
    state_norm: str = "min_max"  # Normalizer mode for state inputs (see robopolicy.data.normalize)
    action_norm: str = "min_max"
    language: LanguageConfig = field(default_factory=LanguageConfig)  # how a "language" input is read

    def __post_init__(self):
        if len(self.language_keys) > 1:
            raise ConfigError(f"{type(self).__name__}: one instruction input at most, got {self.language_keys}")

    @classmethod
    def for_tests(cls, input_features: dict[str, FeatureSpec], output_features: dict[str, FeatureSpec],
                  **overrides: Any) -> PolicyConfig:
        """A small, fast instance for contract tests (heads override `test_overrides` to shrink themselves)."""
        return cls(input_features=input_features, output_features=output_features,
                   **{**cls.test_overrides(), **overrides})

    @classmethod
    def test_overrides(cls) -> dict[str, Any]:
        """Field values (typed) that make this head tiny; {} by default."""
        return {}

    def resolved(self, tasks: Sequence[str] = (), features: Mapping[str, Any] | None = None) -> PolicyConfig:
        """This config with what a fresh policy records once, from the dataset (its task strings and its features,
        {key: robopolicy.data.features.Feature}) and the named pretrained models: the learned embedding's tasks
        or the text encoder's architecture (see robopolicy.policies.common.pretrained). A head with its own
        pretrained parts or dataset-derived sizes (a phase vocabulary) extends it."""
        if not self.language_keys:
            return self
        return self.replace(language=self.language.resolved(tasks))

    def processor_steps(self, tasks: Sequence[str]) -> list:
        """The processor steps (robopolicy.policies.processor) a fresh policy of this head needs, given the
        dataset's task strings: a TaskVocabulary or a TaskTokenizer for a language input (`language`)."""
        return [step for key in self.language_keys for step in self.language.processor_steps(key)]

    def norm_modes(self) -> dict[str, str]:
        """{feature key: Normalizer mode} for the numeric inputs and the action (images are the head's business)."""
        modes = dict.fromkeys(self.state_keys, self.state_norm)
        modes[self.action_key] = self.action_norm
        return modes

    @property
    def action_key(self) -> str:
        keys = [k for k, f in self.output_features.items() if f.kind == "action"]
        if len(keys) != 1:
            raise ValueError(f"{type(self).__name__}: expected exactly one action output, got {keys}")
        return keys[0]

    @property
    def action_dim(self) -> int:
        return self.output_features[self.action_key].shape[-1]

    @property
    def language_keys(self) -> list[str]:
        return [k for k, f in self.input_features.items() if f.kind == "language"]

    @property
    def state_keys(self) -> list[str]:
        """The numeric inputs (every input but images and the instruction), sorted: what heads read as state."""
        return sorted(k for k, f in self.input_features.items() if f.kind not in ("image", "language"))

    @property
    def image_keys(self) -> list[str]:
        """The camera inputs, sorted."""
        return sorted(k for k, f in self.input_features.items() if f.kind == "image")

    @property
    def windowed_inputs(self) -> list[str]:
        """Inputs loaded as frame windows (everything but language)."""
        return [k for k, f in self.input_features.items() if f.kind != "language"]

    @property
    def obs_delta_indices(self) -> list[int]:
        """Frame offsets of the observation window, oldest first, ending at the current frame (0)."""
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        """Frame offsets of the predicted action chunk (diffusion_policy: starts at the first obs step)."""
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))

    def delta_indices(self) -> dict[str, list[int]]:
        """What the WindowSampler must load for this head (language travels as the sampler's `task`)."""
        out = {k: self.obs_delta_indices for k in self.windowed_inputs}
        out[self.action_key] = self.action_delta_indices
        return out

    def fake_batch(self, batch_size: int = 2, generator: torch.Generator | None = None) -> dict[str, Any]:
        """A normalized training batch with the right shapes (images float in [0, 1]; language: strings)."""
        batch: dict[str, Any] = {}
        for key, steps in self.delta_indices().items():
            spec = self.input_features.get(key) or self.output_features[key]
            shape = (batch_size, len(steps), *spec.shape)
            batch[key] = (
                torch.rand(shape, generator=generator)
                if spec.kind == "image"
                else torch.randn(shape, generator=generator)
            )
            batch[f"{key}_is_pad"] = torch.zeros(batch_size, len(steps), dtype=torch.bool)
        for key in self.language_keys:
            batch[key] = [f"fake task {i % 2}" for i in range(batch_size)]
        return batch

    def fake_obs(self, batch_size: int = 2, generator: torch.Generator | None = None) -> dict[str, Any]:
        batch = self.fake_batch(batch_size, generator)
        return {k: v for k, v in batch.items() if k in self.input_features}

    def replace(self, **changes: Any) -> PolicyConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class LossOutput:
    """A head's training loss, before reduction.

    per_sample: (B,) or per chunk step (B, H), padded steps already zeroed; valid: (B, H) bool, True on the steps
    that count (None: all); aux: named batch-level scalar losses added to the total (e.g. a MoE load balance);
    metrics: named detached scalar tensors for logging (converted to floats only when logged).

    `loss` = mean of per_sample over every entry (padded steps count as zeros, as LeRobot reduces) + sum(aux);
    `weighted(w)` replaces the mean over samples by a w-weighted one (w (B,), e.g. PTR / AWR weights), so that
    `weighted(ones) == loss`.
    """

    per_sample: torch.Tensor
    valid: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def sample_losses(self) -> torch.Tensor:
        """(B,) loss per sample: per_sample averaged over its steps (padded steps count as zeros)."""
        return self.per_sample if self.per_sample.dim() == 1 else self.per_sample.flatten(1).mean(1)

    def valid_mean(self) -> torch.Tensor:
        """(B,) loss per sample averaged over its valid steps only (0 for a sample without any)."""
        if self.valid is None or self.per_sample.dim() == 1:
            return self.sample_losses()
        v = self.valid.to(self.per_sample.dtype)
        return (self.per_sample * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp_min(1.0)

    def weighted(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        per = self.sample_losses()
        total = per.mean() if weights is None else (weights.to(per.dtype) * per).mean()
        for value in self.aux.values():
            total = total + value
        return total

    @property
    def loss(self) -> torch.Tensor:
        return self.weighted()

    def log_values(self) -> dict[str, torch.Tensor]:
        """Everything worth logging, as detached scalar tensors: metrics and each auxiliary loss."""
        out = dict(self.metrics)
        out.update({f"aux/{k}": v.detach() for k, v in self.aux.items()})
        return out


def repeat_condition(cond: Any, n: int) -> Any:
    """Repeat an encoded observation (a tensor or a dict/tuple of tensors, batch first) n times per sample:
    (B, ...) -> (B * n, ...), sample-major (rows b*n .. b*n+n-1 belong to observation b)."""
    if n == 1:
        return cond
    if torch.is_tensor(cond):
        return cond.repeat_interleave(n, 0)
    if isinstance(cond, dict):
        return {k: repeat_condition(v, n) for k, v in cond.items()}
    if isinstance(cond, tuple | list):
        return type(cond)(repeat_condition(v, n) for v in cond)
    return cond


class PolicyHead(nn.Module, ABC):
    """A policy head. Inputs and outputs are normalized; images are float (B, T_o, C, H, W) in [0, 1].

    Subclasses implement `loss`, `encode` and `sample_from_condition`; `sample` is shared. A subclass is
    registered for its config's name when it is defined (an external package's head works like a built-in one).
    """

    config_class: ClassVar[type[PolicyConfig]]
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if ABC in cls.__bases__:
            return
        if not getattr(cls, "config_class", None):
            raise TypeError(f"{cls.__name__} must set `config_class`")
        unknown = set(cls.capabilities) - CAPABILITIES
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        from robopolicy.policies.registry import register_head

        register_head(cls)

    def __init__(self, config: PolicyConfig):
        if config.language_keys and not self.supports(LANGUAGE):
            raise ConfigError(f"{type(self).__name__} does not condition on an instruction, but {config.language_keys} "
                              "is among its inputs: drop it from data.input_keys or use a head with the "
                              f"{LANGUAGE!r} capability")
        super().__init__()
        self.config = config

    def load_pretrained_weights(self) -> None:
        """Read the weights of the head's pretrained parts (a text encoder, a VLM backbone) from the models their
        configs name; called once when a policy is created (never on checkpoint load: those weights are in
        model.safetensors). Every submodule with a `load_pretrained_weights` method gets the call."""
        for module in self.modules():
            if module is not self and callable(getattr(module, "load_pretrained_weights", None)):
                module.load_pretrained_weights()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the trainable parameters (frozen ones are left out); a group may set its
        own "lr" (the trainer's schedule scales every group from its own base). One group by default."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def fsdp_layer_classes(self) -> set[type[nn.Module]]:
        """The repeated blocks FSDP shards one by one (train.fsdp); everything else is one unit. None by default."""
        return set()

    @classmethod
    def supports(cls, capability: str) -> bool:
        return capability in cls.capabilities

    @property
    def device(self) -> torch.device:
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        return torch.device("cpu") if first is None else first.device

    @property
    def dtype(self) -> torch.dtype:
        first = next((p for p in self.parameters() if p.dtype.is_floating_point), None)
        return torch.float32 if first is None else first.dtype

    @abstractmethod
    def loss(self, batch: dict[str, Any]) -> LossOutput:
        """Training loss on a normalized batch of windows."""

    @abstractmethod
    def encode(self, obs: dict[str, Any]) -> Any:
        """Observation windows {key: (B, T_o, ...)} -> the conditioning the sampler uses, batch first
        (a tensor, or a dict/tuple of tensors)."""

    @abstractmethod
    def sample_from_condition(self, cond: Any, *, generator: torch.Generator | None = None,
                              guide: Guide | None = None) -> torch.Tensor:
        """Encoded observations (batch B') -> normalized chunks (B', H, D)."""

    @torch.no_grad()
    def sample(self, obs: dict[str, Any], *, num_samples: int | None = None,
               generator: torch.Generator | None = None, guide: Guide | None = None) -> torch.Tensor:
        """Normalized action chunks: (B, H, D), or (B, N, H, D) with num_samples=N. Each observation is encoded
        once; the N chunks of one observation are independent draws (identical for a deterministic head)."""
        if guide is not None and not self.supports(GUIDANCE):
            raise TypeError(f"{type(self).__name__} does not offer guided sampling (capabilities: "
                            f"{sorted(self.capabilities) or 'none'}); real-time chunking needs a guidable head")
        n = 1 if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        cond = self.encode(obs)
        chunks = self.sample_from_condition(repeat_condition(cond, n), generator=generator, guide=guide)
        return chunks if num_samples is None else chunks.unflatten(0, (-1, n))
