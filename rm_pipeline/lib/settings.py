"""Every setting is declared once: a field of a dataclass in lib/, with its default and help text
(TRL's `RewardConfig` style). The Dagster configs are derived from these (`rm_pipeline.config`), and
the CLI reads its defaults from them. Knows nothing of Dagster."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, TypeVar

Settings = TypeVar("Settings")


def setting(default: Any, help: str = "") -> Any:
    """A dataclass field with a default and the help text the UI and the CLI show."""
    return dataclasses.field(default=default, metadata={"help": help})


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


def check_choices(settings: Any) -> None:
    """A `Literal`-typed field holding a value outside its choices is an error naming the field and the choices
    (call from `__post_init__`: the library, the CLI and the Dagster configs all build the dataclass)."""
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        if typing.get_origin(hints[field.name]) is not Literal:
            continue
        allowed = typing.get_args(hints[field.name])
        value = getattr(settings, field.name)
        if value not in allowed:
            raise ValueError(
                f"{type(settings).__name__}.{field.name} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
            )
