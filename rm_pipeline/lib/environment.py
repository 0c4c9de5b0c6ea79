"""Every environment variable rm_pipeline reads, declared once: its name, its default and what it means.
Code reads them only through `EnvironmentVariable.get` (a test holds every module to it); the docs'
reference is generated from `VARIABLES`. Knows nothing of Dagster."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rm_pipeline.lib.settings import SettingError, shown

LAUNCHER_NAMES = ("subprocess", "docker", "k8s")


@dataclass(frozen=True)
class EnvironmentVariable:
    name: str
    default: str  # "" where the code picks the default (a bundled folder, a settings field)
    meaning: str
    allowed: str = ""  # what a value may be, in words, where `valid` checks it
    valid: Callable[[str], bool] | None = None

    def get(self, environ: Mapping[str, str] = os.environ) -> str:
        """The value, stripped; the default when it is unset or blank. A value `valid` refuses is a SettingError:
        one line naming the variable, the value and what is allowed."""
        value = environ.get(self.name, "").strip() or self.default
        if self.valid is not None and not self.valid(value):
            raise SettingError(f"${self.name} must be {self.allowed}; got {shown(value)}")
        return value


def _time_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        return False
    return True


def check_environment(environ: Mapping[str, str] = os.environ) -> None:
    """Every variable with a declared check, read once: the first bad one is a SettingError (at `rm-pipeline run`
    and `ui` start, before anything runs; the code location reads them as it loads)."""
    for variable in VARIABLES:
        variable.get(environ)


HOME = EnvironmentVariable(
    "RM_PIPELINE_HOME",
    ".rm_pipeline_home",
    "Storage root: tables, review exports, models, reports and the CLI's Dagster instance (relative: to the "
    "working directory). `--home` overrides it.",
)
ANNOTATIONS = EnvironmentVariable(
    "RM_PIPELINE_ANNOTATIONS", "", "Folder of annotation batch files; empty: the bundled annotations."
)
REVIEWS = EnvironmentVariable(
    "RM_PIPELINE_REVIEWS", "", "Folder of reviewed review-queue files; empty: the bundled reviews folder."
)
EVALUATION = EnvironmentVariable(
    "RM_PIPELINE_EVAL", "", "Evaluation folder (held-out pair files, probes); empty: the bundled eval folder."
)
BASE_MODEL = EnvironmentVariable(
    "RM_PIPELINE_BASE_MODEL",
    "",
    "Hugging Face id or local path of the base model; empty: the bundled all-MiniLM-L6-v2.",
)
SENSOR_INTERVAL = EnvironmentVariable(
    "RM_PIPELINE_SENSOR_INTERVAL", "30", "Seconds between two looks at the annotation and review folders (at least 1)."
)
RETRAIN_CRON = EnvironmentVariable(
    "RM_PIPELINE_RETRAIN_CRON",
    "0 3 * * 1",
    "Cron schedule on which reward_model is retrained when the approved split changed (Mondays 03:00).",
    "a cron schedule Dagster accepts, such as '0 3 * * 1'",  # checked by rm_pipeline.automation.check_cron
)
RETRAIN_TIMEZONE = EnvironmentVariable(
    "RM_PIPELINE_RETRAIN_TIMEZONE",
    "UTC",
    "Time zone of the retraining schedule.",
    "an IANA time zone such as UTC or Europe/Paris",
    _time_zone,
)
TRAINING_LAUNCHER = EnvironmentVariable(
    "RM_PIPELINE_TRAINING_LAUNCHER",
    "subprocess",
    "Where the training worker runs: `subprocess` (a child process of the run), `docker` (a container on the "
    "Docker engine the run talks to) or `k8s` (a pod in the cluster).",
    f"one of {', '.join(LAUNCHER_NAMES)}",
    lambda value: value in LAUNCHER_NAMES,
)
TRAINING_IMAGE = EnvironmentVariable(
    "RM_PIPELINE_TRAINING_IMAGE", "rm-pipeline-user-code:latest", "Image of the training container or pod."
)
TRAINING_GPUS = EnvironmentVariable(
    "RM_PIPELINE_TRAINING_GPUS",
    "1",
    "NVIDIA GPUs the training container or pod gets; more than one trains under accelerate (DDP), 0 on CPUs.",
    "a whole number, at least 0",
    lambda value: value.isascii() and value.isdigit(),
)
TRAINING_PROCESSES = EnvironmentVariable(
    "RM_PIPELINE_TRAINING_PROCESSES",
    "0",
    "Training processes, data-parallel under `accelerate launch` (DDP, one per GPU; gloo on CPUs); 0: one per GPU "
    "the worker gets (the subprocess launcher: the GPUs it sees; docker, k8s: RM_PIPELINE_TRAINING_GPUS). One "
    "machine only.",
    "a whole number, at least 0",
    lambda value: value.isascii() and value.isdigit(),
)
TRAINING_NETWORK = EnvironmentVariable(
    "RM_PIPELINE_TRAINING_NETWORK", "", "Docker network of the training container; empty: Docker's default."
)
K8S_NAMESPACE = EnvironmentVariable("RM_PIPELINE_K8S_NAMESPACE", "dagster", "Namespace of the training pod.")
DPO_POLICY = EnvironmentVariable(
    "RM_PIPELINE_DPO_POLICY",
    "",
    "Local folder (or locally cached id) of a DPO policy whose implicit reward the evaluation sets beside the "
    "reward model's; empty: no comparison. Never downloaded.",
)
DPO_REFERENCE = EnvironmentVariable(
    "RM_PIPELINE_DPO_REFERENCE",
    "",
    "Reference model of the DPO policy; empty: the one `rm-pipeline dpo-baseline` recorded beside the policy.",
)
DAGSTER_HOME = EnvironmentVariable(
    "DAGSTER_HOME",
    "",
    "Dagster's instance folder; `rm-pipeline run`, `lineage` and `ui` use <storage root>/dagster when it is unset.",
)
ALLOW_REMOTE_CODE = EnvironmentVariable(
    "RM_PIPELINE_ALLOW_REMOTE_CODE",
    "",
    "1: a run config's `trust_remote_code: true` (base_model resource) is honoured, running code shipped with the "
    "model; otherwise such a run is refused. Set it where the code server runs.",
)
RUN_PROCESS = EnvironmentVariable(
    "RM_PIPELINE_RUN_PROCESS",
    "0",
    "Set by the subprocess launcher for its workers, not by users: the process id of the run step that started "
    "training. Every training process on the machine (under `accelerate launch` too) exits when that one is gone; "
    "0: only the worker's own parent is watched.",
    "a whole number, at least 0",
    lambda value: value.isascii() and value.isdigit(),
)

VARIABLES: tuple[EnvironmentVariable, ...] = (
    HOME,
    ANNOTATIONS,
    REVIEWS,
    EVALUATION,
    BASE_MODEL,
    SENSOR_INTERVAL,
    RETRAIN_CRON,
    RETRAIN_TIMEZONE,
    TRAINING_LAUNCHER,
    TRAINING_IMAGE,
    TRAINING_GPUS,
    TRAINING_PROCESSES,
    RUN_PROCESS,
    TRAINING_NETWORK,
    K8S_NAMESPACE,
    DPO_POLICY,
    DPO_REFERENCE,
    DAGSTER_HOME,
    ALLOW_REMOTE_CODE,
)
