"""Accuracy of scored pairs, and the tie rule every accuracy (and training's) follows.

Ties. A pair whose two rewards are within ``TIE_TOLERANCE`` of each other is a *tie*: the model
expressed no preference, and it counts half right (the expected accuracy if the tie were broken by a coin
flip), so a model that gives every answer the same reward scores 0.5 (chance) with ``ties == n``, never 0.
``correct`` and ``wrong`` count the decisive pairs, so ``accuracy == (correct + ties / 2) / n``, and the
number of ties is always reported beside it. RewardBench's own script counts a tie as wrong; with
real-valued rewards ties are rare enough that the two agree to within ``ties / (2 n)``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.statistics import (
    CONFIDENCE,
    prompt_groups,
    rate_with_interval,
)

TIE_TOLERANCE = 1e-6


def pair_credit(margin: np.ndarray, tie_tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """1 where the chosen answer scores higher, 0 where lower, 0.5 for a tie (|margin| <= tolerance)."""
    margin = np.asarray(margin, dtype=float)
    return np.where(np.abs(margin) <= tie_tolerance, 0.5, (margin > 0).astype(float))


ACCURACY_COLUMNS = ["n", "correct", "wrong", "ties", "accuracy", "accuracy_interval", "mean_margin"]


def pair_margins(frame: pd.DataFrame) -> np.ndarray:
    """chosen_reward - rejected_reward, as floats."""
    return frame["chosen_reward"].to_numpy(float) - frame["rejected_reward"].to_numpy(float)


def tie_pair_margins(frame: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """How near zero the margins of tie pairs are (they have no right answer, so never enter an accuracy):
    n, mean_abs_margin, median_abs_margin and within_tolerance (the share scored as ties, |margin| <= tolerance)."""
    margin = np.abs(pair_margins(frame))
    n = int(margin.size)
    return {
        "n": n,
        "mean_abs_margin": float(margin.mean()) if n else math.nan,
        "median_abs_margin": float(np.median(margin)) if n else math.nan,
        "within_tolerance": float((margin <= tie_tolerance).mean()) if n else math.nan,
        "tie_tolerance": tie_tolerance,
    }


def _counts(credit: np.ndarray, margin: np.ndarray, groups=None, confidence: float = CONFIDENCE) -> dict:
    n = int(credit.size)
    ties = int((credit == 0.5).sum())
    correct = int((credit == 1.0).sum())
    return {
        "n": n,
        "correct": correct,
        "wrong": n - correct - ties,
        "ties": ties,
        "accuracy": float(credit.mean()) if n else math.nan,
        "accuracy_interval": rate_with_interval(credit, groups, confidence),
        "mean_margin": float(margin.mean()) if n else math.nan,
    }


def pair_accuracy(frame: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE, confidence: float = CONFIDENCE) -> dict:
    """Held-out accuracy of scored pairs, ties reported apart and counted half correct.

    Returns n, correct, wrong, ties, accuracy = (correct + ties / 2) / n, mean_margin (chosen minus
    rejected) and reward_mean / reward_min / reward_max over every scored answer (both sides).
    ``accuracy_interval``: its interval over prompt groups (``prompt_groups``). An empty frame gives n = 0
    and NaN statistics.
    """
    margin = pair_margins(frame)
    result = _counts(pair_credit(margin, tie_tolerance), margin, prompt_groups(frame), confidence)
    rewards = np.concatenate([frame["chosen_reward"].to_numpy(float), frame["rejected_reward"].to_numpy(float)])
    empty = rewards.size == 0
    result.update(
        reward_mean=math.nan if empty else float(rewards.mean()),
        reward_min=math.nan if empty else float(rewards.min()),
        reward_max=math.nan if empty else float(rewards.max()),
    )
    return result


def grouped_accuracy(
    frame: pd.DataFrame, by: str | pd.Series, tie_tolerance: float = TIE_TOLERANCE, confidence: float = CONFIDENCE
) -> pd.DataFrame:
    """``pair_accuracy``'s counts per group (one row per group, index = group): n, correct, wrong, ties,
    accuracy, accuracy_interval, mean_margin."""
    margin = pair_margins(frame)
    credit = pair_credit(margin, tie_tolerance)
    keys = frame[by] if isinstance(by, str) else by
    parts = pd.DataFrame(
        {
            "key": np.asarray(keys, dtype=object),
            "credit": credit,
            "margin": margin,
            "correct": credit == 1.0,
            "tie": credit == 0.5,
        }
    )
    grouped = parts.groupby("key", sort=False, dropna=False)
    table = grouped.agg(
        n=("credit", "size"),
        correct=("correct", "sum"),
        ties=("tie", "sum"),
        accuracy=("credit", "mean"),
        mean_margin=("margin", "mean"),
    )
    table["wrong"] = table["n"] - table["correct"] - table["ties"]
    prompts = prompt_groups(frame)
    table["accuracy_interval"] = [
        rate_with_interval(credit[members], None if prompts is None else prompts[members], confidence)
        for members in (members.to_numpy() for _, members in grouped.groups.items())
    ]
    table.index.name = by if isinstance(by, str) else (by.name or "group")
    return table[ACCURACY_COLUMNS].astype({"n": int, "correct": int, "wrong": int, "ties": int})
