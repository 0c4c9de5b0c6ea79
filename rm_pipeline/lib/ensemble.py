"""Reward-model ensembles (Coste et al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization"): K members,
each a normal model directory under `members/<k>/`, trained with their own seed (and, with `bootstrap`, their own
resample of the train pairs), published as ONE model directory with a manifest (`ENSEMBLE_FILE`) naming the
members and λ. It scores as the conservative mean - λ·std of the members' rewards, with the std as each answer's
uncertainty; `RewardScorer.load` loads such a directory as an `EnsembleScorer`. Knows nothing of Dagster.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.model_files import (
    ENSEMBLE_FILE,
    ENSEMBLE_MEMBERS_DIR,
    FACTS_FILE,
    LINEAGE_FILE,
    MODEL_CARD_FILE,
    TRAINING_CURVES_FILE,
    TRAINING_METRICS_FILE,
    TRAINING_SETTINGS_FILE,
    ModelDirectoryError,
)
from rm_pipeline.lib.scoring import SCORING_BATCH_SIZE, RewardScorer, ScoringSettings
from rm_pipeline.lib.training.settings import Report, TrainingResult, TrainingSettings

MANIFEST_FORMAT = 1
SCORE_RULE = "mean - lambda * std of the members' rewards (std over members, ddof 0)"


# ---------------------------------------------------------------- the manifest


def read_manifest(model_dir: Path) -> dict:
    """The ensemble's manifest, checked: members (each a relative path inside the directory) and λ. Anything
    else is a ModelDirectoryError in one line naming the file."""
    path = Path(model_dir) / ENSEMBLE_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelDirectoryError(f"{path}: not a readable ensemble manifest ({error})") from None
    members = manifest.get("members") if isinstance(manifest, dict) else None
    weight = manifest.get("lambda") if isinstance(manifest, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise ModelDirectoryError(f"{path}: not an ensemble manifest (a non-empty list of members expected)")
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not (math.isfinite(weight) and weight >= 0):
        raise ModelDirectoryError(f"{path}: lambda must be a finite number, at least 0; got {weight!r}")
    root = Path(model_dir).resolve()
    for index, member in enumerate(members):
        relative = member.get("path")
        if not isinstance(relative, str) or root not in (root / relative).resolve().parents:
            raise ModelDirectoryError(f"{path}: member {index}'s path must lie inside the directory; got {relative!r}")
    return manifest


def write_manifest(model_dir: Path, members: list[dict], weight: float, member_data: str) -> dict:
    """The manifest naming `members` (dicts with at least `path`, relative to `model_dir`) and λ."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "score": SCORE_RULE,
        "lambda": weight,
        "member_data": member_data,
        "members": members,
    }
    (Path(model_dir) / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


# ---------------------------------------------------------------- scoring


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class EnsembleScorer:
    """An ensemble's members (`RewardScorer`s) scoring as one model: ``reward`` is mean - λ·std of theirs,
    ``uncertainty`` their std; `score`, `score_pairs` and `forget` as `RewardScorer`'s."""

    members: list
    weight: float  # λ
    length_fit: dict | None = None  # the ensemble's own length effect, on its conservative score
    ignored_cache: str | None = None

    score_pairs = RewardScorer.score_pairs
    length_calibrated = RewardScorer.length_calibrated

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        batch_size: int = SCORING_BATCH_SIZE,
        trust_remote_code: bool = False,
        precision=ScoringSettings.precision,
        length_calibration: bool = ScoringSettings.length_calibration,
    ) -> EnsembleScorer:
        """Every member of the ensemble in `model_dir`, each checked as a model directory; a member that can't be
        loaded is a ModelDirectoryError in one line naming it."""
        from rm_pipeline.lib.length_calibration import read_length_calibration

        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        members = []
        for index, member in enumerate(manifest["members"]):
            where = model_dir / member["path"]
            try:
                if (where / ENSEMBLE_FILE).exists():
                    raise ModelDirectoryError("an ensemble can't be a member of an ensemble")
                members.append(RewardScorer.load(where, batch_size, trust_remote_code, precision))
            except (ModelDirectoryError, OSError, ValueError, KeyError, RuntimeError) as error:
                raise ModelDirectoryError(
                    f"{model_dir}: ensemble member {index} ({member['path']}) can't be loaded: {_first_line(error)}"
                ) from None
        ignored = "; ".join(member.ignored_cache for member in members if member.ignored_cache) or None
        length_fit = read_length_calibration(model_dir) if length_calibration else None
        return cls(members, float(manifest["lambda"]), length_fit, ignored)

    @property
    def bf16(self) -> bool:
        return self.members[0].bf16

    def score(
        self,
        prompts,
        responses,
        conversational,
        sort_by_length: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """`RewardScorer.score`'s table, ``reward`` being the conservative score, plus ``uncertainty`` (the
        members' std). Tokens are the first member's count; ``truncated`` when any member cut the sequence."""
        prompts, responses, conversational = list(prompts), list(responses), list(conversational)
        share = None if progress is None else _shared_progress(progress, len(self.members))
        tables = [member.score(prompts, responses, conversational, sort_by_length, share) for member in self.members]
        rewards = np.stack([table["reward"].to_numpy(float) for table in tables])
        mean, spread = rewards.mean(axis=0), rewards.std(axis=0)
        scored = tables[0].assign(
            reward=mean - self.weight * spread,
            truncated=np.logical_or.reduce([table["truncated"].to_numpy(bool) for table in tables]),
            uncertainty=spread,
        )
        return self.length_calibrated(scored)

    def forget(self) -> None:
        for member in self.members:
            member.forget()


def _shared_progress(progress: Callable[[int], None], members: int) -> Callable[[int], None]:
    """A callback for each member's scoring that reports whole answers to `progress`: all members' counts
    together, divided by the number of members."""
    counted = {"sequences": 0, "reported": 0}

    def update(count: int) -> None:
        counted["sequences"] += count
        done = counted["sequences"] // members
        if done > counted["reported"]:
            progress(done - counted["reported"])
            counted["reported"] = done

    return update


# ---------------------------------------------------------------- training


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
    from rm_pipeline.lib.training.run import train_reward_model

    trainer = train_ensemble if settings.ensemble_members > 1 else train_reward_model
    return trainer(train, evaluation, settings, models_dir, run_name, report, card_facts)


def _train_member(index, train, evaluation, settings, staging: Path, run_name, report, card_facts) -> Path | None:
    """Member `index` at `staging/members/<index>`: kept when already there (a resumed run), else trained (its
    own checkpoints resume) and moved there. None in a training process that doesn't publish (DDP rank > 0)."""
    from rm_pipeline.lib.training.run import train_reward_model

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
    from rm_pipeline.lib.training.publish import publish

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
    from rm_pipeline.lib.training.model_card import model_card
    from rm_pipeline.lib.training.run import reward_statistics

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
        f"model directory under `{ENSEMBLE_MEMBERS_DIR}/`. rm-pipeline scores it as {SCORE_RULE}, with "
        f"λ = {settings.ensemble_lambda}, and reports the std as each answer's uncertainty. Members differ by "
        f"`{settings.ensemble_member_data}`. Load it with `rm_pipeline.lib.scoring.RewardScorer.load(PATH)` "
        f"or `trl_reward_function(PATH)`; each member loads alone as the card above shows.\n\n"
        f"{markdown_table(described)}\n"
    )
