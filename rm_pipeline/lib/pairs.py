"""Aggregated comparisons to chosen/rejected pairs, each rejected one with its reason.

Input count = kept + rejected, always. Knows nothing of Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from rm_pipeline.lib.settings import check_settings, setting
from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH

# Checked in this order; a pair is rejected for the first rule it breaks.
REJECTION_REASONS = (
    "dropped_by_reviewer",
    "tie_or_abstention",
    "empty_prompt",
    "empty_candidate",
    "context_mismatch",
    "identical_candidates",
    "disputed",
    "duplicate",
    "too_long",
)

PAIR_COLUMNS = [
    "pair_id",
    "prompt_id",
    "prompt",
    "conversational",
    "chosen",
    "rejected",
    "domain",
    "source",
    "batches",
    "n_votes",
    "chosen_share",
    "tie_share",
    "strength",
    "confidence",
    "chosen_tokens",
    "rejected_tokens",
    "preference",
]
REJECTED_COLUMNS = [
    "item_id",
    "reason",
    "detail",
    "prompt_id",
    "prompt",
    "conversational",
    "response_a",
    "response_b",
    "winner",
    "domain",
    "source",
    "batches",
    "n_votes",
    "chosen_share",
]


# The target probability that `chosen` beats `rejected`: a preferred pair, or a tie (sides in the order a, b).
PREFERRED, TIE = 1.0, 0.5
TieHandling = Literal["drop", "soft"]


@dataclass(frozen=True)
class PairSettings:
    include_disputed: bool = setting(False, "Train on review-queue comparisons too.")
    tie_handling: TieHandling = setting(
        "drop",
        "drop: a comparison whose aggregated outcome is a tie is rejected (tie_or_abstention). soft: it is kept "
        "as a tie pair (preference 0.5, response a as `chosen`), trained towards equal rewards and left out "
        "of held-out accuracy.",
    )

    def __post_init__(self):
        check_settings(self)


def tie_pairs(pairs: pd.DataFrame) -> pd.Series:
    """True for tie pairs (preference 0.5); a table from before ties could be kept has none."""
    if "preference" not in pairs:
        return pd.Series(False, index=pairs.index)
    return pairs["preference"].to_numpy(float) == TIE


TokenLengths = Callable[[pd.Series, pd.Series, pd.Series], np.ndarray]

# No tokenizer turns fewer than this many characters into one token (real text averages about 4), so a
# side longer than max_length * CHARS_PER_TOKEN_CEILING characters is too long without being tokenized:
# tokenizing a 50 MB text to learn that takes minutes and gigabytes.
CHARS_PER_TOKEN_CEILING = 64


class Rejections:
    """The reason (and detail, and offending side: prompt, chosen or rejected) of each rejected row;
    a row keeps the first reason it gets."""

    def __init__(self, index: pd.Index):
        self.reason = pd.Series(None, index=index, dtype=object)
        self.detail = pd.Series(None, index=index, dtype=object)
        self.field = pd.Series(None, index=index, dtype=object)

    def reject(self, mask, why: str, detail, field="rejected") -> None:
        mask = pd.Series(mask, index=self.reason.index).fillna(False).astype(bool) & self.reason.isna()
        self.reason[mask] = why
        for target, value in ((self.detail, detail), (self.field, field)):
            target[mask] = value if isinstance(value, str) else value[mask]


def check_pair_rules(pairs: pd.DataFrame, rejections: Rejections | None = None) -> Rejections:
    """The rules that judge one labelled pair on its own: empty_prompt, empty_candidate, context_mismatch,
    identical_candidates. ``pairs`` has prompt, chosen, rejected, context_a, context_b (the chosen and
    rejected sides' conversations, or missing). Training pairs (``build_pairs``) and evaluation files
    (``evaluation.read_pair_file``) both go through them, so one pair gets the same verdict in either."""
    rejections = rejections if rejections is not None else Rejections(pairs.index)

    def blank(column: str) -> pd.Series:
        return pairs[column].fillna("").astype(str).str.strip() == ""

    rejections.reject(blank("prompt"), "empty_prompt", "the prompt is empty", "prompt")
    rejections.reject(
        blank("chosen") | blank("rejected"),
        "empty_candidate",
        "a candidate is empty or whitespace",
        pd.Series(np.where(blank("chosen"), "chosen", "rejected"), index=pairs.index),
    )
    has_contexts = pairs["context_a"].notna() & pairs["context_b"].notna()
    rejections.reject(
        has_contexts & (pairs["context_a"] != pairs["context_b"]),
        "context_mismatch",
        "the two candidates answer different conversations",
    )
    rejections.reject(pairs["chosen"] == pairs["rejected"], "identical_candidates", "both candidates are the same text")
    return rejections


def build_pairs(
    comparisons: pd.DataFrame,
    disputed_item_ids=(),
    token_lengths: TokenLengths | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    include_disputed: bool = PairSettings.include_disputed,
    tie_handling: TieHandling = PairSettings.tie_handling,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split comparisons into training pairs and rejected ones; with ``tie_handling="soft"`` a tied
    comparison is a kept pair with preference 0.5 (response a as `chosen`), otherwise rejected.

    `token_lengths(prompts, responses, conversational)` counts tokens with the base model's own
    tokenizer; without it the `too_long` rule is skipped (and said so by the caller).
    """
    frame = comparisons.copy()
    chose_b = frame["winner"] == "b"
    frame["chosen"] = frame["response_a"].where(~chose_b, frame["response_b"])
    frame["rejected"] = frame["response_b"].where(~chose_b, frame["response_a"])
    rejections = Rejections(frame.index)
    reason, reject = rejections.reason, rejections.reject

    dropped = frame["review_decision"] == "drop"
    if dropped.any():  # (the review queue, also paired here, has no reviewer columns beyond review_decision)
        note = (": " + frame["review_note"].astype(str)).where(frame["review_note"].notna(), "")
        reject(dropped, "dropped_by_reviewer", "dropped by reviewer " + frame["adjudicated_by"].astype(str) + note)
    PairSettings(tie_handling=tie_handling)  # an unknown value is an error naming the field and the choices
    outcomes = ("a", "b", "tie") if tie_handling == "soft" else ("a", "b")
    reject(~frame["winner"].isin(outcomes), "tie_or_abstention", "aggregated outcome: " + frame["winner"])
    frame["preference"] = np.where(frame["winner"] == "tie", TIE, PREFERRED)
    check_pair_rules(frame, rejections)
    if not include_disputed:
        # Compared as objects: pandas' isin on an Arrow string column, or iterating one into a set, is
        # several times slower (~1 s for 300k ids).
        ids = disputed_item_ids if isinstance(disputed_item_ids, pd.Series) else list(disputed_item_ids)
        disputed = frame["item_id"].astype(object).isin(np.asarray(ids, dtype=object))
        reject(disputed, "disputed", "routed to the review queue")
    undecided = reason.isna()
    repeated = frame[undecided].duplicated(["prompt", "chosen", "rejected"], keep="first")
    reject(
        repeated.reindex(frame.index, fill_value=False),
        "duplicate",
        "the same prompt, chosen and rejected as an earlier pair",
    )

    frame["chosen_tokens"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame["rejected_tokens"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    if token_lengths is not None:
        _length_rule(frame, rejections, token_lengths, max_length)

    kept = frame[reason.isna()].rename(columns={"item_id": "pair_id"})[PAIR_COLUMNS].reset_index(drop=True)
    bad = reason.notna()  # assign only the rejected rows' values: on an empty frame, assign adopts the index
    rejected = frame[bad].assign(reason=reason[bad], detail=rejections.detail[bad])[REJECTED_COLUMNS]
    rejected = rejected.reset_index(drop=True)
    if len(kept) + len(rejected) != len(comparisons):
        raise AssertionError(
            f"pair validation lost rows: {len(comparisons)} in, {len(kept)} kept, {len(rejected)} rejected"
        )
    return kept, rejected


def _length_rule(frame: pd.DataFrame, rejections: Rejections, token_lengths: TokenLengths, max_length: int) -> None:
    """too_long: the longer side over ``max_length`` tokens. Texts far beyond any tokenizer's reach of
    ``max_length`` tokens are rejected on their character count alone, without tokenizing them."""
    characters = frame["prompt"].fillna("").astype(str).str.len() + np.maximum(
        frame["chosen"].fillna("").astype(str).str.len(), frame["rejected"].fillna("").astype(str).str.len()
    )
    huge = rejections.reason.isna() & (characters > max_length * CHARS_PER_TOKEN_CEILING)
    rejections.reject(
        huge, "too_long", characters.astype(str) + f" characters, far beyond max_length {max_length} tokens"
    )
    measured = rejections.reason.isna()
    if not measured.any():
        return
    rows = frame[measured]
    frame.loc[measured, "chosen_tokens"] = token_lengths(rows["prompt"], rows["chosen"], rows["conversational"])
    frame.loc[measured, "rejected_tokens"] = token_lengths(rows["prompt"], rows["rejected"], rows["conversational"])
    longest = frame[["chosen_tokens", "rejected_tokens"]].max(axis=1)
    rejections.reject(
        measured & (longest > max_length),
        "too_long",
        "longest side " + longest.astype(str) + f" tokens > max_length {max_length}",
    )


def rejection_counts(rejected: pd.DataFrame) -> dict[str, int]:
    """Every known reason with its count (zeros included), so reports always show the same rows."""
    counts = rejected["reason"].value_counts()
    return {name: int(counts.get(name, 0)) for name in REJECTION_REASONS}
