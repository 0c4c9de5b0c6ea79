"""Length bias: does the model prefer the longer answer, and how accurate is it on length-matched pairs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import TIE_TOLERANCE, pair_credit, pair_margins
from rm_pipeline.lib.evaluation.statistics import (
    CONFIDENCE,
    correlation_with_interval,
    prompt_groups,
    rate_with_interval,
    spearman,
)

LENGTH_MATCH_TOLERANCE = 0.10


def stacked_responses(frame: pd.DataFrame) -> pd.DataFrame:
    """Every scored answer of the pairs as its own row: pair_id, side ('chosen' | 'rejected'), reward, tokens."""
    sides = []
    for side in ("chosen", "rejected"):
        sides.append(
            pd.DataFrame(
                {
                    "pair_id": frame["pair_id"].to_numpy() if "pair_id" in frame else frame.index,
                    "side": side,
                    "reward": frame[f"{side}_reward"].to_numpy(float),
                    "tokens": frame[f"{side}_tokens"].to_numpy(float),
                }
            )
        )
    return pd.concat(sides, ignore_index=True)


def length_matched(frame: pd.DataFrame, tolerance: float = LENGTH_MATCH_TOLERANCE) -> np.ndarray:
    """True where chosen and rejected lengths differ by at most ``tolerance`` of the longer one."""
    chosen, rejected = frame["chosen_tokens"].to_numpy(float), frame["rejected_tokens"].to_numpy(float)
    return np.abs(chosen - rejected) <= tolerance * np.maximum(chosen, rejected)


def length_audit(
    frame: pd.DataFrame,
    rewards_and_lengths: pd.DataFrame | None = None,
    tolerance: float = LENGTH_MATCH_TOLERANCE,
    tie_tolerance: float = TIE_TOLERANCE,
    confidence: float = CONFIDENCE,
) -> dict:
    """How much of the model's preference is answer length.

    - ``spearman_rho`` / ``spearman_p`` / ``spearman_n``: rank correlation of reward with length in
      tokens over every answer of the pairs (chosen and rejected stacked);
    - ``longer_wins_accuracy``: accuracy against the human labels of the baseline "the longer answer
      wins" on the same pairs (equal lengths count half, like model ties; ``equal_length`` of them);
    - ``model_prefers_longer``: how often the model's preference agrees with that baseline, over the
      ``length_differs_n`` pairs whose lengths differ (model ties half); 1.0 for a pure length model;
    - ``length_matched_n`` / ``length_matched_accuracy``: the model's accuracy on pairs whose lengths
      are within ``tolerance`` (10%) of the longer one, where length cannot explain a win
      (``length_matched_ties`` of them tied; accuracy NaN when there are none);
    - with ``rewards_and_lengths`` (any scored answers, columns ``reward`` and ``tokens``, e.g. fresh
      policy outputs): ``responses_spearman_rho`` / ``_p`` / ``_n`` over those too.

    Each rate and correlation has its interval as ``<name>_interval`` (answers and pairs resampled by prompt,
    policy outputs by their ``group_id``, the prompt, when given).
    """
    margin = pair_margins(frame)
    length_gap = frame["chosen_tokens"].to_numpy(float) - frame["rejected_tokens"].to_numpy(float)
    answers = stacked_responses(frame)
    rho, p_value = spearman(answers["reward"], answers["tokens"])
    differs = length_gap != 0
    longer_credit = pair_credit(length_gap, tie_tolerance=0.0)
    agreement_credit = pair_credit(np.sign(length_gap[differs]) * margin[differs], tie_tolerance)
    matched = length_matched(frame, tolerance)
    matched_credit = pair_credit(margin[matched], tie_tolerance)
    prompts = prompt_groups(frame)
    per_pair = (lambda mask: None) if prompts is None else (lambda mask: prompts[mask])
    everything = np.ones(len(frame), dtype=bool)
    result = {
        "n": int(len(frame)),
        "spearman_rho": rho,
        "spearman_p": p_value,
        "spearman_rho_interval": correlation_with_interval(
            answers["reward"],
            answers["tokens"],
            None if prompts is None else np.concatenate([prompts, prompts]),
            confidence,
        ),
        "spearman_n": int(len(answers)),
        "longer_wins_accuracy": float(longer_credit.mean()) if len(frame) else math.nan,
        "longer_wins_accuracy_interval": rate_with_interval(longer_credit, per_pair(everything), confidence=confidence),
        "equal_length": int((~differs).sum()),
        "model_prefers_longer": float(agreement_credit.mean()) if differs.any() else math.nan,
        "model_prefers_longer_interval": rate_with_interval(agreement_credit, per_pair(differs), confidence=confidence),
        "length_differs_n": int(differs.sum()),
        "length_matched_n": int(matched.sum()),
        "length_matched_accuracy": float(matched_credit.mean()) if matched.any() else math.nan,
        "length_matched_accuracy_interval": rate_with_interval(
            matched_credit, per_pair(matched), confidence=confidence
        ),
        "length_matched_ties": int((matched_credit == 0.5).sum()),
    }
    if rewards_and_lengths is not None:
        rho, p_value = spearman(rewards_and_lengths["reward"], rewards_and_lengths["tokens"])
        groups = rewards_and_lengths["group_id"].astype(str).to_numpy() if "group_id" in rewards_and_lengths else None
        result.update(
            responses_spearman_rho=rho,
            responses_spearman_rho_interval=correlation_with_interval(
                rewards_and_lengths["reward"], rewards_and_lengths["tokens"], groups, confidence
            ),
            responses_spearman_p=p_value,
            responses_spearman_n=int(len(rewards_and_lengths)),
        )
    return result
