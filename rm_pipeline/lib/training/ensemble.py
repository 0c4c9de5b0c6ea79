"""Reward-model ensembles (Coste et al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization"): K members,
each a normal model directory under `members/<k>/`, trained with their own seed (and, with `bootstrap`, their own
resample of the train pairs), published as ONE model directory with a manifest (`ENSEMBLE_FILE`) naming the
members and λ. It scores as the conservative mean - λ·std of the members' rewards, with the std as each answer's
uncertainty (`scoring.EnsembleScorer`, which `RewardScorer.load` returns for such a directory). Training it, here.
Knows nothing of Dagster.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.model_files import (
    ENSEMBLE_FILE,
    ENSEMBLE_MEMBERS_DIR,
    ENSEMBLE_SCORE_RULE,
    FACTS_FILE,
    LINEAGE_FILE,
    MODEL_CARD_FILE,
    TRAINING_CURVES_FILE,
    TRAINING_METRICS_FILE,
    TRAINING_SETTINGS_FILE,
    write_manifest,
)
from rm_pipeline.lib.scoring import EnsembleScorer
from rm_pipeline.lib.training.model_card import model_card
from rm_pipeline.lib.training.publish import publish
from rm_pipeline.lib.training.run import reward_statistics, train_reward_model
from rm_pipeline.lib.training.settings import Report, TrainingResult, TrainingSettings


def member_plan(settings: TrainingSettings, train: pd.DataFrame, index: int) -> tuple[TrainingSettings, pd.DataFrame]:
    """Member `index`'s settings (its own seed; one model) and train pairs (all, or a bootstrap resample)."""
    seed = (settings.seed + index) % 2**32
    member = replace(settings, seed=seed, ensemble_members=1)
    if settings.ensemble_member_data == "bootstrap":
        rows = np.random.default_rng([settings.seed, index]).integers(0, len(train), size=len(train))
        train = train.iloc[rows].reset_index(drop=True)
    return member, train


def train_model(train, evaluation, settings: TrainingSettings, models_dir: Path, run_name: str, report, card_facts):
    """`train_reward_model`, or with `ensemble_members` > 1 `train_ensemble`."""
    trainer = train_ensemble if settings.ensemble_members > 1 else train_reward_model
    return trainer(train, evaluation, settings, models_dir, run_name, report, card_facts)


def _train_member(index, train, evaluation, settings, staging: Path, run_name, report, card_facts) -> Path | None:
    """Member `index` at `staging/members/<index>`: kept when already there (a resumed run), else trained (its
    own checkpoints resume) and moved there. None in a training process that doesn't publish (DDP rank > 0)."""
    target = staging / ENSEMBLE_MEMBERS_DIR / str(index)
    member_settings, rows = member_plan(settings, train, index)
    total = settings.ensemble_members
    if target.is_dir():
        report("log", {"message": f"ensemble member {index + 1}/{total}: already trained, kept ({target})"})
        return target
    trained = staging / "trained"
    name = f"{run_name}-member{index}"
    published = sorted(trained.glob(f"{name}-*")) if trained.is_dir() else []
    if not published:  # else: published before a crash, not yet moved into place
        report("log", {"message": f"ensemble member {index + 1}/{total}: training with seed {member_settings.seed}"})
        result = train_reward_model(rows, evaluation, member_settings, trained, name, report, card_facts)
        if not result.metrics:
            return None
        published = [result.model_dir]
    target.parent.mkdir(parents=True, exist_ok=True)
    published[-1].rename(target)
    return target


