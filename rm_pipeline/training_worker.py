"""The training child process: `python -m rm_pipeline.training_worker`, launched by the
reward_model asset through Dagster Pipes (or `accelerate launch` with several GPUs). Its logs and
metrics stream into the Dagster run; its memory goes back to the system when it exits."""

# ruff: noqa: E402 (the guard below runs before the imports that take seconds)
import ctypes
import os
import signal
import sys
import threading
import time

from rm_pipeline.lib.environment import RUN_PROCESS

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """A run killed outright (SIGKILL) leaves no training behind still writing a model: the kernel kills this
    process when its parent dies (Linux), and a watch kills it when its parent or the run step that launched
    training ($RM_PIPELINE_RUN_PROCESS: under `accelerate launch` the parent is accelerate, which outlives the
    step) is gone, elsewhere or if the kernel's signal is missed."""
    parent, run_step = os.getppid(), int(RUN_PROCESS.get())
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def orphaned() -> bool:
        return os.getppid() != parent or (run_step > 0 and not process_alive(run_step))

    if orphaned():  # gone before prctl took effect
        os._exit(1)

    def watch() -> None:
        while not orphaned():
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    if parent > 1 or run_step > 0:  # pid 1 (a container's init) never goes away
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs: a killed process whose parent has not collected it yet (a zombie) does not."""
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    return True


if __name__ == "__main__":  # first: a run killed while this process still imports must take it along
    die_with_parent()

import errno
import shutil
import warnings
from pathlib import Path

import pandas as pd
from dagster_pipes import open_dagster_pipes

from rm_pipeline.lib.asset_values import DATA_VERSION, MODEL_PATH
from rm_pipeline.lib.markdown import inline_png
from rm_pipeline.lib.model_files import LINEAGE_FILE, TRAINING_CURVES_FILE
from rm_pipeline.lib.training.ensemble import train_model
from rm_pipeline.lib.training.settings import TrainingSettings

SUMMARY_KEYS = ("step", "loss", "accuracy", "eval_accuracy", "eval_loss", "eta_s")


def where_it_failed(error: Exception, models_dir: str) -> Exception:
    """An out-of-space error says so and where (the run reports the first line of the worker's error only)."""
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
        try:
            free = f"{shutil.disk_usage(models_dir).free:,} bytes free there now"
        except OSError:
            free = "free space unknown"
        filename = getattr(error, "filename", None)
        where = f"writing {filename}" if filename else f"writing the model under {models_dir}"
        return OSError(errno.ENOSPC, f"No space left on device {where} ({free}): {error}")
    return error


def run(pipes) -> None:
    extras = pipes.extras
    try:
        train_and_report(pipes, extras)
    except Exception as error:
        reported = where_it_failed(error, extras["models_dir"])
        if reported is error:
            raise
        raise reported from error


def train_and_report(pipes, extras) -> None:
    split = pd.read_parquet(extras["split_path"])
    settings = TrainingSettings(**extras["settings"])
    main_process = int(os.environ.get("RANK", "0")) == 0

    def report(kind: str, payload: dict) -> None:
        if main_process:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in payload.items() if k in SUMMARY_KEYS}
            pipes.log.info(f"{kind}: {payload.get('message', shown)}")

    result = train_model(
        split[split["split"] == "train"],
        split[split["split"] == "eval"],
        settings,
        Path(extras["models_dir"]),
        extras["run_name"],
        report,
        card_facts={
            "data_version": extras["data_version"],
            "annotation_batches": extras["annotation_batches"],
            **extras["lineage"],
        },
    )
    if main_process:
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str)) and v is not None}
        pipes.report_asset_materialization(
            data_version=extras["data_version"],
            metadata={
                **metrics,
                "base_model": {"raw_value": settings.base_model, "type": "text"},
                "settings": {"raw_value": extras["settings"], "type": "json"},  # every TrainingSettings field
                MODEL_PATH: {"raw_value": str(result.model_dir), "type": "path"},
                "training_curves": {
                    "raw_value": inline_png(result.model_dir / TRAINING_CURVES_FILE, "training curves"),
                    "type": "md",
                },
                DATA_VERSION: extras["data_version"],
                # lineage: what the model was trained on, also in the model card and lineage.json
                **{
                    name: {"raw_value": extras["lineage"][name], "type": "json"}
                    for name in ("batches", "review_files", "code_versions")
                },
                "lineage_file": {"raw_value": str(result.model_dir / LINEAGE_FILE), "type": "path"},
            },
        )


def quiet() -> None:
    """The worker's output is the run's: progress lines, not progress bars or libraries' deprecation notes."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()  # "Writing model shards" at each checkpoint
    warnings.filterwarnings("ignore", category=FutureWarning)


if __name__ == "__main__":
    quiet()
    with open_dagster_pipes() as context:
        run(context)
