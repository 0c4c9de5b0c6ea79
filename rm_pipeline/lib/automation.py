"""When the pipeline runs by itself: the retraining schedule and how often the input folders are looked at.
Knows nothing of Dagster."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rm_pipeline.lib.settings import setting
from rm_pipeline.lib.table_files import SETTLE_SECONDS

CRON_VARIABLE = "RM_PIPELINE_RETRAIN_CRON"
TIMEZONE_VARIABLE = "RM_PIPELINE_RETRAIN_TIMEZONE"
INTERVAL_VARIABLE = "RM_PIPELINE_SENSOR_INTERVAL"


@dataclass(frozen=True)
class AutomationSettings:
    retrain_cron: str = setting(
        "0 3 * * 1",
        f"Cron schedule on which reward_model is retrained, when the approved split changed since the current "
        f"model (${CRON_VARIABLE}; default Mondays 03:00).",
    )
    timezone: str = setting("UTC", f"Time zone of the retraining schedule (${TIMEZONE_VARIABLE}).")

    def __post_init__(self):
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {self.timezone!r} for the retraining schedule") from error

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> AutomationSettings:
        """The defaults, each overridden by its environment variable when that is set."""
        values = {
            field: environ[variable].strip()
            for field, variable in (("retrain_cron", CRON_VARIABLE), ("timezone", TIMEZONE_VARIABLE))
            if environ.get(variable, "").strip()
        }
        return cls(**values)


@dataclass(frozen=True)
class FolderWatchSettings:
    interval_seconds: int = setting(30, f"Seconds between two looks at the annotation folder (${INTERVAL_VARIABLE}).")
    settle_seconds: float = setting(
        SETTLE_SECONDS, "A batch file modified more recently than this is still being written: left for the next look."
    )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> FolderWatchSettings:
        """The defaults, the interval overridden by $RM_PIPELINE_SENSOR_INTERVAL when it is set."""
        value = environ.get(INTERVAL_VARIABLE, "").strip()
        if not value:
            return cls()
        try:
            seconds = int(value)
        except ValueError:
            seconds = 0
        if seconds < 1:
            raise ValueError(f"${INTERVAL_VARIABLE} must be a whole number of seconds, at least 1; got {value!r}")
        return cls(interval_seconds=seconds)
