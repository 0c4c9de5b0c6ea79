"""Whether a newly trained model (the candidate) replaces the current one: only when, scored on the same
pairs, it is not significantly worse. Pure: credits in, a decision out; knows nothing of models or Dagster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.statistics import CONFIDENCE, paired_difference, rate_interval
from rm_pipeline.lib.settings import check_settings, setting
from rm_pipeline.lib.split import normalised_prompt, prompt_groups

PROMOTED, NOT_PROMOTED = "promoted", "not_promoted"
EVIDENCE_SOURCES = ("held_out", "benchmark")  # the scored pairs both models are compared on


@dataclass(frozen=True)
class PromotionSettings:
    """When a candidate becomes `models/current`: every field is also a field of the `current_reward_model`
    run config."""

    promotion_margin: float = setting(
        0.02,
        "Accuracy the candidate may lose against the current model: it is not promoted only when the upper "
        "bound of the interval of (candidate - current) accuracy on the same pairs is below -margin.",
        minimum=0,
        maximum=1,
    )
    confidence: float = setting(CONFIDENCE, "Confidence of the intervals.", above=0, below=1)
    resamples: int = setting(2000, "Bootstrap resamples (of prompt groups).", minimum=1, maximum=1_000_000)
    seed: int = setting(
        0, "Seed of the bootstrap: the same scores give the same decision.", minimum=0, maximum=2**32 - 1
    )

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class Decision:
    status: str  # PROMOTED or NOT_PROMOTED
    reason: str
    candidate: dict | None  # accuracy interval (Interval.as_dict) on the evidence
    current: dict | None
    difference: dict | None  # candidate - current

    def as_dict(self) -> dict:
        return asdict(self)


def decide(candidate_credit, current_credit, groups, settings: PromotionSettings = PromotionSettings()) -> Decision:
    """``current_credit`` None: there is no current model, and the first model is promoted. Otherwise the
    candidate is promoted unless its paired difference is significantly below ``-promotion_margin``.
    Credits are per pair (1 right, 0 wrong, 0.5 tie), in the same order for both models; ``groups`` are
    the prompt groups resampled together."""
    candidate_credit = np.asarray(candidate_credit, dtype=float)
    bootstrap = {"confidence": settings.confidence, "resamples": settings.resamples, "seed": settings.seed}
    if len(candidate_credit) == 0:
        if current_credit is None:
            return Decision(PROMOTED, "the first model (no pairs to evaluate it on)", None, None, None)
        return Decision(NOT_PROMOTED, "no evaluation pairs to compare it with the current model on", None, None, None)
    candidate = rate_interval(candidate_credit, groups, **bootstrap)
    if current_credit is None:
        return Decision(PROMOTED, "the first model: there is no current model", candidate.as_dict(), None, None)
    current = rate_interval(current_credit, groups, **bootstrap)
    difference = paired_difference(candidate_credit, current_credit, groups, **bootstrap)
    described = (
        f"accuracy {candidate.estimate:.3f} against {current.estimate:.3f}: difference {difference.estimate:+.3f}, "
        f"{settings.confidence:.0%} interval [{difference.low:+.3f}, {difference.high:+.3f}] on "
        f"{difference.n} pairs in {difference.groups} prompt groups, margin {settings.promotion_margin}"
    )
    if difference.high < -settings.promotion_margin:
        status, reason = NOT_PROMOTED, f"significantly worse than the current model: {described}"
    else:
        status, reason = PROMOTED, f"not significantly worse than the current model: {described}"
    return Decision(status, reason, candidate.as_dict(), current.as_dict(), difference.as_dict())


def evidence_pairs(scores: pd.DataFrame) -> pd.DataFrame:
    """The candidate's scored held-out and benchmark pairs, each with its ``prompt_group``: ids linked by a
    shared prompt text, as the split groups them (a benchmark pair, which has no id, by its prompt text)."""
    evidence = scores[scores["source"].isin(EVIDENCE_SOURCES)].reset_index(drop=True)
    ids = evidence["prompt_id"].where(evidence["prompt_id"].notna(), "prompt:" + normalised_prompt(evidence["prompt"]))
    return evidence.assign(prompt_group=prompt_groups(evidence.assign(prompt_id=ids)) if len(evidence) else [])


def promotion_record(
    evidence: pd.DataFrame, candidate_credit, current_credit, settings: PromotionSettings = PromotionSettings()
) -> dict:
    """The decision on ``evidence`` (from `evidence_pairs`) and what it rests on: both models' accuracies on
    every evidence pair and on the held-out pairs alone, with intervals, the margin and the pair counts."""
    groups = evidence["prompt_group"].to_numpy()
    decision = decide(candidate_credit, current_credit, groups, settings)
    held = (evidence["source"] == "held_out").to_numpy()

    def held_out(credit) -> dict | None:
        if credit is None or not held.any():
            return None
        interval = rate_interval(
            np.asarray(credit, dtype=float)[held],
            groups[held],
            confidence=settings.confidence,
            resamples=settings.resamples,
            seed=settings.seed,
        )
        return interval.as_dict()

    return {
        **decision.as_dict(),
        "held_out": {"candidate": held_out(candidate_credit), "current": held_out(current_credit)},
        "margin": settings.promotion_margin,
        "confidence": settings.confidence,
        "pairs": len(evidence),
        "groups": int(evidence["prompt_group"].nunique()),
        "pairs_by_source": {str(k): int(v) for k, v in evidence["source"].value_counts().items()},
    }
