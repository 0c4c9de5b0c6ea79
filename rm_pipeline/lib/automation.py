"""When the pipeline runs by itself: the retraining schedule and how often the input folders are looked at.
Knows nothing of Dagster."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rm_pipeline.lib.environment import RETRAIN_CRON, RETRAIN_TIMEZONE, SENSOR_INTERVAL
from rm_pipeline.lib.settings import check_settings, parse_setting, setting
from rm_pipeline.lib.table_files import SETTLE_SECONDS

CRON_VARIABLE = RETRAIN_CRON.name
TIMEZONE_VARIABLE = RETRAIN_TIMEZONE.name
INTERVAL_VARIABLE = SENSOR_INTERVAL.name


@dataclass(frozen=True)
class AutomationSettings:
    retrain_cron: str = setting(
        RETRAIN_CRON.default,
        f"Cron schedule on which reward_model is retrained, when the approved split changed since the current "
        f"model (${CRON_VARIABLE}; default Mondays 03:00).",
    )
    timezone: str = setting(RETRAIN_TIMEZONE.default, f"Time zone of the retraining schedule (${TIMEZONE_VARIABLE}).")

    def __post_init__(self):
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {self.timezone!r} for the retraining schedule") from error

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> AutomationSettings:
        """Each setting from its environment variable, whose default is the setting's."""
        return cls(retrain_cron=RETRAIN_CRON.get(environ), timezone=RETRAIN_TIMEZONE.get(environ))


@dataclass(frozen=True)
class FolderWatchSettings:
    interval_seconds: int = setting(
        int(SENSOR_INTERVAL.default),
        f"Seconds between two looks at the annotation folder (${INTERVAL_VARIABLE}).",
        minimum=1,
    )
    settle_seconds: float = setting(
        SETTLE_SECONDS,
        "A batch file modified more recently than this is still being written: left for the next look.",
        minimum=0,
    )

    def __post_init__(self):
        check_settings(self)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> FolderWatchSettings:
        """The defaults, the interval overridden by $RM_PIPELINE_SENSOR_INTERVAL when it is set."""
        seconds = parse_setting(cls, "interval_seconds", SENSOR_INTERVAL.get(environ), f"${INTERVAL_VARIABLE}")
        return cls(interval_seconds=seconds)
