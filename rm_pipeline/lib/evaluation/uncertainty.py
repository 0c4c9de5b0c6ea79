"""Accuracy against an ensemble's uncertainty: does the model know when it is guessing? Pairs scored by an
ensemble carry each answer's uncertainty (the members' std, ``chosen_uncertainty`` / ``rejected_uncertainty``);
a pair's uncertainty is their root sum of squares (the std of the margin if the two sides' errors were
independent). Pairs are cut into equal-count bins by it, and each bin's accuracy has its interval: a useful
uncertainty shows accuracy falling from the most certain bin to the least. Knows nothing of Dagster or models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import grouped_accuracy
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE
from rm_pipeline.lib.markdown import format_number, markdown_table, with_intervals

UNCERTAINTY_BINS = 5  # quintiles


def pair_uncertainty(frame: pd.DataFrame) -> np.ndarray:
    """sqrt(chosen_uncertainty² + rejected_uncertainty²) per pair."""
    return np.hypot(frame["chosen_uncertainty"].to_numpy(float), frame["rejected_uncertainty"].to_numpy(float))


def accuracy_by_uncertainty(frame: pd.DataFrame, bins: int = UNCERTAINTY_BINS, confidence: float = CONFIDENCE) -> dict:
    """n, mean_uncertainty and ``table``: per bin of pair uncertainty (1: the most certain pairs), its range
    (uncertainty_low, uncertainty_high) and `grouped_accuracy`'s counts and accuracy with its interval.
    ``{"n": 0}`` for pairs scored without uncertainty (a single model) or none at all."""
    if "chosen_uncertainty" not in frame or not len(frame):
        return {"n": 0}
    frame = frame.reset_index(drop=True)
    uncertainty = pair_uncertainty(frame)
    count = min(bins, len(frame))
    ranks = pd.Series(uncertainty).rank(method="first").to_numpy()
    labels = pd.Series(np.ceil(ranks * count / len(frame)).astype(int), name="uncertainty_bin")
    table = grouped_accuracy(frame, labels, confidence=confidence).sort_index()
    spans = pd.Series(uncertainty).groupby(labels.to_numpy()).agg(["min", "max"])
    table = table.assign(uncertainty_low=spans["min"], uncertainty_high=spans["max"])
    return {
        "n": len(frame),
        "bins": count,
        "mean_uncertainty": float(uncertainty.mean()),
        "table": table.reset_index().to_dict("records"),
    }


def render_uncertainty(result: dict) -> str | None:
    """The report's section (None for a single model: it has no uncertainty)."""
    if not result or not result.get("n"):
        return None
    rows = [
        {
            **row,
            "uncertainty": f"{format_number(row['uncertainty_low'])} to {format_number(row['uncertainty_high'])}",
        }
        for row in with_intervals(result["table"])
    ]
    return "\n".join(
        [
            "## Accuracy against uncertainty (ensemble)\n",
            f"Held-out pairs in {result['bins']} equal-count bins of the ensemble's uncertainty (the members' std, "
            f"both answers together; mean {format_number(result['mean_uncertainty'])}), from the most certain "
            "bin (1) to the least. Accuracy that falls across the bins means the uncertainty flags the pairs the "
            "model gets wrong.\n",
            markdown_table(rows, ["uncertainty_bin", "uncertainty", "n", "accuracy", "ties"]),
        ]
    )
