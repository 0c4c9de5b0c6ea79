"""Post-hoc length calibration (Huang et al. 2024, "Post-hoc reward calibration: a case study on length bias"):
the reward's dependence on response length, fitted on training-side answers by locally weighted linear
regression (LOWESS, tricube weights) and subtracted at scoring time. No retraining; the fit is a sidecar of
the model (`LENGTH_CALIBRATION_FILE`), applied when scoring asks for it. Knows nothing of Dagster or models.

Calibrated reward = reward - (f(tokens) - mean of f over the fitted answers): answers of equal length move by
the same amount (their order is kept), and the mean reward is unchanged. Beyond the fitted lengths f is held
at its end values: no extrapolation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rm_pipeline.lib.model_files import (
    LENGTH_CALIBRATION_FILE,
    ModelDirectoryError,
    read_json_object,
    write_atomically,
)

METHOD = "lowess"
KNOTS = 25  # points of the fitted curve stored; f is linear between them
NEIGHBOURS = 0.3  # share of the answers each local fit weighs (LOWESS's span)
MIN_ANSWERS = 20  # fewer answers can't say how reward depends on length
TRAINING_ANSWERS = 512  # training-side answers scored for the fit (~10 s for MiniLM on a CPU)


def _local_fit(x: np.ndarray, y: np.ndarray, at: float, span: int) -> float:
    """The weighted least-squares line through the `span` answers nearest `at` (tricube weights), at `at`."""
    distance = np.abs(x - at)
    nearest = np.argpartition(distance, span - 1)[:span]
    reach = distance[nearest].max()
    weights = (1 - (distance[nearest] / reach) ** 3) ** 3 if reach > 0 else np.ones(span)
    xs, ys = x[nearest], y[nearest]
    total = weights.sum()
    if total <= 0:
        return float(ys.mean())
    mean_x, mean_y = (weights @ xs) / total, (weights @ ys) / total
    spread = weights @ (xs - mean_x) ** 2
    slope = (weights @ ((xs - mean_x) * (ys - mean_y))) / spread if spread > 0 else 0.0
    return float(mean_y + slope * (at - mean_x))


def fit_length_calibration(rewards, tokens, knots: int = KNOTS, neighbours: float = NEIGHBOURS) -> dict:
    """The fitted curve reward ~ f(tokens) as knots (`tokens`, `reward`), and `offset`, the mean of f over the
    answers: what `remove_length_effect` subtracts relative to. Raises ValueError on too few answers."""
    x, y = np.asarray(tokens, dtype=float), np.asarray(rewards, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < MIN_ANSWERS:
        raise ValueError(f"length calibration needs at least {MIN_ANSWERS} scored answers; got {x.size}")
    span = max(MIN_ANSWERS // 2, int(np.ceil(neighbours * x.size)))
    grid = np.unique(np.quantile(x, np.linspace(0, 1, knots)))
    curve = np.array([_local_fit(x, y, at, min(span, x.size)) for at in grid])
    fit = {"method": METHOD, "tokens": grid.tolist(), "reward": curve.tolist(), "answers": int(x.size)}
    fit["offset"] = float(length_effect(fit, x).mean())
    fit["slope_before"] = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
    return fit


def fit_on_training_side(scorer, train, answers: int = TRAINING_ANSWERS, seed: int = 0) -> dict | None:
    """The length effect of `scorer`'s raw rewards (a `RewardScorer` or an ensemble's, without a length fit) on
    training-side answers: both sides of `train`'s pairs, at most `answers` of them (a seeded sample).
    None with too few answers to fit."""
    import pandas as pd

    stacked = pd.concat(
        [
            train[["prompt", "conversational", side]].rename(columns={side: "response"})
            for side in ("chosen", "rejected")
        ]
    ).drop_duplicates()
    if len(stacked) < MIN_ANSWERS:
        return None
    if len(stacked) > answers:
        stacked = stacked.sample(answers, random_state=seed)
    scored = scorer.score(stacked["prompt"], stacked["response"], stacked["conversational"])
    return fit_length_calibration(scored["reward"], scored["tokens"])


def length_effect(fit: dict, tokens) -> np.ndarray:
    """f(tokens): the fitted curve, linear between its knots and flat beyond them."""
    return np.interp(np.asarray(tokens, dtype=float), fit["tokens"], fit["reward"])


def remove_length_effect(rewards, tokens, fit: dict) -> np.ndarray:
    """Rewards with their fitted length effect subtracted (the mean reward of the fitted answers kept)."""
    return np.asarray(rewards, dtype=float) - (length_effect(fit, tokens) - fit["offset"])


def write_length_calibration(model_dir: Path, fit: dict) -> None:
    write_atomically(Path(model_dir) / LENGTH_CALIBRATION_FILE, json.dumps(fit, indent=2))


def read_length_calibration(model_dir: Path) -> dict:
    """The model's fitted length effect; ModelDirectoryError in one line naming the file when it is missing or
    not one."""
    path = Path(model_dir) / LENGTH_CALIBRATION_FILE
    fit = read_json_object(path, "length calibration file", ModelDirectoryError)
    if fit is None:
        raise ModelDirectoryError(
            f"{model_dir}: no {LENGTH_CALIBRATION_FILE} (length calibration is fitted when a model is trained; "
            "score without length_calibration, or train it again)"
        )
    try:
        grid, curve = np.asarray(fit["tokens"], dtype=float), np.asarray(fit["reward"], dtype=float)
        ok = grid.ndim == 1 and grid.size == curve.size > 0 and np.all(np.diff(grid) > 0)
        ok = ok and np.isfinite(curve).all() and np.isfinite(float(fit["offset"]))
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise ModelDirectoryError(f"{path}: not a length calibration file (tokens, reward and offset expected)")
    return fit
