"""Strict decoding of plain (YAML / JSON) data into frozen config dataclasses, and their field listing for --help.

`from_plain(cls, data)` refuses unknown keys (suggesting close matches), nulls for fields that are not optional,
values outside a Literal's choices, values of the wrong type (draccus decodes and type-checks the values) and
values that a dataclass's `__post_init__` refuses (`check`). Every error is a `ConfigError` that names the field
path, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import draccus
from draccus.utils import DecodingError
from draccus.wrappers.docstring import get_attribute_docstring

# The normalization modes of robopolicy.data.normalize.MODES, as a type for config fields.
NormMode = Literal["min_max", "mean_std", "quantiles", "identity"]


class ConfigError(ValueError):
    """An invalid config value; the message names the field path, the value and what is allowed."""


class FieldError(ConfigError):
    """`field`=`value` breaks a rule of its dataclass; `from_plain` prefixes the field with its path."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r}: must be {allowed}")


def check(ok: bool, field: str, value: Any, allowed: str) -> None:
    """For `__post_init__` range checks: `check(self.steps >= 1, "steps", self.steps, ">= 1")`."""
    if not ok:
        raise FieldError(field, value, allowed)


def dotted(path: Sequence[str]) -> str:
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path).lstrip(".")


def suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def from_plain(cls: type, data: Any, path: Sequence[str] = ()) -> Any:
    """A validated `cls` dataclass from a plain mapping; `path` is where the mapping sits (for messages)."""
    path = tuple(path)
    where = dotted(path) or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}={data!r}: must be a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [str(key) for key in data if key not in names]
    if unknown:
        listed = ", ".join(dotted((*path, key)) + suggest(key, names) for key in unknown)
        has = f"has: {', '.join(names)}" if names else "has no fields to set"
        raise ConfigError(f"unknown config fields {listed}; {where} {has}")
    kwargs = {name: _coerce(hints[name], value, (*path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise FieldError(dotted((*path, e.field)), e.value, e.allowed) from None


def _options(hint: Any) -> tuple[tuple[Any, ...], bool]:
    """The non-None members of a (possibly Optional) hint, and whether None is allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return tuple(a for a in args if a is not type(None)), type(None) in args
    return (hint,), False


def _coerce(hint: Any, value: Any, path: tuple[str, ...]) -> Any:
    if hint is Any:
        return value
    where = dotted(path)
    options, nullable = _options(hint)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{where}=None: must be {type_name(hint)} (this field cannot be null)")
    classes = [a for a in options if dataclasses.is_dataclass(a)]
    if classes:
        return value if isinstance(value, classes[0]) else from_plain(classes[0], value, path)
    if len(options) == 1 and typing.get_origin(options[0]) is Literal:
        choices = typing.get_args(options[0])
        if value not in choices:
            raise ConfigError(f"{where}={value!r}: must be one of {', '.join(map(repr, choices))}"
                              f"{suggest(str(value), [str(c) for c in choices])}")
        return value
    # draccus reads True as 1, a string or a mapping as a sequence and anything as a str: refuse those here
    sequence = any(typing.get_origin(a) is tuple for a in options)
    mapping = any(typing.get_origin(a) is dict or a is dict for a in options)
    wrong = (
        (isinstance(value, dict) and not mapping)
        or (mapping and len(options) == 1 and not isinstance(value, Mapping))
        or (isinstance(value, list | tuple) and not sequence)
        or (isinstance(value, str) and sequence and str not in options)
        or (isinstance(value, bool) and bool not in options and any(a in (int, float) for a in options))
    )
    if wrong:
        raise ConfigError(f"{where}={value!r}: must be {type_name(hint)}")
    try:
        return draccus.decode(hint, value)
    except DecodingError as e:
        raise ConfigError(f"{dotted((*path, *map(str, e.key_path)))}: {' '.join(e.message.split())} "
                          f"(must be {type_name(hint)})") from None
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ConfigError(f"{where}={value!r}: must be {type_name(hint)} ({e})") from None


def type_name(hint: Any) -> str:
    """A short human name of a field type: int, list of int, one of 'a', 'b', ... or null."""
    options, nullable = _options(hint)
    names = []
    for a in options:
        origin, args = typing.get_origin(a), typing.get_args(a)
        if origin is Literal:
            names.append("one of " + ", ".join(map(repr, args)))
        elif origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                names.append(f"a list of {type_name(args[0])}")
            else:
                names.append(f"a list [{', '.join(type_name(x) for x in args)}]")
        elif origin is dict:
            names.append("a mapping")
        elif dataclasses.is_dataclass(a):
            names.append(f"a mapping of {a.__name__} fields")
        else:
            names.append(getattr(a, "__name__", str(a)))
    return " or ".join([*names, "null"] if nullable else names)


def field_lines(
    cls: type, prefix: str, defaults: Any = None, skip: Sequence[str] = ()
) -> Iterator[tuple[str, str, str]]:
    """(--dotted.name=default, type, one-line help) for every field of `cls`, nested dataclasses flattened;
    `defaults`: an instance whose values are shown (default: the fields' own defaults)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        name, value = f"{prefix}.{f.name}", _default(f) if defaults is None else getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            yield from field_lines(type(value), name, value)
            continue
        doc = get_attribute_docstring(cls, f.name)
        text = doc.comment_inline or doc.comment_above or doc.docstring_below or _inline_comment(cls, f.name)
        yield f"--{name}={_plain_str(value)}", type_name(hints[f.name]), " ".join(text.split())


def _inline_comment(cls: type, name: str) -> str:
    """The `# ...` comment on the line defining field `name` in `cls` or a base class; draccus' parser skips
    lines whose annotation holds quotes (Literal["a", "b"])."""
    pattern = re.compile(rf"^\s*{re.escape(name)}\s*:[^#]*#\s?(.*)$")
    for klass in cls.__mro__:
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for line in lines:
            match = pattern.match(line)
            if match:
                return match.group(1)
    return ""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"


def _plain_str(value: Any) -> str:
    """How a value is written on the command line (YAML): null, true, [1,2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(_plain_str(v) for v in value) + "]"
    return str(value)
