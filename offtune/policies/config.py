"""Hyper-parameter dataclasses: presets per dataset family, and ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
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
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = value if isinstance(value, (tuple, list)) else _split_list(str(value))
        try:
            coerced = [_coerce(key, v, item_type) for v in items]
        except OfftuneError:
            name = getattr(item_type, "__name__", str(item_type))
            raise OfftuneError(f"--set {key}={value}: expected a comma-separated list of {name}, like 256,256"
                               ) from None
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
            whole = float(value) if isinstance(value, str) and "e" in value.lower() else value
            if isinstance(whole, float) and not whole.is_integer():
                raise ValueError(value)
            return int(whole)
        if annotation is float:
            number = float(value)
            if not math.isfinite(number):
                raise OfftuneError(f"{key} must be a finite number, got {value}")
            return number
        if annotation is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        name = getattr(annotation, "__name__", str(annotation))
        raise OfftuneError(f"--set {key}={value}: expected a value of type {name}") from None
    return value


def _split_list(text: str) -> list[str]:
    """``256,256``, ``(256, 256)`` or ``[256, 256]`` -> the items as strings."""
    text = text.strip()
    if text[:1] in ("[", "(") and text[-1:] in ("]", ")"):
        text = text[1:-1]
    return [item.strip() for item in text.split(",") if item.strip()]


def _check_bounds(config: Any) -> None:
    """A pair of settings ``X_min`` and ``X_max`` must leave room between them (the algorithm clamps to it)."""
    names = {f.name for f in dataclasses.fields(config)}
    for low_name in sorted(name for name in names if name.endswith("_min")):
        high_name = low_name.removesuffix("_min") + "_max"
        if high_name not in names:
            continue
        low, high = getattr(config, low_name), getattr(config, high_name)
        if low is not None and high is not None and not low < high:
            raise OfftuneError(f"{low_name} must be below {high_name}, got {low} and {high}")


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
    config = dataclasses.replace(config, **changes)
    _check_bounds(config)
    return config


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
