"""Confidence intervals: the one confidence level, the cluster bootstrap, Wilson's interval and rank correlation.

Intervals resample whole groups (e.g. every pair of one prompt) so pairs that share a prompt, and so are
not independent, don't make an interval look narrower than it is. `rate_interval` is the one function for
every accuracy, flip rate and share the pipeline reports (model promotion, the evaluation evidence): a
cluster bootstrap where values share groups, Wilson's score interval where every value stands alone.

Numpy only at import (scipy is imported where used), so the training process loads it cheaply; knows
nothing of models or Dagster.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

CONFIDENCE = 0.95  # of every interval: each accuracy, rate and correlation comes with one, as ``<name>_interval``
CHUNK = 256  # resamples drawn at once: bounds memory at CHUNK x groups


@dataclass(frozen=True)
class Interval:
    """A statistic and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    n: int  # values
    groups: int  # independent units resampled

    def as_dict(self) -> dict:
        return {
            "estimate": self.estimate,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "n": self.n,
            "groups": self.groups,
        }


def bootstrap_interval(
    values,
    groups=None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """The percentile interval of ``statistic`` over ``values`` under a cluster bootstrap: each resample
    draws as many groups as there are, with replacement, and keeps every value of each group drawn.
    ``groups=None``: every value is its own group (the ordinary bootstrap). Seeded: the same input gives
    the same interval."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("bootstrap_interval needs a non-empty one-dimensional array of values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if groups is None:
        codes = np.arange(len(values))
    else:
        groups = np.asarray(groups, dtype=object)
        if len(groups) != len(values):
            raise ValueError(f"{len(groups)} group labels for {len(values)} values")
        _, codes = np.unique(groups.astype(str), return_inverse=True)
    n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    if statistic is np.mean:
        draws = _resampled_means(values, codes, n_groups, resamples, rng)
    else:
        members = [np.flatnonzero(codes == g) for g in range(n_groups)]
        draws = np.array(
            [
                statistic(values[np.concatenate([members[g] for g in rng.integers(0, n_groups, n_groups)])])
                for _ in range(resamples)
            ]
        )
    tail = (1.0 - confidence) / 2 * 100
    # a statistic undefined on some resamples (a correlation of a constant draw) is left out of those
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return Interval(float(statistic(values)), float(low), float(high), confidence, len(values), n_groups)


def wilson_interval(successes: float, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson's score interval of a proportion: well behaved near 0 and 1 and on small n, unlike the normal
    approximation. ``successes`` may be fractional (a tie counts half)."""
    from scipy.stats import norm

    if n < 1:
        raise ValueError("wilson_interval needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(float(p), float(max(0.0, centre - half)), float(min(1.0, centre + half)), confidence, n, n)


def rate_interval(
    values, groups=None, confidence: float = CONFIDENCE, resamples: int = 2000, seed: int = 0
) -> Interval:
    """The interval of a rate (values in [0, 1]: 1 right or flipped, 0 not, 0.5 a tie): a cluster bootstrap
    over ``groups`` when some group holds several values, which are then not independent; Wilson otherwise."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("rate_interval needs a non-empty one-dimensional array of values")
    if values.min() < 0 or values.max() > 1:
        raise ValueError("rate_interval takes values between 0 and 1")
    if groups is not None and len(set(map(str, groups))) < len(values):
        return bootstrap_interval(values, groups, confidence=confidence, resamples=resamples, seed=seed)
    return wilson_interval(float(values.sum()), len(values), confidence)


def _resampled_means(values, codes, n_groups: int, resamples: int, rng) -> np.ndarray:
    """The mean of each resample from per-group sums and sizes: no value is copied."""
    sums = np.bincount(codes, weights=values, minlength=n_groups)
    sizes = np.bincount(codes, minlength=n_groups).astype(float)
    means = []
    for start in range(0, resamples, CHUNK):
        # times each group is drawn in each resample
        drawn = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=min(CHUNK, resamples - start))
        means.append((drawn @ sums) / (drawn @ sizes))
    return np.concatenate(means)


def paired_difference(
    credit_candidate,
    credit_current,
    groups=None,
    confidence: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Mean of candidate minus current credit, pair by pair on the same pairs, with its cluster bootstrap
    interval: both models are resampled together, so what the pairs have in common cancels out."""
    candidate = np.asarray(credit_candidate, dtype=float)
    current = np.asarray(credit_current, dtype=float)
    if candidate.shape != current.shape:
        raise ValueError(f"paired credits need the same pairs: {candidate.shape} against {current.shape}")
    return bootstrap_interval(candidate - current, groups, confidence=confidence, resamples=resamples, seed=seed)


def prompt_groups(frame: pd.DataFrame) -> np.ndarray | None:
    """The prompt of each pair (its split group, else its prompt id, else its prompt text), so that pairs
    sharing a prompt are resampled together; None when unknown (every pair then stands alone)."""
    for column in ("prompt_group", "prompt_id", "prompt"):
        if column in frame and len(frame) and frame[column].notna().all():
            return frame[column].astype(str).to_numpy()
    return None


def rate_with_interval(values, groups=None, confidence: float = CONFIDENCE) -> dict | None:
    """``rate_interval`` of a rate's values (1 right, 0 wrong, 0.5 a tie) as a dict; None without values."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return None
    return rate_interval(values, groups, confidence).as_dict()


def correlation_with_interval(x, y, groups=None, confidence: float = CONFIDENCE) -> dict | None:
    """Spearman's rho of x and y with its bootstrap interval, resampling whole ``groups`` (the points of one
    prompt, or single points); None where rho is undefined. Resamples where rho is undefined (a constant
    draw) are left out of the percentiles."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if math.isnan(spearman(x, y)[0]):
        return None
    points = np.arange(x.size, dtype=float)  # the statistic resamples indices, so x and y stay paired

    def rho(drawn: np.ndarray) -> float:  # spearman()'s rho without its p-value, at a fraction of the cost
        x_ranks, y_ranks = _average_ranks(x[drawn.astype(int)]), _average_ranks(y[drawn.astype(int)])
        if np.ptp(x_ranks) == 0 or np.ptp(y_ranks) == 0:
            return math.nan
        return float(np.corrcoef(x_ranks, y_ranks)[0, 1])

    return bootstrap_interval(points, groups, statistic=rho, confidence=confidence).as_dict()


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``scipy.stats.rankdata``'s default), from one sort."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def spearman(x: np.ndarray | pd.Series, y: np.ndarray | pd.Series) -> tuple[float, float]:
    """Spearman's rho and its p-value; NaN for fewer than 3 points or a constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    from scipy import stats  # imported on use: this module stays numpy-only for the training process

    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)
