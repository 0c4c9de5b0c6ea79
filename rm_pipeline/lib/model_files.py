"""The layout of a published model directory, and the one way files are written atomically.

A model directory holds what Hugging Face saves (``CONFIG_FILE``, weights, tokenizer), what training
writes beside it (model card, lineage, facts, metrics, history, settings, curves, the scored answers'
cache) and the sidecars evaluation adds (calibration, readiness, promotion), each written by one asset: a published
directory is never rewritten. Every name is declared here once.
Knows nothing of Dagster.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"  # Hugging Face's model config; `reward_mean` / `reward_std` are stored in it
MODEL_CARD_FILE = "README.md"
LINEAGE_FILE = "lineage.json"  # the files and stages the split came from: `rm-pipeline lineage` checks them
FACTS_FILE = "training_facts.json"  # run name, data version, annotation batches: saved with the model
TRAINING_METRICS_FILE = "training_metrics.json"
TRAINING_HISTORY_FILE = "training_history.json"
TRAINING_SETTINGS_FILE = "training_settings.json"
TRAINING_CURVES_FILE = "training_curves.png"
SCORED_FILE = "scored_answers.parquet"  # answers already scored by this model, reused by later scoring
CALIBRATION_FILE = "calibration.json"  # `reward_temperature` fitted by evaluation_report: sigmoid(margin / T)
READINESS_FILE = "readiness.json"  # the readiness gate's verdict, by reward_readiness
PROMOTION_FILE = "promotion.json"  # whether current_reward_model promoted this candidate to `current`
POLICY_FILE = "dpo_policy.json"  # beside a policy trained by dpo-baseline: its reference, β and data


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
