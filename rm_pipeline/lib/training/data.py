"""Preference pairs as TRL's pre-tokenized datasets: ids, target preference, margin and length."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rm_pipeline.lib.pairs import PREFERRED, tie_pairs
from rm_pipeline.lib.tokenization import encode, response_tokens
from rm_pipeline.lib.training.settings import Report, TrainingSettings


def pair_dataset(pairs: pd.DataFrame, tokenizer, settings: TrainingSettings):
    """TRL's pre-tokenized format (`chosen_ids`/`rejected_ids`, optional `margin`), the target `preference`
    (1 or 0.5 for a tie, which gets no margin) for `preference_loss`, a `length` column for length-grouped
    batches, and with `length_head` each response's own tokens (`chosen_tokens`, `rejected_tokens`).
    Tokenized by the same code as the max_length rule."""
    from datasets import Dataset

    chosen = encode(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
    rejected = encode(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
    columns = {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "length": [len(c) + len(r) for c, r in zip(chosen, rejected)],
        "preference": preferences(pairs).tolist(),
    }
    if settings.length_head:  # each response's own length, for ODIN's correlation terms
        columns["chosen_tokens"] = response_tokens(tokenizer, pairs["chosen"])
        columns["rejected_tokens"] = response_tokens(tokenizer, pairs["rejected"])
    if settings.use_margin:
        columns["margin"] = np.where(tie_pairs(pairs), 0.0, margins(pairs, settings.margin_per_strength)).tolist()
    return Dataset.from_dict(columns)


def _within_max_length(dataset, max_length: int):
    kept = dataset.filter(lambda row: max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= max_length)
    return kept, len(dataset) - len(kept)


def margins(pairs: pd.DataFrame, per_strength: float) -> np.ndarray:
    """Preference strength as TRL's margin: 0 where no strength was given."""
    strength = pd.to_numeric(pairs.get("strength", pd.Series(np.nan, index=pairs.index)), errors="coerce")
    return (strength.fillna(0.0).to_numpy(dtype=np.float64)) * per_strength


def preferences(pairs: pd.DataFrame) -> np.ndarray:
    """Each pair's target preference; 1 for a table from before ties could be kept."""
    if "preference" not in pairs:
        return np.full(len(pairs), PREFERRED)
    return pairs["preference"].to_numpy(np.float64)


@dataclass
class TrainingData:
    train: object  # datasets.Dataset, pre-tokenized for TRL
    evaluation: object | None  # the whole eval split, scored at the end
    early_stopping: object | None  # a fixed sample of it, scored at each evaluation
    train_over_max_length: int


def training_data(
    train: pd.DataFrame, evaluation: pd.DataFrame, tokenizer, settings: TrainingSettings, report: Report
) -> TrainingData:
    train_data, over_length = _within_max_length(pair_dataset(train, tokenizer, settings), settings.max_length)
    if over_length:  # only when the base model differs from the one preference_pairs counted with
        report(
            "log",
            {
                "message": f"{over_length} train pairs exceed max_length {settings.max_length} under "
                f"{settings.base_model}'s tokenizer: dropped, not truncated"
            },
        )
    eval_data = pair_dataset(evaluation, tokenizer, settings) if len(evaluation) else None
    # Early stopping evaluates often: a fixed sample keeps that cheap, sorted by length so that its batches carry
    # little padding (Trainer evaluates in order); the full split is scored at the end.
    stopping = (
        eval_data.shuffle(seed=settings.seed)
        .select(range(min(settings.early_stopping_eval_pairs, len(eval_data))))
        .sort("length")
        if eval_data is not None
        else None
    )
    return TrainingData(train_data, eval_data, stopping, over_length)
