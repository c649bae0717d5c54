"""Head registry, open to other packages.

`@register_policy` on a config class registers it by its `name`; defining a `PolicyHead` subclass registers the
head for its config. Built-in heads are imported on first lookup; heads of other packages are found through the
`robopolicy.policies` entry-point group (value: the module that registers the config), or by importing their
module before use. The head class of a config is the one registered for it, else the one its `head_class` names
("Class" in the config package's sibling `modeling` module, or "package.module:Class"), imported lazily.
"""

from __future__ import annotations

import dataclasses
import importlib
from importlib.metadata import entry_points
from typing import Any

from robopolicy.config_parsing import from_plain
from robopolicy.policies.base import FeatureSpec, PolicyConfig, PolicyHead

ENTRY_POINT_GROUP = "robopolicy.policies"
_CONFIGS: dict[str, type[PolicyConfig]] = {}
_HEADS: dict[str, type[PolicyHead]] = {}


def register_policy(cls: type[PolicyConfig]) -> type[PolicyConfig]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a `name` ClassVar to be registered")
    if cls.name in _CONFIGS and _CONFIGS[cls.name] is not cls and _qualname(_CONFIGS[cls.name]) != _qualname(cls):
        raise TypeError(f"policy name {cls.name!r} is already registered by {_qualname(_CONFIGS[cls.name])}")
    _CONFIGS[cls.name] = cls
    return cls


def register_head(cls: type[PolicyHead]) -> type[PolicyHead]:
    """Called for every concrete PolicyHead subclass when it is defined."""
    name = cls.config_class.name
    if not name:
        raise TypeError(f"{cls.__name__}.config_class {cls.config_class.__name__} has no registered `name`")
    _HEADS[name] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# Heads that ship with robopolicy; imported on first lookup so `import robopolicy` stays light.
BUILTIN_HEADS = ("diffusion", "flow", "act", "moe_act", "dd_vla", "lerobot_act", "lerobot_diffusion")


def _plugin_entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_policies() -> list[str]:
    """Every registered head: built-in, imported, and advertised by installed packages' entry points."""
    for name in BUILTIN_HEADS:
        _import_head(name)
    for name in _plugin_entry_points():
        _import_head(name)
    return sorted(_CONFIGS)


def _import_head(name: str) -> None:
    if name in _CONFIGS:
        return
    if name in BUILTIN_HEADS:
        importlib.import_module(f"robopolicy.policies.{name}.configuration")
        return
    ep = _plugin_entry_points().get(name)
    if ep is not None:
        try:
            ep.load()
        except Exception as exc:
            raise ImportError(f"policy {name!r}: loading entry point {ep.value!r} of group {ENTRY_POINT_GROUP!r} "
                              f"failed: {type(exc).__name__}: {exc}") from exc
        if name not in _CONFIGS:
            raise ImportError(f"entry point {name} = {ep.value!r} ({ENTRY_POINT_GROUP}) did not register a policy "
                              f"config named {name!r}")


def get_config_class(name: str) -> type[PolicyConfig]:
    _import_head(name)
    try:
        return _CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; available: {available_policies()} (a head from another package "
                       f"registers through the {ENTRY_POINT_GROUP!r} entry-point group or by being imported)"
                       ) from None


def head_class_for(config: PolicyConfig) -> type[PolicyHead]:
    name = config.name
    if name not in _HEADS:
        ref = type(config).head_class
        if not ref:
            raise TypeError(f"{type(config).__name__} names no head_class and no PolicyHead registered for {name!r}")
        if ":" in ref:
            module_name, _, cls_name = ref.partition(":")
        else:
            module_name, cls_name = type(config).__module__.rpartition(".")[0] + ".modeling", ref
        getattr(importlib.import_module(module_name), cls_name)  # defining the class registers it
        if name not in _HEADS:
            raise TypeError(f"{module_name}.{cls_name} is not a PolicyHead for config {type(config).__name__}")
    head_cls = _HEADS[name]
    if not isinstance(config, head_cls.config_class):
        raise TypeError(f"{head_cls.__name__} takes {head_cls.config_class.__name__}, got {type(config).__name__}")
    return head_cls


def make_head(config: PolicyConfig) -> PolicyHead:
    return head_class_for(config)(config)


# ----- (de)serialization of frozen config dataclasses to plain JSON-able dicts ---------------------
def config_to_dict(config: PolicyConfig) -> dict[str, Any]:
    return {"type": config.name, **_to_plain(config)}


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


def config_from_dict(data: dict[str, Any]) -> PolicyConfig:
    data = dict(data)
    cls = get_config_class(data.pop("type"))
    return from_plain(cls, data)


def feature_specs(features: dict[str, Any]) -> dict[str, FeatureSpec]:
    """{key: FeatureSpec} from dataset features; images become (C, H, W)."""
    out = {}
    for key, f in features.items():
        if f.kind in ("image", "video"):
            h, w, c = f.shape
            out[key] = FeatureSpec((c, h, w), "image")
        else:
            out[key] = FeatureSpec(tuple(f.shape), f.kind)
    return out
