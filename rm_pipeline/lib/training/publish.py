"""Publishing a trained model: its directory written in full under a temporary name, then renamed into place."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rm_pipeline.lib.model_files import (
    FACTS_FILE,
    LINEAGE_FILE,
    MODEL_CARD_FILE,
    TRAINING_CURVES_FILE,
    TRAINING_HISTORY_FILE,
    TRAINING_METRICS_FILE,
    TRAINING_SETTINGS_FILE,
    new_file_mode,
)
from rm_pipeline.lib.training.model_card import model_card, plot_training_curves
from rm_pipeline.lib.training.settings import TrainingSettings


def publish(models_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write into a temporary directory and rename it into place (`current` is not touched: evaluation
    promotes a model, `model_registry.switch_current`).

    A crash at any point leaves no partial directory; earlier models stay beside it.
    """
    if (models_dir / name).exists():
        raise FileExistsError(f"{models_dir / name} is already published")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".staging-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a half-written model is never left lying about
        raise
    target = models_dir / name
    staging.rename(target)  # fails if `name` exists: a published model is never overwritten
    return target


def save_model_directory(
    directory: Path, model, tokenizer, settings: TrainingSettings, metrics: dict, history: list[dict], facts: dict
) -> None:
    directory.mkdir(parents=True)
    (directory / MODEL_CARD_FILE).write_text(model_card(settings, metrics, facts))
    (directory / LINEAGE_FILE).write_text(json.dumps(facts, indent=2, default=str))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / TRAINING_METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    (directory / TRAINING_HISTORY_FILE).write_text(json.dumps(history, indent=2, default=str))
    (directory / TRAINING_SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2))
    (directory / FACTS_FILE).write_text(json.dumps(facts, indent=2, default=str))
    plot_training_curves(history, directory / TRAINING_CURVES_FILE)
    _one_mode(directory)


def _one_mode(directory: Path) -> None:
    """Give every file the mode a new file gets (0644 under umask 022): transformers writes model.safetensors
    through a private temporary file (0600), which other users, a serving container, could not read."""
    mode = new_file_mode()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)
