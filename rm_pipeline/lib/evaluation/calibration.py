"""Calibration of the reward margin read as a win probability: reliability bins, ECE, and a fitted temperature."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, special


def win_probability(margin: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Bradley-Terry P(chosen wins) = sigmoid(margin / temperature)."""
    return special.expit(np.asarray(margin, dtype=float) / temperature)


def _outcomes(margin: np.ndarray, outcomes: np.ndarray | None) -> np.ndarray:
    if outcomes is None:
        return np.ones_like(margin)
    outcomes = np.asarray(outcomes, dtype=float)
    if outcomes.shape != margin.shape:
        raise ValueError(f"{outcomes.size} outcomes for {margin.size} margins")
    return outcomes


def negative_log_likelihood(margin: np.ndarray, outcomes: np.ndarray | None = None, temperature: float = 1.0) -> float:
    """Mean Bradley-Terry negative log-likelihood of the outcomes (1 = chosen won; soft labels allowed)."""
    margin = np.asarray(margin, dtype=float)
    outcomes = _outcomes(margin, outcomes)
    z = margin / temperature
    # -[o log s(z) + (1 - o) log s(-z)] with log s(z) = -log(1 + e^-z), computed without overflow.
    return float(np.mean(outcomes * np.logaddexp(0.0, -z) + (1 - outcomes) * np.logaddexp(0.0, z)))


def calibration(
    margins: np.ndarray,
    outcomes: np.ndarray | None = None,
    bins: int = 10,
    temperature: float = 1.0,
    symmetric: bool = True,
) -> dict:
    """Reliability of P(chosen wins) = sigmoid(margin / temperature) against the observed win rate.

    ``outcomes``: 1 where the chosen answer really won (the default: every eval pair's chosen answer
    is the human winner), or a soft label such as ``chosen_share``. With ``symmetric`` (default) each
    pair enters twice, as (margin, outcome) and (-margin, 1 - outcome): the diagram then does not
    depend on which side the data calls "chosen" and spans [0, 1]; the log-likelihood is unchanged.

    Bins are ``bins`` equal-width intervals of the predicted probability on [0, 1] (the last one
    closed). ECE = sum over bins of (count / total) * |mean predicted - observed rate|; ``mce`` is the
    largest such gap. ``table`` is the reliability diagram: bin, bin_lower, bin_upper, mean_predicted,
    observed, count (empty bins kept with count 0 and NaN rates).
    """
    margin = np.asarray(margins, dtype=float)
    outcome = _outcomes(margin, outcomes)
    if symmetric:
        margin, outcome = np.concatenate([margin, -margin]), np.concatenate([outcome, 1 - outcome])
    predicted = win_probability(margin, temperature)
    index = np.clip(np.floor(predicted * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=predicted, minlength=bins) / count
        observed = np.bincount(index, weights=outcome, minlength=bins) / count
    gap = np.abs(mean_predicted - observed)
    total = count.sum()
    table = pd.DataFrame(
        {
            "bin": np.arange(bins),
            "bin_lower": np.arange(bins) / bins,
            "bin_upper": np.arange(1, bins + 1) / bins,
            "mean_predicted": mean_predicted,
            "observed": observed,
            "count": count,
        }
    )
    return {
        "n": int(np.asarray(margins).size),
        "temperature": float(temperature),
        "ece": float(np.nansum(count * gap) / total) if total else math.nan,
        "mce": float(np.nanmax(gap)) if total else math.nan,
        "nll": negative_log_likelihood(margin, outcome, temperature) if total else math.nan,
        "mean_predicted": float(predicted.mean()) if total else math.nan,
        "observed_rate": float(outcome.mean()) if total else math.nan,
        "table": table,
    }


def fit_temperature(
    margins: np.ndarray, outcomes: np.ndarray | None = None, bins: int = 10, bounds: tuple[float, float] = (0.01, 100.0)
) -> dict:
    """The temperature T that makes sigmoid(margin / T) best explain the outcomes, with ECE before and after.

    Minimises the mean negative log-likelihood over log T (bounded Brent search, so T stays positive
    and the search is scale-free) within ``bounds``. When the eval pairs are perfectly separated
    (every outcome 1 and every margin positive) the likelihood keeps improving as T shrinks: the fit
    stops at the lower bound and ``at_bound`` says so. Returns temperature, at_bound,
    nll_before / nll_after (at T = 1 / fitted T) and ece_before / ece_after.
    """
    margin = np.asarray(margins, dtype=float)
    outcome = _outcomes(margin, outcomes)
    if margin.size == 0:
        raise ValueError("no margins to fit a temperature on")
    low, high = math.log(bounds[0]), math.log(bounds[1])
    fit = optimize.minimize_scalar(
        lambda log_t: negative_log_likelihood(margin, outcome, math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = math.exp(fit.x)
    return {
        "temperature": temperature,
        "at_bound": bool(min(fit.x - low, high - fit.x) < 1e-3),
        "nll_before": negative_log_likelihood(margin, outcome, 1.0),
        "nll_after": float(fit.fun),
        "ece_before": calibration(margin, outcome, bins)["ece"],
        "ece_after": calibration(margin, outcome, bins, temperature=temperature)["ece"],
    }
