"""Stage 6d: champion/challenger. A newly trained model becomes `models/current` only when it is not significantly
worse than the current one on the same pairs."""

import json
import time

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import EVALUATION_GROUP as GROUP
from rm_pipeline.asset_outputs import OWNERS, report_of, scored_in
from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.lib.asset_values import LENGTH_CALIBRATED, MODEL_PATH, READY, EvaluationReport, PublishedModel
from rm_pipeline.lib.evaluation.accuracy import pair_credit
from rm_pipeline.lib.markdown import markdown_table
from rm_pipeline.lib.model_files import LENGTH_CALIBRATION_FILE, PROMOTION_FILE, READINESS_FILE, write_atomically
from rm_pipeline.lib.model_registry import current_model_dir, switch_current
from rm_pipeline.lib.promotion import PROMOTED, PromotionSettings, evidence_pairs, promotion_record
from rm_pipeline.lib.scoring import RewardScorer

PromotionConfig = config_class(PromotionSettings, "PromotionConfig")


def _credit(scores: pd.DataFrame):
    return pair_credit((scores["chosen_reward"] - scores["rejected_reward"]).to_numpy())


def _side_by_side(record: dict, candidate: str, current: str | None) -> str:
    """Both models' accuracies with their intervals, as a Markdown table."""

    def shown(interval: dict | None) -> str:
        if not interval:
            return "-"
        return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}] (n={interval['n']})"

    rows = [
        {
            "model": name,
            "role": role,
            "accuracy, held-out + benchmarks": shown(record[role]),
            "accuracy, held-out": shown(record["held_out"][role]),
        }
        for role, name in (("candidate", candidate), ("current", current))
        if name is not None
    ]
    return markdown_table(rows)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "json"},
    code_version="2",
    owners=OWNERS,
    io_manager_key="value_io_manager",
)
def current_reward_model(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    reward_model: PublishedModel,
    evaluation_report: EvaluationReport,
    reward_readiness: dict,  # after the verdict, to record it; at WARN severity a not-ready model still gets here
    reward_scores: pd.DataFrame,
) -> dg.Output[dict]:
    """The model `models/current` points at (and `rm-pipeline score`/`evaluate` use by default). A newly
    trained model replaces it only when it is not significantly worse, compared pair by pair with it on
    the same held-out and benchmark pairs (paired bootstrap by prompt group, `promotion_margin`); the first
    model is promoted. The decision is written beside the candidate as `promotion.json`; a candidate that
    loses stays on disk with its reason."""
    candidate_dir = reward_model.directory
    report_of(reward_model, evaluation_report)
    models_dir = candidate_dir.parent
    current_dir = current_model_dir(models_dir)
    evidence = evidence_pairs(reward_scores)
    candidate_credit = _credit(evidence)
    precision = scored_in(reward_model, reward_scores)  # the current model is scored alike
    calibrated = bool(reward_scores.get(LENGTH_CALIBRATED, pd.Series([False])).any())
    if current_dir is None:
        current_credit = None
    elif current_dir == candidate_dir.resolve():  # evaluated again: it is compared with itself
        current_credit = candidate_credit
    else:
        context.log.info(f"scoring the current model {current_dir.name} on {len(evidence)} pairs in {precision}")
        # length-calibrated too when the candidate was and the current model has a fit (one trained before has none)
        calibrated = calibrated and (current_dir / LENGTH_CALIBRATION_FILE).is_file()
        current = RewardScorer.load(current_dir, precision=precision, length_calibration=calibrated)
        current_credit = _credit(current.score_pairs(evidence))
    record = promotion_record(
        evidence, candidate_credit, current_credit, settings_from_config(PromotionSettings, config)
    )
    verdict = reward_readiness
    record.update(
        candidate_model=candidate_dir.name,
        current_model=current_dir.name if current_dir else None,
        readiness={
            "file": str(candidate_dir / READINESS_FILE),
            READY: verdict[READY],
            "reasons": verdict["reasons"],
        },
        scored_in=precision,
        length_calibrated=calibrated,
        decided_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    write_atomically(candidate_dir / PROMOTION_FILE, json.dumps(record, indent=2, default=str))
    promoted = record["status"] == PROMOTED
    if promoted:
        switch_current(models_dir, candidate_dir.name)
    now_current = candidate_dir if promoted else current_dir
    (context.log.info if promoted else context.log.warning)(
        f"{candidate_dir.name}: {record['status']} ({record['reason']}); current: {now_current.name}"
    )
    difference = record["difference"]
    return dg.Output(
        record,
        metadata={
            "status": record["status"],
            "reason": record["reason"],
            "models": dg.MetadataValue.md(
                _side_by_side(record, candidate_dir.name, current_dir.name if current_dir else None)
            ),
            "difference": difference["estimate"] if difference else None,
            "difference_low": difference["low"] if difference else None,
            "difference_high": difference["high"] if difference else None,
            "margin": record["margin"],
            "pairs": record["pairs"],
            "prompt_groups": record["groups"],
            READY: verdict[READY],
            "candidate_path": dg.MetadataValue.path(str(candidate_dir)),
            MODEL_PATH: dg.MetadataValue.path(str(now_current)),
            "promotion_file": dg.MetadataValue.path(str(candidate_dir / PROMOTION_FILE)),
        },
    )
