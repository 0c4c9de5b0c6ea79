"""The layout of a published model directory, and the one way files are written atomically.

A model directory holds what Hugging Face saves (``CONFIG_FILE``, weights, tokenizer), what training
writes beside it (model card, lineage, facts, metrics, history, settings, curves, the scored answers'
cache) and the sidecars evaluation adds (calibration, readiness, promotion), each written by one asset: a published
directory is never rewritten. Every name is declared here once.
Knows nothing of Dagster.
"""

from __future__ import annotations

import json
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


def reward_temperature(model_dir: Path) -> float | None:
    """The temperature evaluation fitted for this model (its `calibration.json`), None before it was evaluated.
    Raises ValueError naming the file when the sidecar can't be read as one."""
    path = Path(model_dir) / CALIBRATION_FILE
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["reward_temperature"]
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a calibration file ({type(error).__name__}: {error})") from None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{path}: reward_temperature must be a positive number, not {value!r}")
    return float(value)
