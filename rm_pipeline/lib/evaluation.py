"""Evaluation of a scored reward model: accuracy, slices, length bias, calibration, rankings, benchmarks.

Pure functions over already-scored data; they know nothing of Dagster or of the model. A scored
pairs frame has one row per pair with the columns

    pair_id, chosen_reward, rejected_reward, chosen_tokens, rejected_tokens, domain

plus, when known, ``chosen_share`` and ``n_votes`` (agreement of the annotators) and ``subset``
(RewardBench-format benchmark files).

Ties. A pair whose two rewards are within ``TIE_TOLERANCE`` of each other is a *tie*: the model
expressed no preference. Every accuracy in this module counts a tie as half correct (``pair_credit``
in ``rm_pipeline.lib.metrics``, which training uses too) and reports the number of ties beside it, so a
model that gives every answer the same reward scores 0.5 (chance) with ``ties == n``, never 0.
``correct`` and ``wrong`` count the decisive pairs, so ``accuracy == (correct + ties / 2) / n``.
RewardBench's own script counts a tie as wrong; with real-valued rewards ties are rare enough
that the two agree to within ``ties / (2 n)``, which is why ``ties`` is always reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from rm_pipeline.lib.annotations import QUARANTINE_COLUMNS, AnnotationFileError, read_annotations
from rm_pipeline.lib.metrics import TIE_TOLERANCE, pair_credit
from rm_pipeline.lib.pairs import check_pair_rules
from rm_pipeline.lib.split import NO_DOMAIN

LENGTH_MATCH_TOLERANCE = 0.10
HIGH_AGREEMENT = 2 / 3

# RewardBench sections, subsets and per-subset weights, as published by the benchmark's authors in
# allenai/reward-bench, rewardbench/constants.py (SUBSET_MAPPING, EXAMPLE_COUNTS; stored commit
# a32e272b3e018467f742a1b4d18c4cc3d0317d31). A section's score is the mean of its subsets' accuracies
# weighted by these counts (rewardbench/utils.py, calculate_scores_per_section); note math-prm's count
# is deliberately 984, not its 447 rows, to weigh it equally with the code subsets.
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": (
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ),
    "Safety": (
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "math-prm": 984,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 250,
    "xstest-should-respond": 154,
    "donotanswer": 136,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
# The "prior sets" (allenai/preference-test-sets). The leaderboard's "Prior Sets (0.5 weight)" column is
# the unweighted mean of these four, and the overall score weighs Chat, Chat Hard, Safety and Reasoning
# 2 each and Prior Sets 1, over the sections present (allenai/reward-bench,
# analysis/get_benchmark_results.py, get_average_over_rewardbench). anthropic_harmless, mtbench_gpt4 and
# mtbench_human are prior sets too but are left out of that mean upstream; here they get per-subset
# accuracy only.
PRIOR_SETS_SECTION = "Prior Sets"
REWARDBENCH_PRIOR_SETS: tuple[str, ...] = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")
REWARDBENCH_SECTION_WEIGHTS: dict[str, float] = {
    "Chat": 2.0,
    "Chat Hard": 2.0,
    "Safety": 2.0,
    "Reasoning": 2.0,
    PRIOR_SETS_SECTION: 1.0,
}
SUBSET_TO_SECTION: dict[str, str] = {
    **{subset: section for section, subsets in REWARDBENCH_SECTIONS.items() for subset in subsets},
    **{subset: PRIOR_SETS_SECTION for subset in REWARDBENCH_PRIOR_SETS},
}

ACCURACY_COLUMNS = ["n", "correct", "wrong", "ties", "accuracy", "mean_margin"]


# --------------------------------------------------------------------------- pair outcomes


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


def _counts(credit: np.ndarray, margin: np.ndarray) -> dict:
    n = int(credit.size)
    ties = int((credit == 0.5).sum())
    correct = int((credit == 1.0).sum())
    return {
        "n": n,
        "correct": correct,
        "wrong": n - correct - ties,
        "ties": ties,
        "accuracy": float(credit.mean()) if n else math.nan,
        "mean_margin": float(margin.mean()) if n else math.nan,
    }


def pair_accuracy(frame: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """Held-out accuracy of scored pairs, ties reported apart and counted half correct.

    Returns n, correct, wrong, ties, accuracy = (correct + ties / 2) / n, mean_margin (chosen minus
    rejected) and reward_mean / reward_min / reward_max over every scored answer (both sides).
    An empty frame gives n = 0 and NaN statistics.
    """
    margin = pair_margins(frame)
    result = _counts(pair_credit(margin, tie_tolerance), margin)
    rewards = np.concatenate([frame["chosen_reward"].to_numpy(float), frame["rejected_reward"].to_numpy(float)])
    empty = rewards.size == 0
    result.update(
        reward_mean=math.nan if empty else float(rewards.mean()),
        reward_min=math.nan if empty else float(rewards.min()),
        reward_max=math.nan if empty else float(rewards.max()),
    )
    return result


def grouped_accuracy(frame: pd.DataFrame, by: str | pd.Series, tie_tolerance: float = TIE_TOLERANCE) -> pd.DataFrame:
    """``pair_accuracy``'s counts per group (one row per group, index = group): n, correct, wrong, ties,
    accuracy, mean_margin."""
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
    table = parts.groupby("key", sort=False, dropna=False).agg(
        n=("credit", "size"),
        correct=("correct", "sum"),
        ties=("tie", "sum"),
        accuracy=("credit", "mean"),
        mean_margin=("margin", "mean"),
    )
    table["wrong"] = table["n"] - table["correct"] - table["ties"]
    table.index.name = by if isinstance(by, str) else (by.name or "group")
    return table[ACCURACY_COLUMNS].astype({"n": int, "correct": int, "wrong": int, "ties": int})


# --------------------------------------------------------------------------- slices


def by_domain(frame: pd.DataFrame, train_domains: Iterable[str | None], tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """Accuracy per domain, with the domains absent from training (spillover) listed apart.

    Returns ``table`` (one row per domain: the ``grouped_accuracy`` columns and ``in_training``;
    training domains first, then by size), ``spillover_domains`` (sorted names of eval domains never
    seen in training) and ``spillover`` (``pair_accuracy`` over all their pairs, None when there are
    none). A missing domain counts as the domain ``NO_DOMAIN`` on both sides.
    """
    domains = frame["domain"].astype(object).where(frame["domain"].notna(), NO_DOMAIN).astype(str)
    seen = {NO_DOMAIN if pd.isna(domain) else str(domain) for domain in train_domains}
    table = grouped_accuracy(frame, domains.rename("domain"), tie_tolerance)
    table["in_training"] = table.index.isin(list(seen))
    table = table.sort_values(["in_training", "n"], ascending=[False, False], kind="stable")
    spillover_domains = sorted(table.index[~table["in_training"]])
    is_spillover = domains.isin(spillover_domains).to_numpy()
    spillover = pair_accuracy(frame[is_spillover], tie_tolerance) if is_spillover.any() else None
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
    frame: pd.DataFrame, high_agreement: float = HIGH_AGREEMENT, tie_tolerance: float = TIE_TOLERANCE
) -> pd.DataFrame:
    """Accuracy per agreement level (see ``agreement_levels``), levels in a fixed order, empty ones left out."""
    levels = agreement_levels(frame, high_agreement)
    table = grouped_accuracy(frame, levels.astype(str).rename("agreement"), tie_tolerance)
    order = [level for level in AGREEMENT_LEVELS if level in table.index]
    return table.loc[order]


# --------------------------------------------------------------------------- length bias


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


def spearman(x: np.ndarray | pd.Series, y: np.ndarray | pd.Series) -> tuple[float, float]:
    """Spearman's rho and its p-value; NaN for fewer than 3 points or a constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def length_matched(frame: pd.DataFrame, tolerance: float = LENGTH_MATCH_TOLERANCE) -> np.ndarray:
    """True where chosen and rejected lengths differ by at most ``tolerance`` of the longer one."""
    chosen, rejected = frame["chosen_tokens"].to_numpy(float), frame["rejected_tokens"].to_numpy(float)
    return np.abs(chosen - rejected) <= tolerance * np.maximum(chosen, rejected)


