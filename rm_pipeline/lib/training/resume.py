"""Checkpoints: resuming from the last complete one, and removing them once the model is published."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from rm_pipeline.lib.training.settings import Report


def last_complete_checkpoint(checkpoint_dir: Path, report: Report, remove_cut_short: bool = True) -> str | None:
    """The newest checkpoint written to the end, or None. Trainer writes a checkpoint's files in place and
    trainer_state.json last, so a process killed while saving leaves a newer folder without that file (or with
    it cut short), which transformers' `get_last_checkpoint` would pick and fail to resume from. Such folders
    are removed, each with a log line, where `remove_cut_short` (one process of several: the others, skipping
    the same folders, reach the same answer without racing it to delete them)."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    steps = {
        folder: int(match[1])
        for folder in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if folder.is_dir() and (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", folder.name))
    }
    for folder in sorted(steps, key=steps.get, reverse=True):
        try:
            json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
            return str(folder)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            if remove_cut_short:
                report(
                    "log",
                    {"message": f"{folder}: cut short while being saved (no complete {TRAINER_STATE_NAME}), removed"},
                )
                shutil.rmtree(folder)
    return None


def fit(trainer, checkpoint_dir: Path, report: Report):
    """Train, resuming from the last complete checkpoint in `checkpoint_dir` if there is one; returns
    (TRL's train output, seconds spent, the checkpoint resumed from)."""
    import torch

    resume_from = last_complete_checkpoint(checkpoint_dir, report, remove_cut_short=trainer.is_world_process_zero())
    if resume_from:
        report("log", {"message": f"resuming from {resume_from}"})
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=resume_from)
    return output, time.monotonic() - started, resume_from


def remove_checkpoints(checkpoint_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if checkpoint_dir.parent.is_dir() and not any(checkpoint_dir.parent.iterdir()):
        checkpoint_dir.parent.rmdir()
