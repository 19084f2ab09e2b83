"""Hyper-parameter dataclasses: presets per dataset family, and ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from typing import Any

from offtune.errors import OfftuneError, suggest


def _field_types(config_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn ``value`` (often a string from the command line) into the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        last_error: Exception | None = None
        for option in options:
            try:
                return _coerce(key, value, option)
            except OfftuneError as error:
                last_error = error
        raise last_error or OfftuneError(f"bad value for {key}")
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            items = json.loads(text) if text.startswith("[") else [v for v in text.strip("()").split(",") if v]
        else:
            items = list(value)
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        coerced = [_coerce(key, v, item_type) for v in items]
        return tuple(coerced) if origin is tuple else coerced
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise OfftuneError(f"--set {key}={value}: expected a value of type {name}") from None
    return value


def _require(config: Any, names: tuple[str, ...], holds: Callable[[float], bool], rule: str) -> None:
    """Settings (or any item of a tuple setting) for which ``holds`` is false fail here with their name, not deep
    in torch; NaN fails every rule."""
    for name in names:
        value = getattr(config, name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(item is not None and not holds(item) for item in items):
            raise OfftuneError(f"{name} must be {rule}, got {value}")


def at_least(config: Any, minimum: float, *names: str) -> None:
    """Counts, sizes, rates and weights that have a floor."""
    _require(config, names, lambda value: value >= minimum, f"at least {minimum}")


def positive(config: Any, *names: str) -> None:
    """Settings that divide or scale a step (a temperature, a step size): zero would break the math silently."""
    _require(config, names, lambda value: value > 0, "positive")


def within(config: Any, low: float, high: float, *names: str) -> None:
    """Settings that are fractions or probabilities."""
    _require(config, names, lambda value: low <= value <= high, f"between {low} and {high}")


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of the dataclass ``config`` with ``overrides`` applied and type-checked."""
    types_by_name = _field_types(type(config))
    changes = {}
    for key, value in overrides.items():
        if key not in types_by_name:
            raise OfftuneError(
                f"unknown setting '{key}' for {type(config).__name__.removesuffix('Config').lower()}."
                f"{suggest(key, types_by_name)}"
            )
        changes[key] = _coerce(key, value, types_by_name[key])
    return dataclasses.replace(config, **changes)


def parse_assignments(pairs: typing.Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` strings from ``--set``."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise OfftuneError(f"--set expects key=value, got '{pair}'")
        result[key.strip()] = value.strip()
    return result


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def config_from_dict(config_cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config saved with :func:`config_to_dict`, ignoring nothing silently."""
    return apply_overrides(config_cls(), data)
