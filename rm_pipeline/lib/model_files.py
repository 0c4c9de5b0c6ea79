"""The layout of a published model directory, the one way files are written atomically and the one way a JSON
sidecar is read.

A model directory holds what Hugging Face saves (``CONFIG_FILE``, weights, tokenizer), what training
writes beside it (model card, lineage, facts, metrics, history, settings, curves, the scored answers'
cache) and the sidecars evaluation adds (calibration, readiness, promotion), each written by one asset: a published
directory is never rewritten. Every name is declared here once.
Knows nothing of Dagster.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

CONFIG_FILE = "config.json"  # Hugging Face's model config; `reward_mean` / `reward_std` are stored in it
WEIGHTS_FILE = "model.safetensors"  # the only weights ever loaded: a pickle (pytorch_model.bin) can run code
MODEL_CARD_FILE = "README.md"
LINEAGE_FILE = "lineage.json"  # the files and stages the split came from: `rm-pipeline lineage` checks them
FACTS_FILE = "training_facts.json"  # run name, data version, annotation batches: saved with the model
TRAINING_METRICS_FILE = "training_metrics.json"
TRAINING_HISTORY_FILE = "training_history.json"
TRAINING_SETTINGS_FILE = "training_settings.json"
TRAINING_CURVES_FILE = "training_curves.png"
SCORED_FILE = "scored_answers.parquet"  # answers scored by this model, reused while WEIGHTS_FILE's sha256 matches
CALIBRATION_FILE = "calibration.json"  # `reward_temperature` fitted by evaluation_report: sigmoid(margin / T)
READINESS_FILE = "readiness.json"  # the readiness gate's verdict, by reward_readiness
PROMOTION_FILE = "promotion.json"  # whether current_reward_model promoted this candidate to `current`
POLICY_FILE = "dpo_policy.json"  # beside a policy trained by dpo-baseline: its reference, β and data
ENSEMBLE_FILE = "ensemble.json"  # an ensemble's manifest: its members (each a model directory) and λ
ENSEMBLE_MEMBERS_DIR = "members"  # an ensemble's members: members/0, members/1, ...
LENGTH_CALIBRATION_FILE = "length_calibration.json"  # reward's fitted dependence on length (training side)


def new_file_mode() -> int:
    """The mode a new file gets here (0644 under umask 022); reading the umask means setting it, at once back."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


# what reading a JSON file can raise: parsers recurse, so a deeply nested file raises RecursionError
JSON_READ_ERRORS = (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError)


def read_json_object(path: Path, what: str, error: type[Exception] = ValueError) -> dict | None:
    """The JSON object in `path`, None when there is no such file; a file that can't be read, or holds no JSON
    object, raises `error` in one line naming the file and `what` it should be."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except JSON_READ_ERRORS as problem:
        raise error(f"{path}: not a readable {what} ({type(problem).__name__}: {problem})") from None
    if not isinstance(document, dict):
        raise error(f"{path}: not a {what} (a JSON object expected, not a {type(document).__name__})")
    return document


def reward_temperature(model_dir: Path) -> float | None:
    """The temperature evaluation fitted for this model (its `calibration.json`), None before it was evaluated.
    Raises ValueError naming the file when the sidecar can't be read as one."""
    path = Path(model_dir) / CALIBRATION_FILE
    calibration = read_json_object(path, "calibration file")
    if calibration is None:
        return None
    value = calibration.get("reward_temperature")
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{path}: reward_temperature must be a positive number, not {value!r}")
    return float(value)


class ModelDirectoryError(ValueError):
    """A model directory that can't be trusted as a reward model; the message is one line naming it."""


def check_model_dir(model_dir: Path) -> None:
    """Refuse, before anything is loaded, a directory without what training publishes: a config (a JSON object),
    its training_settings.json (a base checkpoint's score head is random) and complete safetensors weights."""
    model_dir = Path(model_dir)
    config = model_dir / CONFIG_FILE
    if not config.is_file():
        raise ModelDirectoryError(f"{model_dir}: not a model directory (no {CONFIG_FILE})")
    for path in (config, model_dir / TRAINING_SETTINGS_FILE):
        if read_json_object(path, "model configuration", ModelDirectoryError) is None:
            raise ModelDirectoryError(
                f"{model_dir}: can't be loaded as a reward model (no {path.name}: not a model trained by "
                "rm-pipeline; a base checkpoint's score head is random)"
            )
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirectoryError(
            f"{model_dir}: can't be loaded as a reward model (no {WEIGHTS_FILE}; weights in pickle files such as "
            "pytorch_model.bin are never loaded)"
        )
    try:
        from safetensors import SafetensorError, safe_open

        with safe_open(str(weights), "pt") as tensors:  # reads the header: a truncated file fails here
            tensors.keys()
    except (OSError, SafetensorError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelDirectoryError(f"{weights}: not a safetensors file ({first_line})") from None


def weights_sha256(model_dir: Path) -> str:
    """The sha256 of the model's weights: what the score cache is tied to."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / WEIGHTS_FILE, "rb") as weights:
        while block := weights.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# An ensemble (rm_pipeline.lib.training.ensemble trains it, scoring.EnsembleScorer scores it): its manifest.
ENSEMBLE_FORMAT = 1
ENSEMBLE_SCORE_RULE = "mean - lambda * std of the members' rewards (std over members, ddof 0)"


def read_manifest(model_dir: Path) -> dict:
    """The ensemble's manifest, checked: members (each a relative path inside the directory) and λ. Anything
    else is a ModelDirectoryError in one line naming the file."""
    path = Path(model_dir) / ENSEMBLE_FILE
    manifest = read_json_object(path, "ensemble manifest", ModelDirectoryError)
    if manifest is None:
        raise ModelDirectoryError(f"{model_dir}: not an ensemble (no {ENSEMBLE_FILE})")
    members, weight = manifest.get("members"), manifest.get("lambda")
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
        "format": ENSEMBLE_FORMAT,
        "score": ENSEMBLE_SCORE_RULE,
        "lambda": weight,
        "member_data": member_data,
        "members": members,
    }
    (Path(model_dir) / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest
