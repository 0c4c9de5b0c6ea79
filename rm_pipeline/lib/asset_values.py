"""The typed values assets hand each other, and the metadata names they share: what one stage promises the next.

A value is stored as JSON (`to_json`/`from_json`, never a pickle): a pointer to files, or a small record.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

# Metadata entries read across stages, the CLI and lineage.
MODEL_PATH = "model_path"  # the model directory an asset made or judged
DATA_VERSION = "data_version"  # of preference_split, and on reward_model: the split it was trained on
READY = "optimize_against_reward"  # the readiness verdict
READINESS_CHECK = "reward_model_ready"  # the blocking check that carries the verdict
# Columns of reward_scores and response_scores: the model that scored a row, and the precision it scored in.
SCORED_BY, SCORED_IN = "scored_by", "scored_in"
LENGTH_CALIBRATED = "length_calibrated"  # reward_scores' column: scored with the model's length calibration


@dataclass(frozen=True)
class PublishedModel:
    """A trained reward model as published by `reward_model`: its directory is never rewritten afterwards."""

    path: str
    split_data_version: str  # the data version of the split it was trained on
    precision: str  # what it was trained in: bf16 or fp32

    @property
    def directory(self) -> Path:
        return Path(self.path)

    @property
    def name(self) -> str:
        return self.directory.name


@dataclass(frozen=True)
class EvaluationReport:
    """The evaluation report of one model: where its JSON and Markdown are."""

    model_path: str
    json_path: str
    markdown_path: str

    @property
    def folder(self) -> Path:
        return Path(self.json_path).parent

    def document(self) -> dict:
        return json.loads(Path(self.json_path).read_text(encoding="utf-8"))


VALUE_TYPES = {kind.__name__: kind for kind in (PublishedModel, EvaluationReport)}


def to_json(value) -> str:
    """A value as JSON text: a dataclass above, or a plain JSON-able dict (a verdict, a record)."""
    if dataclasses.is_dataclass(value) and type(value).__name__ in VALUE_TYPES:
        document = {"type": type(value).__name__, "value": dataclasses.asdict(value)}
    elif isinstance(value, dict):
        document = {"type": "dict", "value": value}
    else:
        raise TypeError(f"an asset value must be one of {', '.join(VALUE_TYPES)} or a dict, got {type(value).__name__}")
    return json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"


def from_json(text: str):
    document = json.loads(text)
    kind = document["type"]
    return document["value"] if kind == "dict" else VALUE_TYPES[kind](**document["value"])