def length_audit(
    frame: pd.DataFrame,
    rewards_and_lengths: pd.DataFrame | None = None,
    tolerance: float = LENGTH_MATCH_TOLERANCE,
    tie_tolerance: float = TIE_TOLERANCE,
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
    result = {
        "n": int(len(frame)),
        "spearman_rho": rho,
        "spearman_p": p_value,
        "spearman_n": int(len(answers)),
        "longer_wins_accuracy": float(longer_credit.mean()) if len(frame) else math.nan,
        "equal_length": int((~differs).sum()),
        "model_prefers_longer": float(agreement_credit.mean()) if differs.any() else math.nan,
        "length_differs_n": int(differs.sum()),
        "length_matched_n": int(matched.sum()),
        "length_matched_accuracy": float(matched_credit.mean()) if matched.any() else math.nan,
        "length_matched_ties": int((matched_credit == 0.5).sum()),
    }
    if rewards_and_lengths is not None:
        rho, p_value = spearman(rewards_and_lengths["reward"], rewards_and_lengths["tokens"])
        result.update(
            responses_spearman_rho=rho, responses_spearman_p=p_value, responses_spearman_n=int(len(rewards_and_lengths))
        )
    return result


# --------------------------------------------------------------------------- calibration


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


# --------------------------------------------------------------------------- K-way rankings


def ranking_agreement(groups: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """Agreement of reward order with human rankings of K replies to one prompt.

    ``groups``: one row per reply with ``group_id``, ``rank`` (human rank, 0 = best) and ``reward``.
    ``top1_agreement``: mean over groups of "the reply the model scores highest is the human's best";
    when several replies tie for the top reward the group scores the share of them that is the
    human's best (the expected hit of a random tie-break). ``top1_chance`` is that rate for random
    rewards (mean of 1/K). ``mean_kendall_tau``: mean over groups of Kendall's tau-b between reward
    and human preference (-rank); groups where it is undefined (constant rewards) are left out and
    counted in ``tau_undefined``. ``per_group``: group_id, k, top1, kendall_tau.
    """
    data = groups[["group_id", "rank", "reward"]].copy()
    grouped = data.groupby("group_id", sort=False)
    top_reward = grouped["reward"].transform("max")
    best_rank = grouped["rank"].transform("min")
    data["is_top"] = data["reward"] >= top_reward - tie_tolerance
    data["top_and_best"] = data["is_top"] & (data["rank"] == best_rank)
    per_group = data.groupby("group_id", sort=False).agg(
        k=("reward", "size"), top=("is_top", "sum"), hits=("top_and_best", "sum")
    )
    per_group["top1"] = per_group["hits"] / per_group["top"]

    def tau(members: pd.DataFrame) -> float:
        if members["reward"].nunique() < 2 or members["rank"].nunique() < 2:
            return math.nan
        return float(stats.kendalltau(members["reward"], -members["rank"]).statistic)

    per_group["kendall_tau"] = [tau(members) for _, members in data.groupby("group_id", sort=False)]
    per_group = per_group.reset_index()[["group_id", "k", "top1", "kendall_tau"]]
    defined = per_group["kendall_tau"].notna()
    return {
        "n_groups": int(len(per_group)),
        "n_replies": int(len(data)),
        "top1_agreement": float(per_group["top1"].mean()) if len(per_group) else math.nan,
        "top1_chance": float((1 / per_group["k"]).mean()) if len(per_group) else math.nan,
        "mean_kendall_tau": float(per_group.loc[defined, "kendall_tau"].mean()) if defined.any() else math.nan,
        "tau_undefined": int((~defined).sum()),
        "per_group": per_group,
    }


OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def oasst_ranked_groups(path: str | Path, min_replies: int = 3) -> pd.DataFrame:
    """Flatten OpenAssistant message trees (JSONL) into human-ranked groups of sibling replies.

    One row per ranked reply: group_id (the parent's message_id), message_tree_id, context (the
    conversation from the root to the parent, as ``{"role", "content"}`` messages), message_id, text,
    rank (0 = best) and k (ranked siblings in the group). Replies without a rank or marked deleted
    are left out, and so are groups with fewer than ``min_replies`` ranked replies (default: K > 2).
    """
    rows = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            tree = json.loads(line)
            stack = [(tree["prompt"], [])]
            while stack:
                message, history = stack.pop()
                context = history + [
                    {"role": OASST_ROLES.get(message["role"], message["role"]), "content": message["text"]}
                ]
                replies = message.get("replies") or []
                ranked = [reply for reply in replies if reply.get("rank") is not None and not reply.get("deleted")]
                if len(ranked) >= min_replies:
                    rows.extend(
                        {
                            "group_id": message["message_id"],
                            "message_tree_id": tree["message_tree_id"],
                            "context": context,
                            "message_id": reply["message_id"],
                            "text": reply["text"],
                            "rank": int(reply["rank"]),
                            "k": len(ranked),
                        }
                        for reply in ranked
                    )
                stack.extend((reply, context) for reply in reversed(replies))
    columns = ["group_id", "message_tree_id", "context", "message_id", "text", "rank", "k"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- external benchmarks


def rewardbench_accuracy(frame: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """Accuracy per subset and per RewardBench section for a scored RewardBench-format file.

    ``subsets``: one row per subset (file order): subset, section (None for names RewardBench does not
    know, which still get their accuracy), and the ``grouped_accuracy`` columns. ``sections``: one row
    per section with at least one subset present: accuracy (Chat / Chat Hard / Safety / Reasoning: the
    subsets' accuracies weighted by RewardBench's EXAMPLE_COUNTS, not by the file's row counts; Prior
    Sets: their unweighted mean), n, subsets_present, subsets_expected. ``score``: RewardBench's overall
    score over the sections present (weights 2, 2, 2, 2 and 1 for Prior Sets), None when no subset
    name matches. Accuracy counts ties half (module docstring); RewardBench counts them wrong.
    """
    subsets = grouped_accuracy(frame, frame["subset"].astype(str).rename("subset"), tie_tolerance)
    subsets.insert(0, "section", [SUBSET_TO_SECTION.get(name) for name in subsets.index])
    subsets = subsets.reset_index()
    known = subsets.dropna(subset=["section"])
    # Prior Sets have no example counts: their subsets weigh equally.
    weights = np.array([REWARDBENCH_EXAMPLE_COUNTS.get(name, 1.0) for name in known["subset"]], dtype=float)
    known = known.assign(weight=weights, weighted=weights * known["accuracy"].to_numpy(float))
    sums = known.groupby("section", sort=False).agg(
        weighted=("weighted", "sum"), weight=("weight", "sum"), n=("n", "sum"), subsets_present=("subset", "size")
    )
    expected = {
        **{section: len(names) for section, names in REWARDBENCH_SECTIONS.items()},
        PRIOR_SETS_SECTION: len(REWARDBENCH_PRIOR_SETS),
    }
    order = [section for section in REWARDBENCH_SECTION_WEIGHTS if section in sums.index]
    sections = pd.DataFrame(
        {
            "section": order,
            "accuracy": (sums["weighted"] / sums["weight"]).reindex(order).to_numpy(),
            "n": sums["n"].reindex(order).to_numpy(int),
            "subsets_present": sums["subsets_present"].reindex(order).to_numpy(int),
            "subsets_expected": [expected[section] for section in order],
        }
    )
    score = None
    if len(sections):
        section_weights = sections["section"].map(REWARDBENCH_SECTION_WEIGHTS).to_numpy(float)
        score = float(np.average(sections["accuracy"].to_numpy(float), weights=section_weights))
    return {"subsets": subsets, "sections": sections, "score": score}


# --------------------------------------------------------------------------- fresh policy outputs


def read_policy_outputs(folder: str | Path) -> pd.DataFrame:
    """AlpacaEval-format policy outputs as one frame: policy, idx, dataset, instruction, output.

    ``folder`` holds ``prompts.jsonl`` (idx, dataset, instruction) and ``model_outputs/<policy>.jsonl``
    (idx, output, ...); the policy is the file stem.
    """
    folder = Path(folder)
    prompts = pd.read_json(folder / "prompts.jsonl", lines=True)[["idx", "dataset", "instruction"]]
    frames = []
    for path in sorted((folder / "model_outputs").glob("*.jsonl")):
        outputs = pd.read_json(path, lines=True, dtype={"output": str})[["idx", "output"]]
        frames.append(outputs.assign(policy=path.stem))
    columns = ["policy", "idx", "dataset", "instruction", "output"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).merge(prompts, on="idx", how="left")[columns]


def policy_reward_summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Per policy (index): n, mean_reward, mean_tokens, from scored outputs (policy, reward, tokens)."""
    return scored.groupby("policy").agg(
        n=("reward", "size"), mean_reward=("reward", "mean"), mean_tokens=("tokens", "mean")
    )


def policy_ranking(mean_reward_by_policy: pd.Series, leaderboard_column: pd.Series) -> dict:
    """Spearman correlation between policies' mean reward and a leaderboard column (both indexed by policy).

    Only policies present in both with a value count; ``missing`` lists the scored policies the
    leaderboard lacks. rho is NaN for fewer than 3 common policies.
    """
    rewards = mean_reward_by_policy.dropna()
    board = leaderboard_column.dropna()
    board = board[~board.index.duplicated()]
    common = [policy for policy in rewards.index if policy in board.index]
    rho, p_value = spearman(rewards.loc[common], board.loc[common])
    return {
        "n_policies": len(common),
        "spearman_rho": rho,
        "spearman_p": p_value,
        "policies": common,
        "missing": [policy for policy in rewards.index if policy not in board.index],
    }


def read_leaderboard(path: str | Path, column: str) -> pd.Series | None:
    """One numeric column of an AlpacaEval leaderboard CSV (policy name in the first column), indexed by
    policy and named after the column; None when there is no such file (no leaderboard to compare with).

    Raises ``ValueError`` naming the file: for a file that is not a CSV table, for a missing column (with
    the columns the file has) and for a value that is not a number (with its line). Blank cells are missing
    values, which ``policy_ranking`` leaves out.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        board = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a leaderboard CSV ({error})") from None
    if column not in board.columns:
        raise ValueError(f"{path}: no column {column!r}; it has {', '.join(board.columns)}")
    text = board[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        position = int(bad.to_numpy().argmax())
        raise ValueError(f"{path}: line {position + 2}: {column}: {text.iloc[position]!r} is not a number")
    return values.astype(float).rename(column)


# --------------------------------------------------------------------------- labelled pair files


PAIR_FILE_COLUMNS = [
    "pair_id",
    "file",
    "line",
    "prompt",
    "conversational",
    "chosen",
    "rejected",
    "domain",
    "domain_from_file",
]


def read_pair_file(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled pairs to evaluate on, and the rows that could not be used.

    Reads RewardBench's format (``prompt``, ``chosen``, ``rejected``, ``subset``) and TRL's standard and
    conversational formats (explicit or implicit prompt), as JSONL, JSON, CSV or Parquet, with the
    annotation reader: a bad row is quarantined with file, line, field and reason, never dropped. Pairs
    then go through training's own single-pair rules (``pairs.check_pair_rules``: empty_prompt,
    empty_candidate, context_mismatch, identical_candidates), quarantined under the same reasons.
    ``domain`` is the file's ``subset`` (else its ``domain``); a row with neither gets the file's stem
    and ``domain_from_file`` True, so callers can report how many. Raises ``AnnotationFileError`` for a
    file that is not a table of pairs.
    """
    path = Path(path)
    ingested = read_annotations([path])
    if len(ingested.batches) and ingested.batches["format"].iloc[0] == "votes":
        raise AnnotationFileError(
            path,
            "holds annotator votes, not labelled pairs: evaluation reads prompt, chosen, rejected (and subset) columns",
        )
    votes = ingested.votes.rename(columns={"response_a": "chosen", "response_b": "rejected"})
    broken = check_pair_rules(votes)
    bad = broken.reason.notna()
    rejected = pd.DataFrame(
        {
            "file": str(path),
            "line": votes.loc[bad, "line"],
            "field": broken.field[bad],
            "reason": broken.reason[bad],
            "detail": broken.detail[bad],
            "raw": None,
        }
    )
    quarantine = pd.concat([ingested.quarantine, rejected], ignore_index=True)[QUARANTINE_COLUMNS]
    quarantine["line"] = quarantine["line"].astype("int64")
    kept = votes[~bad]
    pairs = kept.assign(
        pair_id=kept["item_id"],
        file=str(path),
        domain=kept["domain"].fillna(path.stem),
        domain_from_file=kept["domain"].isna(),
    )
    return pairs[PAIR_FILE_COLUMNS].reset_index(drop=True), quarantine.sort_values("line", kind="stable").reset_index(
        drop=True
    )


def pair_file_summary(scored: pd.DataFrame, bins: int = 10, tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """The headline numbers of one scored file of pairs (``rm-pipeline evaluate``, benchmark files).

    n, correct, wrong, ties, accuracy (ties half), mean_margin, longer_wins_accuracy, length_matched_accuracy
    (and its n), ece,
    truncated (pairs cut to the model's length), subsets (``domain`` value -> n, accuracy); with
    RewardBench subset names also rewardbench_sections (name -> accuracy, n) and rewardbench_score.
    """
    overall = pair_accuracy(scored, tie_tolerance)
    audit = length_audit(scored, tie_tolerance=tie_tolerance)
    benchmark = rewardbench_accuracy(scored.rename(columns={"domain": "subset"}), tie_tolerance)
    summary = {
        **{key: overall[key] for key in ACCURACY_COLUMNS},
        "longer_wins_accuracy": audit["longer_wins_accuracy"],
        "length_matched_accuracy": audit["length_matched_accuracy"],
        "length_matched_n": audit["length_matched_n"],
        "ece": calibration(pair_margins(scored), bins=bins)["ece"] if len(scored) else math.nan,
        "truncated": int(scored["truncated"].sum()) if "truncated" in scored else 0,
        "subsets": {
            row.subset: {"n": int(row.n), "accuracy": float(row.accuracy)} for row in benchmark["subsets"].itertuples()
        },
    }
    if benchmark["score"] is not None:
        summary["rewardbench_sections"] = {
            row.section: {"accuracy": float(row.accuracy), "n": int(row.n)}
            for row in benchmark["sections"].itertuples()
        }
        summary["rewardbench_score"] = benchmark["score"]
    return summary
