"""Head registry: `@register_policy` on a config class; the head module is found by convention
(`robopolicy.policies.<name>.modeling`, class named in the config's `head_class`) and imported lazily."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Any

from robopolicy.policies.base import FeatureSpec, PolicyConfig, PolicyHead

_CONFIGS: dict[str, type[PolicyConfig]] = {}


def register_policy(cls: type[PolicyConfig]) -> type[PolicyConfig]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a `name` ClassVar to be registered")
    if cls.name in _CONFIGS and _CONFIGS[cls.name] is not cls:
        raise TypeError(f"policy name {cls.name!r} is already registered by {_CONFIGS[cls.name].__name__}")
    _CONFIGS[cls.name] = cls
    return cls


# Heads that ship with robopolicy; imported on first lookup so `import robopolicy` stays light.
BUILTIN_HEADS = ("diffusion", "flow", "act")


def available_policies() -> list[str]:
    for name in BUILTIN_HEADS:
        _import_head(name)
    return sorted(_CONFIGS)


def _import_head(name: str) -> None:
    if name in BUILTIN_HEADS and name not in _CONFIGS:
        importlib.import_module(f"robopolicy.policies.{name}.configuration")


def get_config_class(name: str) -> type[PolicyConfig]:
    _import_head(name)
    try:
        return _CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; available: {available_policies()}") from None


def make_head(config: PolicyConfig) -> PolicyHead:
    module = importlib.import_module(f"robopolicy.policies.{config.name}.modeling")
    head_cls = getattr(module, config.head_class)
    return head_cls(config)


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


def from_plain(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config fields {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return from_plain(hint, value)
    if origin is dict and len(args) == 2:
        return {k: _coerce(args[1], v) for k, v in value.items()}
    if origin is tuple:
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value)
            except (TypeError, ValueError):
                continue
    return value


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
