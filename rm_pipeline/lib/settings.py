"""Every setting is declared once: a field of a dataclass in lib/, with its default and help text
(TRL's `RewardConfig` style). The Dagster configs are derived from these (`rm_pipeline.config`), and
the CLI reads its defaults from them. Knows nothing of Dagster."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

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
