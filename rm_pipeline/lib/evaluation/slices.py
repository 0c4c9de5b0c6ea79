"""Accuracy per slice of the pairs: per domain (with the domains training never saw) and per annotator agreement."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import TIE_TOLERANCE, grouped_accuracy, pair_accuracy
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE
from rm_pipeline.lib.split import NO_DOMAIN

HIGH_AGREEMENT = 2 / 3


def by_domain(
    frame: pd.DataFrame,
    train_domains: Iterable[str | None],
    tie_tolerance: float = TIE_TOLERANCE,
    confidence: float = CONFIDENCE,
) -> dict:
    """Accuracy per domain, with the domains absent from training (spillover) listed apart.

    Returns ``table`` (one row per domain: the ``grouped_accuracy`` columns and ``in_training``;
    training domains first, then by size), ``spillover_domains`` (sorted names of eval domains never
    seen in training) and ``spillover`` (``pair_accuracy`` over all their pairs, None when there are
    none). A missing domain counts as the domain ``NO_DOMAIN`` on both sides.
    """
    domains = frame["domain"].astype(object).where(frame["domain"].notna(), NO_DOMAIN).astype(str)
    seen = {NO_DOMAIN if pd.isna(domain) else str(domain) for domain in train_domains}
    table = grouped_accuracy(frame, domains.rename("domain"), tie_tolerance, confidence)
    table["in_training"] = table.index.isin(list(seen))
    table = table.sort_values(["in_training", "n"], ascending=[False, False], kind="stable")
    spillover_domains = sorted(table.index[~table["in_training"]])
    is_spillover = domains.isin(spillover_domains).to_numpy()
    spillover = pair_accuracy(frame[is_spillover], tie_tolerance, confidence) if is_spillover.any() else None
    return {"table": table, "spillover_domains": spillover_domains, "spillover": spillover}


AGREEMENT_LEVELS = ("unanimous", "at least 2/3", "below 2/3", "single vote", "unknown")


def agreement_levels(frame: pd.DataFrame, high_agreement: float = HIGH_AGREEMENT) -> pd.Series:
    """The agreement level of each pair, from ``chosen_share`` (and ``n_votes`` when present).

    unanimous: every decisive vote for the chosen answer (share 1) from two or more votes;
    at least 2/3: share in [high_agreement, 1); below 2/3: share below that (the disputed slice);
    single vote: one vote only, where agreement is not observable; unknown: no share recorded.
    """
    eps = 1e-9
    share = frame["chosen_share"].to_numpy(float) if "chosen_share" in frame else np.full(len(frame), np.nan)
    votes = frame["n_votes"].to_numpy(float) if "n_votes" in frame else np.full(len(frame), np.nan)
    level = np.select(
        [votes == 1, np.isnan(share), share >= 1 - eps, share >= high_agreement - eps],
        ["single vote", "unknown", "unanimous", "at least 2/3"],
        default="below 2/3",
    )
    return pd.Series(
        pd.Categorical(level, categories=AGREEMENT_LEVELS, ordered=True), index=frame.index, name="agreement"
    )


def by_agreement(
    frame: pd.DataFrame,
    high_agreement: float = HIGH_AGREEMENT,
    tie_tolerance: float = TIE_TOLERANCE,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Accuracy per agreement level (see ``agreement_levels``), levels in a fixed order, empty ones left out."""
    levels = agreement_levels(frame, high_agreement)
    table = grouped_accuracy(frame, levels.astype(str).rename("agreement"), tie_tolerance, confidence)
    order = [level for level in AGREEMENT_LEVELS if level in table.index]
    return table.loc[order]