def train_ensemble(
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    settings: TrainingSettings,
    models_dir: Path,
    run_name: str,
    report: Report = lambda kind, payload: None,
    card_facts: dict | None = None,
) -> TrainingResult:
    """Train `ensemble_members` members one after another into `models_dir/.ensemble-<run_name>` (a rerun keeps
    the finished ones), then publish them atomically, once, as `models_dir/<run_name>-<UTC time>`."""
    started = time.monotonic()
    staging = models_dir / f".ensemble-{run_name}"
    members = [
        _train_member(index, train, evaluation, settings, staging, run_name, report, card_facts or {})
        for index in range(settings.ensemble_members)
    ]
    if None in members:  # under DDP every process trains every member together; process 0 publishes
        return TrainingResult(models_dir, {}, [])
    shutil.rmtree(staging / "trained", ignore_errors=True)
    published = f"{run_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    facts = {"run_name": published, **(card_facts or {})}
    metrics, history = _describe(staging, members, train, evaluation, settings, facts)
    metrics["duration_seconds"] = round(time.monotonic() - started, 1)
    (staging / TRAINING_METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    target = publish(models_dir, published, lambda directory: staging.rename(directory))
    return TrainingResult(target, metrics, history)


def _describe(staging: Path, members: list[Path], train, evaluation, settings, facts) -> tuple[dict, list]:
    """The ensemble's own files in `staging`: manifest, settings, facts, lineage, card, curves (the first
    member's) and length calibration; returns its metrics (the conservative score's) and the first's history."""
    from rm_pipeline.lib.length_calibration import fit_on_training_side, write_length_calibration

    described = []
    for index, member in enumerate(members):
        member_metrics = json.loads((member / TRAINING_METRICS_FILE).read_text(encoding="utf-8"))
        member_settings, rows = member_plan(settings, train, index)
        described.append(
            {
                "path": f"{ENSEMBLE_MEMBERS_DIR}/{index}",
                "seed": member_settings.seed,
                "data": settings.ensemble_member_data,
                "train_pairs": len(rows),
                "distinct_train_pairs": int((~rows.duplicated(["prompt", "chosen", "rejected"])).sum()),
                "eval_accuracy": member_metrics.get("eval_accuracy"),
                "run_name": json.loads((member / FACTS_FILE).read_text(encoding="utf-8")).get("run_name"),
            }
        )
    write_manifest(staging, described, settings.ensemble_lambda, settings.ensemble_member_data)
    scorer = EnsembleScorer.load(staging)
    first = json.loads((members[0] / TRAINING_METRICS_FILE).read_text(encoding="utf-8"))
    metrics = {
        **first,
        **reward_statistics(scorer.score_pairs(evaluation if len(evaluation) else train)),
        "ensemble_members": len(members),
        "ensemble_lambda": settings.ensemble_lambda,
        "member_eval_accuracy": [member["eval_accuracy"] for member in described],
        "train_seconds": round(sum(_train_seconds(member) for member in members), 1),
    }
    length_fit = fit_on_training_side(scorer, train)
    if length_fit is not None:
        write_length_calibration(staging, length_fit)
    card = model_card(settings, metrics, facts)
    (staging / MODEL_CARD_FILE).write_text(card + _ensemble_section(described, settings))
    (staging / TRAINING_SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2))
    for name in (FACTS_FILE, LINEAGE_FILE):
        (staging / name).write_text(json.dumps(facts, indent=2, default=str))
    shutil.copy(members[0] / TRAINING_CURVES_FILE, staging / TRAINING_CURVES_FILE)
    history_file = members[0] / "training_history.json"
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.exists() else []
    return metrics, history


def _train_seconds(member: Path) -> float:
    value = json.loads((member / TRAINING_METRICS_FILE).read_text(encoding="utf-8")).get("train_seconds")
    return float(value) if isinstance(value, int | float) else 0.0


def _ensemble_section(described: list[dict], settings: TrainingSettings) -> str:
    """The model card's last section: what the ensemble is, its members and λ."""
    from rm_pipeline.lib.markdown import markdown_table

    return (
        f"\n## Ensemble of {len(described)} reward models\n\n"
        f"This directory is an ensemble (Coste et al. 2024): `{ENSEMBLE_FILE}` names its members, each a reward "
        f"model directory under `{ENSEMBLE_MEMBERS_DIR}/`. rm-pipeline scores it as {ENSEMBLE_SCORE_RULE}, with "
        f"λ = {settings.ensemble_lambda}, and reports the std as each answer's uncertainty. Members differ by "
        f"`{settings.ensemble_member_data}`. Load it with `rm_pipeline.lib.scoring.RewardScorer.load(PATH)` "
        f"or `trl_reward_function(PATH)`; each member loads alone as the card above shows.\n\n"
        f"{markdown_table(described)}\n"
    )
