"""Every setting is declared once: a field of a dataclass in lib/, with its default, help text and valid range
(TRL's `RewardConfig` style, with pydantic's bounds). The Dagster configs are derived from these
(`rm_pipeline.config`), and the CLI reads its defaults and ranges from them. Knows nothing of Dagster."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

Settings = TypeVar("Settings")
SHOWN_VALUE = 60  # characters of a refused value quoted in its message: the message stays one line
MESSAGE_LIMIT = 300  # characters of an error line at most


class SettingError(ValueError):
    """A setting (or environment variable) outside its declared range; the message is one line naming it."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number setting takes: always finite, and within the bounds given (pydantic's ge/gt/le/lt);
    `special` values (a sentinel such as -1: no limit) are allowed besides."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    special: tuple = ()

    def allows(self, value: float) -> bool:
        if value in self.special:
            return True
        return (
            math.isfinite(value)
            and (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.above is None or value > self.above)
            and (self.below is None or value < self.below)
        )

    def text(self) -> str:
        """The bounds in words: `at least 1`, `above 0 and at most 1000`, `from 0 to 1`."""
        if self.minimum is not None and self.maximum is not None:
            return f"from {self.minimum} to {self.maximum}"
        lower = f"at least {self.minimum}" if self.minimum is not None else None
        lower = f"above {self.above}" if self.above is not None else lower
        upper = f"at most {self.maximum}" if self.maximum is not None else None
        upper = f"below {self.below}" if self.below is not None else upper
        return " and ".join(bound for bound in (lower, upper) if bound)


def setting(
    default: Any,
    help: str = "",
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    special: tuple = (),
) -> Any:
    """A dataclass field with a default, the help text the UI and the CLI show, and for a number its range
    (finite always; `minimum`/`maximum` inclusive, `above`/`below` exclusive, `special` values besides)."""
    bounds = Range(minimum, maximum, above, below, special)
    return dataclasses.field(default=default, metadata={"help": help, "range": bounds})


def allowed(settings_type: type, name: str) -> str:
    """What the setting `name` may be, in words: `a whole number, at least 1`, `one of 'drop', 'soft'`."""
    hint, bounds = _declaration(settings_type, name)
    kinds = [kind for kind in _union(hint) if kind is not type(None)]
    optional = "unset, or " if len(kinds) < len(_union(hint)) else ""
    kind = kinds[0] if kinds else hint
    if typing.get_origin(kind) is Literal:
        return optional + f"one of {', '.join(map(repr, typing.get_args(kind)))}"
    if kind in (int, float):
        noun = "a whole number" if kind is int else "a finite number"
        special = "".join(f"{value} or " for value in bounds.special)
        return optional + special + noun + (f", {bounds.text()}" if bounds.text() else "")
    return optional + getattr(kind, "__name__", str(kind))


def problem(settings_type: type, name: str, value: Any) -> str | None:
    """Why `value` can't be the setting `name` (`must be ...; got ...`), or None when it can."""
    hint, bounds = _declaration(settings_type, name)
    kinds = _union(hint)
    if value is None and type(None) in kinds:
        return None
    if any(typing.get_origin(kind) is Literal and value in typing.get_args(kind) for kind in kinds):
        return None
    numeric = [kind for kind in kinds if kind in (int, float)]
    if numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
        whole = float in numeric or float(value).is_integer() or not math.isfinite(value)
        if whole and bounds.allows(value):
            return None
    elif not numeric and not any(typing.get_origin(kind) is Literal for kind in kinds):
        return None  # text and flags: their type is checked where they are parsed
    return f"must be {allowed(settings_type, name)}; got {shown(value)}"


def shown(value: Any) -> str:
    """A value as a message quotes it, cut so that the message stays one readable line."""
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE else text[: SHOWN_VALUE - 5] + "...'" + f" ({len(text)} characters)"


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message on one line, cut to `limit` characters: a hostile value never makes a 9 MB error line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 25] + f"... ({len(text)} characters)"


def check_values(settings_type: type, values: Mapping[str, Any], prefix: str) -> None:
    """Raise SettingError naming `<prefix><name>` for the first value outside its setting's range."""
    for name, value in values.items():
        reason = problem(settings_type, name, value)
        if reason is not None:
            raise SettingError(f"{prefix}{name} {reason}")


def parse_setting(settings_type: type, name: str, text: str, label: str) -> Any:
    """A number setting's value from text (an option, an environment variable), within its declared range;
    else SettingError naming `label` (`--epochs`, `$RM_PIPELINE_SENSOR_INTERVAL`) and the range."""
    try:
        value = float(text) if float in _union(_declaration(settings_type, name)[0]) else int(text)
    except ValueError:
        value = None  # not a number: refused below with the text as given
    if value is None or problem(settings_type, name, value) is not None:
        raise SettingError(f"{label} must be {allowed(settings_type, name)}; got {shown(text)}")
    return value


def check_settings(settings: Any) -> None:
    """Every field within its choices (a `Literal` type) and its range: call from `__post_init__` (the library,
    the CLI and the Dagster configs all build the dataclass). The error names `Type.field`."""
    values = {field.name: getattr(settings, field.name) for field in dataclasses.fields(settings)}
    check_values(type(settings), values, f"{type(settings).__name__}.")


def build_settings(settings_type: type[Settings], values: dict[str, Any]) -> Settings:
    """The dataclass from a dict of values; a field it doesn't know (renamed, misspelt) is an error, not ignored."""
    known = {field.name for field in dataclasses.fields(settings_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{settings_type.__name__} has no setting {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    return settings_type(**values)


def _declaration(settings_type: type, name: str) -> tuple[Any, Range]:
    """The setting's type and its declared range."""
    field = {field.name: field for field in dataclasses.fields(settings_type)}[name]
    return typing.get_type_hints(settings_type)[name], field.metadata.get("range", Range())


def _union(hint: Any) -> tuple:
    """The members of `X | Y` (or the type itself)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)
