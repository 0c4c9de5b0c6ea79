"""Training a reward model end to end: prepare, fit (resuming), score the eval split, publish.

Knows nothing of Dagster: the stage runs `train_reward_model` in a child process and streams its
progress through the `report` callback.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import pair_credit
from rm_pipeline.lib.pairs import PREFERRED
from rm_pipeline.lib.training.data import preferences, training_data
from rm_pipeline.lib.training.length_head import drop_length_head, last_correlations, reward_length_correlation
from rm_pipeline.lib.training.model import final_model, prepare_model
from rm_pipeline.lib.training.publish import publish, save_model_directory
from rm_pipeline.lib.training.resume import fit, remove_checkpoints
from rm_pipeline.lib.training.settings import Report, TrainingResult, TrainingSettings
from rm_pipeline.lib.training.trainer import build_trainer, progress_callback, training_metrics


def reward_statistics(scored: pd.DataFrame) -> dict:
    """Mean and std of rewards on the eval split (stored in the config so users can normalise), and the
    accuracy of the model as saved, by the evaluation's pair credit over preferred pairs (ties left out), from
    `RewardScorer.score_pairs` of the split."""
    rewards = np.concatenate([scored["chosen_reward"].to_numpy(), scored["rejected_reward"].to_numpy()])
    difference = (scored["chosen_reward"] - scored["rejected_reward"]).to_numpy()
    preferred = preferences(scored) == PREFERRED
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "eval_accuracy": float(pair_credit(difference[preferred]).mean()) if preferred.any() else None,
    }


def check_trained(global_step: int) -> None:
    """A model that took no optimiser step is its base checkpoint with a random head: never published."""
    if global_step < 1:
        raise ValueError(
            "training took 0 optimiser steps (no train pairs, or epochs too small for one batch): "
            "nothing to publish; the reward_model step fails instead"
        )


def train_reward_model(
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    settings: TrainingSettings,
    models_dir: Path,
    run_name: str,
    report: Report = lambda kind, payload: None,
    card_facts: dict | None = None,
) -> TrainingResult:
    """Train, resuming from the last checkpoint of the same run name if one exists, then publish the
    model directory atomically as `models_dir/<run_name>-<UTC time>`: a candidate, which evaluation may
    promote to `models_dir/current`."""
    started = time.monotonic()
    model, tokenizer, peft_config = prepare_model(settings)
    data = training_data(train, evaluation, tokenizer, settings, report)
    checkpoint_dir = models_dir / ".checkpoints" / run_name
    progress = progress_callback(report)
    trainer = build_trainer(model, tokenizer, peft_config, data, settings, checkpoint_dir, progress)
    output, train_seconds, resumed_from = fit(trainer, checkpoint_dir, report)
    check_trained(output.global_step)
    if not trainer.is_world_process_zero():  # under DDP, one process scores and publishes
        return TrainingResult(models_dir, {}, progress.history)

    from rm_pipeline.lib.length_calibration import fit_on_training_side, write_length_calibration
    from rm_pipeline.lib.model_files import SCORED_FILE
    from rm_pipeline.lib.scoring import RewardScorer

    model = final_model(trainer, merge_lora=peft_config is not None)
    if settings.length_head:
        drop_length_head(model)  # published: the quality head alone, an ordinary one-unit reward model
    metrics = training_metrics(trainer, output, train_seconds, resumed_from, data, progress.first_step or 0, settings)
    scorer = RewardScorer.of(model, tokenizer)  # in the precision the evaluation stage scores in by default
    scored = scorer.score_pairs(evaluation if len(evaluation) else train)
    metrics.update(reward_statistics(scored))
    if settings.length_head:
        metrics.update(last_correlations(progress.history))
        metrics["eval_reward_length_correlation"] = reward_length_correlation(scored)
    model.config.reward_mean, model.config.reward_std = metrics["reward_mean"], metrics["reward_std"]
    # a sidecar scoring may apply (length_calibration); its training answers stay out of the eval split's cache
    length_fit = fit_on_training_side(dataclasses.replace(scorer, scored={}), train)
    metrics["duration_seconds"] = round(time.monotonic() - started, 1)

    # Every training publishes a new directory: retraining the same data keeps the earlier model.
    published = f"{run_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    facts = {"run_name": published, **(card_facts or {})}

    def save(directory: Path) -> None:
        save_model_directory(directory, model, tokenizer, settings, metrics, progress.history, facts)
        scorer.remember(directory / SCORED_FILE)
        if length_fit is not None:
            write_length_calibration(directory, length_fit)

    target = publish(models_dir, published, save)
    remove_checkpoints(checkpoint_dir)
    return TrainingResult(target, metrics, progress.history)
