"""Aggregated comparisons to chosen/rejected pairs, each rejected one with its reason.

Input count = kept + rejected, always. Knows nothing of Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from rm_pipeline.lib.settings import setting
from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH

# Checked in this order; a pair is rejected for the first rule it breaks.
REJECTION_REASONS = ("tie_or_abstention", "empty_prompt", "empty_candidate", "context_mismatch",
                     "identical_candidates", "disputed", "duplicate", "too_long")

PAIR_COLUMNS = ["pair_id", "prompt_id", "prompt", "conversational", "chosen", "rejected", "domain", "source",
                "batches", "n_votes", "chosen_share", "tie_share", "strength", "confidence", "chosen_tokens",
                "rejected_tokens"]
REJECTED_COLUMNS = ["item_id", "reason", "detail", "prompt_id", "prompt", "conversational", "response_a",
                    "response_b", "winner", "domain", "source", "batches", "n_votes", "chosen_share"]



@dataclass(frozen=True)
class PairSettings:
    include_disputed: bool = setting(False, "Train on review-queue comparisons too.")


TokenLengths = Callable[[pd.Series, pd.Series, pd.Series], np.ndarray]


def build_pairs(comparisons: pd.DataFrame, disputed_item_ids=(), token_lengths: TokenLengths | None = None,
                max_length: int = DEFAULT_MAX_LENGTH,
                include_disputed: bool = PairSettings.include_disputed) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split comparisons into training pairs and rejected ones.

    `token_lengths(prompts, responses, conversational)` counts tokens with the base model's own
    tokenizer; without it the `too_long` rule is skipped (and said so by the caller).
    """
    frame = comparisons.copy()
    chose_b = frame["winner"] == "b"
    frame["chosen"] = frame["response_a"].where(~chose_b, frame["response_b"])
    frame["rejected"] = frame["response_b"].where(~chose_b, frame["response_a"])
    reason = pd.Series(None, index=frame.index, dtype=object)
    detail = pd.Series(None, index=frame.index, dtype=object)

    def reject(mask, why, text):
        mask = pd.Series(mask, index=frame.index).fillna(False).astype(bool) & reason.isna()
        reason[mask] = why
        detail[mask] = text if isinstance(text, str) else text[mask]

    blank = lambda column: frame[column].fillna("").str.strip() == ""  # noqa: E731
    reject(~frame["winner"].isin(("a", "b")), "tie_or_abstention", "aggregated outcome: " + frame["winner"])
    reject(blank("prompt"), "empty_prompt", "the prompt is empty")
    reject(blank("response_a") | blank("response_b"), "empty_candidate", "a candidate is empty or whitespace")
    has_contexts = frame["context_a"].notna() & frame["context_b"].notna()
    reject(has_contexts & (frame["context_a"] != frame["context_b"]), "context_mismatch",
           "the two candidates answer different conversations")
    reject(frame["response_a"] == frame["response_b"], "identical_candidates", "both candidates are the same text")
    if not include_disputed:
        # Compared as objects: pandas' isin on an Arrow string column, or iterating one into a set, is
        # several times slower (~1 s for 300k ids).
        ids = disputed_item_ids if isinstance(disputed_item_ids, pd.Series) else list(disputed_item_ids)
        disputed = frame["item_id"].astype(object).isin(np.asarray(ids, dtype=object))
        reject(disputed, "disputed", "routed to the review queue")
    undecided = reason.isna()
    repeated = frame[undecided].duplicated(["prompt", "chosen", "rejected"], keep="first")
    reject(repeated.reindex(frame.index, fill_value=False), "duplicate",
           "the same prompt, chosen and rejected as an earlier pair")

    frame["chosen_tokens"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame["rejected_tokens"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    if token_lengths is not None:
        measured = reason.isna()
        rows = frame[measured]
        frame.loc[measured, "chosen_tokens"] = token_lengths(rows["prompt"], rows["chosen"], rows["conversational"])
        frame.loc[measured, "rejected_tokens"] = token_lengths(rows["prompt"], rows["rejected"],
                                                               rows["conversational"])
        longest = frame[["chosen_tokens", "rejected_tokens"]].max(axis=1)
        reject(measured & (longest > max_length), "too_long",
               "longest side " + longest.astype(str) + f" tokens > max_length {max_length}")

    kept = frame[reason.isna()].rename(columns={"item_id": "pair_id"})[PAIR_COLUMNS].reset_index(drop=True)
    bad = reason.notna()  # assign only the rejected rows' values: on an empty frame, assign adopts the index
    rejected = frame[bad].assign(reason=reason[bad], detail=detail[bad])[REJECTED_COLUMNS].reset_index(drop=True)
    if len(kept) + len(rejected) != len(comparisons):
        raise AssertionError(f"pair validation lost rows: {len(comparisons)} in, {len(kept)} kept, "
                             f"{len(rejected)} rejected")
    return kept, rejected


def rejection_counts(rejected: pd.DataFrame) -> dict[str, int]:
    """Every known reason with its count (zeros included), so reports always show the same rows."""
    counts = rejected["reason"].value_counts()
    return {name: int(counts.get(name, 0)) for name in REJECTION_REASONS}
