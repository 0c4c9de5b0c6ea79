"""Dagster run configs derived from the library's settings dataclasses: one declaration per setting.

`config_class(TrainingSettings, "RewardModelConfig")` is a `dg.Config` whose fields, types, defaults and
descriptions are the dataclass's; `settings_from_config` turns a config back into the dataclass.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any

import dagster as dg
import pydantic

from rm_pipeline.lib.settings import Settings, build_settings


def config_class(settings_type: type, name: str, exclude: tuple[str, ...] = ()) -> type[dg.Config]:
    """A `dg.Config` with one field per dataclass field (bar `exclude`: values that come from a resource)."""
    hints = typing.get_type_hints(settings_type)
    fields = {}
    for field in dataclasses.fields(settings_type):
        if field.name in exclude:
            continue
        if field.default is dataclasses.MISSING:
            raise TypeError(f"{settings_type.__name__}.{field.name} needs a default to be a run config field")
        fields[field.name] = (
            hints[field.name],
            pydantic.Field(default=field.default, description=field.metadata.get("help") or None),
        )
    module = sys._getframe(1).f_globals.get("__name__", __name__)  # the stage that declares it, for snapshots
    config = pydantic.create_model(name, __base__=dg.Config, __module__=module, **fields)
    config.__doc__ = f"Run config of {settings_type.__name__} (rm_pipeline.lib)."
    return config


def settings_from_config(settings_type: type[Settings], config: dg.Config, **from_resources: Any) -> Settings:
    """The settings dataclass from a run config plus the values resources own (e.g. max_length)."""
    return build_settings(settings_type, {**config.model_dump(), **from_resources})
