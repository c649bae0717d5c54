"""Offline-RL methods by name: a frozen config dataclass and an UpdateRule built from it.

A method defined elsewhere registers with `register_method("name", ConfigClass, RuleClass)` and is then
available to `robopolicy finetune --method name` like a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robopolicy.config_parsing import ConfigError, from_plain, suggest

_METHODS: dict[str, tuple[type, Callable[[Any], Any]]] = {}


def register_method(name: str, config_class: type, rule_class: Callable[[Any], Any]) -> None:
    _METHODS[name] = (config_class, rule_class)


@dataclass(frozen=True)
class BCConfig:
    """Continued behaviour cloning (the head's own loss on the dataset): the control of every RL fine-tune."""


def _builtins() -> None:
    if "pa_rl" not in _METHODS:
        from robopolicy.rl.co_rft import CORFT, CORFTConfig
        from robopolicy.rl.pa_rl import PARL, PARLConfig
        from robopolicy.rl.ptr import PTR, PTRConfig
        from robopolicy.train.update import BehaviourCloning

        register_method("bc", BCConfig, lambda config: BehaviourCloning())
        register_method("pa_rl", PARLConfig, PARL)
        register_method("co_rft", CORFTConfig, CORFT)
        register_method("ptr", PTRConfig, PTR)


def available_methods() -> list[str]:
    _builtins()
    return sorted(_METHODS)


def method_config(rl: dict[str, Any]):
    """The validated config of the `rl` section: {"method": name, **fields}."""
    _builtins()
    fields = dict(rl)
    name = fields.pop("method", None)
    if name not in _METHODS:
        names = available_methods()
        raise ConfigError(f"rl.method={name!r}: not an offline-RL method; available: {', '.join(names)}"
                          f"{suggest(str(name), names)}")
    return from_plain(_METHODS[name][0], fields, ("rl",))


def build_rule(rl: dict[str, Any]):
    """The UpdateRule of the `rl` section."""
    config = method_config(rl)
    return _METHODS[rl["method"]][1](config)


def describe_method(name: str) -> str:
    """Every config field of method `name` as `--rl.field=default  type: help` lines."""
    from robopolicy.config_parsing import field_lines

    _builtins()
    if name not in _METHODS:
        raise ConfigError(f"--method {name!r}: not an offline-RL method; available: {', '.join(available_methods())}")
    return "\n".join(f"  {flag:<44} {kind}" + (f": {text}" if text else "")
                     for flag, kind, text in field_lines(_METHODS[name][0], "rl"))
