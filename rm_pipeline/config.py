"""Dagster run configs derived from the library's settings dataclasses: one declaration per setting.

`config_class(TrainingSettings, "RewardModelConfig")` is a `dg.Config` whose fields, types, defaults and
descriptions are the dataclass's; `settings_from_config` turns a config back into the dataclass. Each field's
declared range is checked for the whole run config before any step runs (`check_run_config`: by
`rm-pipeline run --config` before the run, and as the run's storage resource starts for a run launched
elsewhere), and again by the config itself as a step builds it.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Mapping
from typing import Any

import dagster as dg
import pydantic

from rm_pipeline.lib.settings import SettingError, Settings, build_settings, check_values

SETTINGS_OF: dict[type, type] = {}  # config class -> the settings dataclass it is derived from


class RunConfigError(Exception):
    """A run config value outside its setting's range. Not a ValueError, so that pydantic passes it on as it is:
    one line naming the setting and its range, not a validation report."""


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

    def within_ranges(config):
        try:
            check_values(settings_type, dict(config), f"{name}.")
        except SettingError as error:
            raise RunConfigError(str(error)) from None
        return config

    module = sys._getframe(1).f_globals.get("__name__", __name__)  # the stage that declares it, for snapshots
    config = pydantic.create_model(
        name,
        __base__=dg.Config,
        __module__=module,
        __validators__={"within_ranges": pydantic.model_validator(mode="after")(within_ranges)},
        **fields,
    )
    config.__doc__ = f"Run config of {settings_type.__name__} (rm_pipeline.lib)."
    SETTINGS_OF[config] = settings_type
    return config


def settings_from_config(settings_type: type[Settings], config: dg.Config, **from_resources: Any) -> Settings:
    """The settings dataclass from a run config plus the values resources own (e.g. max_length)."""
    return build_settings(settings_type, {**config.model_dump(), **from_resources})


def stage_settings() -> dict[str, type]:
    """Step (op) name -> the settings dataclass of its `config` parameter, for every asset declared in a module
    that declares a derived config class (the stages)."""
    found = {}
    for module in sorted({config.__module__ for config in SETTINGS_OF}):
        for value in vars(sys.modules[module]).values():
            if isinstance(value, dg.AssetsDefinition) and value.is_executable:
                function = getattr(value.op.compute_fn, "decorated_fn", None)
                config = typing.get_type_hints(function).get("config") if function is not None else None
                if config in SETTINGS_OF:
                    found[value.op.name] = SETTINGS_OF[config]
    return found


def check_run_config(run_config: Mapping[str, Any]) -> None:
    """Raise SettingError naming `ops.<step>.config.<setting>` and its range for the first value outside it
    (call after Dagster's own schema check: names and types are right)."""
    settings = stage_settings()
    for step, values in sorted((run_config.get("ops") or {}).items()):
        if step in settings and isinstance(values, Mapping):
            check_values(settings[step], values.get("config") or {}, f"ops.{step}.config.")


def check_launched_run_config(run_config: Mapping[str, Any]) -> None:
    """`check_run_config` for a run launched elsewhere (the UI, a sensor), called as the run's storage resource
    starts, before any step runs (the executor is in-process): a RunConfigError, one line."""
    try:
        check_run_config(run_config)
    except SettingError as error:
        raise RunConfigError(str(error)) from None
