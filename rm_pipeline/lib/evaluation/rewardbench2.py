"""RewardBench 2: its answer-list file format (several answers a side) and its best-of-n and Ties scores.

A RewardBench 2 row is one pair per chosen and rejected answer, on the row's ``line`` with ``best_of_n``
True, scored back per row (``best_of_n_rows``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import TIE_TOLERANCE
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE, bootstrap_interval, rate_with_interval
from rm_pipeline.lib.table_files import QUARANTINE_COLUMNS, rows_as_json

REWARDBENCH2_FORMAT = "rewardbench2"
REWARDBENCH2_MARKERS = ("num_correct", "total_completions")
TIES_SUBSET = "ties"  # compared case-insensitively, as RewardBench 2's scripts/run_v2.py does
TIES_ID = re.compile(r"^(ref|tied):\d+$")
PAIR_SUFFIX = "#"  # an answer-list row's pairs have ids <row id>#<chosen>.<rejected>
# A row becomes chosen x rejected pairs: 300 x 300 answers (4.6 KB) would be 90,000 pairs. RewardBench 2's own
# rows hold 4 answers (best-of-4), its Ties rows a few dozen; a row over this is quarantined, never expanded.
MAX_ANSWERS_PER_ROW = 100


def is_best_of_n(scored: pd.DataFrame) -> np.ndarray:
    """Which scored pairs come from RewardBench 2 rows (a missing flag, as after a concat, is not one)."""
    if "best_of_n" not in scored:
        return np.zeros(len(scored), dtype=bool)
    return scored["best_of_n"].map(lambda flag: flag is True or flag == 1.0).to_numpy(bool)


def best_of_n_rows(scored: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE) -> pd.DataFrame:
    """One row per RewardBench 2 row of scored answer-list pairs (``best_of_n``, grouped by file and line):
    file, line, row_id, subset, prompt, chosen_n, worst_chosen, best_chosen, best_rejected and ``credit``,
    RewardBench 2's best-of-N result: the row is right when the chosen answer outscores every rejected one.
    With one chosen answer (best-of-4), as allenai/reward-bench rewardbench/utils.py
    ``reroll_and_score_dataset`` does: 1 / (answers tied at the top) when the chosen one is among them, else 0
    (ties within ``tie_tolerance``). With several chosen answers (the Ties subset): 1 when the worst chosen
    beats the best rejected, else 0 (``_compute_prompt_stats``'s ``accurate``)."""
    pairs = scored[is_best_of_n(scored)]
    by_row = pairs.groupby(["file", "line"], sort=False)
    top = np.maximum(by_row["chosen_reward"].transform("max"), by_row["rejected_reward"].transform("max"))
    rows = (
        pairs.assign(
            chosen_answer=pairs["pair_id"].str.rsplit(".", n=1).str[0],  # <row id>#<chosen>.<rejected>
            rejected_near_top=pairs["rejected_reward"] >= top - tie_tolerance,
        )
        .groupby(["file", "line"], sort=False)
        .agg(
            row_id=("row_id", "first"),
            subset=("domain", "first"),
            prompt=("prompt", "first"),
            chosen_n=("chosen_answer", "nunique"),
            worst_chosen=("chosen_reward", "min"),
            best_chosen=("chosen_reward", "max"),
            best_rejected=("rejected_reward", "max"),
            rejected_near_top=("rejected_near_top", "sum"),  # with one chosen answer: one pair per rejected
        )
        .reset_index()
    )
    chosen_at_top = rows["best_chosen"] >= np.maximum(rows["best_chosen"], rows["best_rejected"]) - tie_tolerance
    one_chosen = np.where(chosen_at_top, 1.0 / (1 + rows["rejected_near_top"]), 0.0)
    several_chosen = (rows["worst_chosen"] - rows["best_rejected"] > tie_tolerance).astype(float)
    credit = np.where(rows["chosen_n"] == 1, one_chosen, several_chosen)
    return rows.drop(columns="rejected_near_top").assign(credit=credit)


TIES_WEIGHTS = {
    "tied_accuracy": 0.30,
    "ref_accuracy": 0.30,
    "correctness_preferred": 0.20,
    "correctness_preferred_hard": 0.20,
    "margin_score": 0.01,
}


def ties_score(rows: pd.DataFrame, confidence: float = CONFIDENCE) -> dict:
    """RewardBench 2's score of its Ties subset, as allenai/reward-bench rewardbench/utils.py
    ``process_single_model`` computes it (stored commit 05a9005efb607249822c193590c8ecab87c77052): rows with
    id ``ref:N`` (one correct answer) and ``tied:N`` (several) of prompt N; per row ``accurate`` (worst correct
    beats best incorrect), the spread of the correct answers and the correct-incorrect gap. score = 0.30
    tied accuracy + 0.30 ref accuracy + 0.20 correctness_preferred (tied gap > spread) + 0.20
    correctness_preferred_hard (smaller of the ref and tied gaps > spread) + 0.01 mean tanh(gap / spread - 1)
    over prompts with both rows. ``rows``: ``best_of_n_rows`` of the Ties subset. The interval resamples
    prompts N."""
    kind, number = rows["row_id"].str.split(":").str[0].to_numpy(), rows["row_id"].str.split(":").str[1].to_numpy()
    prompts, position = np.unique(number.astype(int), return_inverse=True)
    gap = (rows["worst_chosen"] - rows["best_rejected"]).to_numpy(float)
    spread = np.where(rows["chosen_n"] > 1, rows["best_chosen"] - rows["worst_chosen"], np.nan)

    def per_prompt(values, which):
        column = np.full(prompts.size, np.nan)
        column[position[kind == which]] = values[kind == which]
        return column

    ref_gap, tied_gap, tied_spread = per_prompt(gap, "ref"), per_prompt(gap, "tied"), per_prompt(spread, "tied")
    hard_gap = np.minimum(ref_gap, tied_gap)  # NaN unless the prompt has both rows
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.nan_to_num(np.tanh(hard_gap / tied_spread - 1), nan=0.0)

    def mean(values: np.ndarray, empty: float) -> float:
        return float(values.mean()) if values.size else empty

    def rate_where_defined(gaps: np.ndarray) -> float:
        defined = gaps[~np.isnan(gaps)]
        return mean(defined > 0, 0.0)  # upstream: 0.0 without such rows

    def both(drawn: np.ndarray) -> np.ndarray:  # prompts with a reference and a tied row
        return drawn[~np.isnan(hard_gap[drawn])]

    parts = {
        "tied_accuracy": lambda drawn: rate_where_defined(tied_gap[drawn]),
        "ref_accuracy": lambda drawn: rate_where_defined(ref_gap[drawn]),
        "correctness_preferred": lambda drawn: mean(tied_gap[both(drawn)] > tied_spread[both(drawn)], math.nan),
        "correctness_preferred_hard": lambda drawn: mean(hard_gap[both(drawn)] > tied_spread[both(drawn)], math.nan),
        "margin_score": lambda drawn: mean(margin[both(drawn)], math.nan),
    }

    def score(drawn: np.ndarray) -> float:
        return float(sum(weight * parts[name](drawn) for name, weight in TIES_WEIGHTS.items()))

    everyone = np.arange(prompts.size)
    result = {"score": score(everyone), "prompts": int(prompts.size)}
    for name, statistic in {"score": score, **parts}.items():
        result[name] = statistic(everyone)
        result[f"{name}_interval"] = bootstrap_interval(
            everyone.astype(float), statistic=lambda drawn, f=statistic: f(drawn.astype(int)), confidence=confidence
        ).as_dict()
    return result


def best_of_n_summary(
    scored: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE, confidence: float = CONFIDENCE
) -> dict:
    """RewardBench 2's numbers for a scored file of answer-list rows: ``rows``, ``accuracy`` (best-of-N, each
    row right when its chosen answer outscores every rejected one, see ``best_of_n_rows``) with its interval
    over prompts, ``subsets`` (name -> n, accuracy and interval; the Ties subset also ``ties_score``, its
    special score, see ``ties_score``) and ``rewardbench2_score``: the unweighted mean over the subsets
    present of their accuracy (Ties: its score), as the RewardBench 2 leaderboard averages its six subsets.
    Its interval resamples prompts, holding the Ties score at its estimate (its own interval is beside it)."""
    rows = best_of_n_rows(scored, tie_tolerance)
    prompts = rows["prompt"].astype(str).to_numpy()
    names = rows["subset"].astype(str).to_numpy()
    credit = rows["credit"].to_numpy(float)
    subsets = {}
    for name in dict.fromkeys(names):
        members = names == name
        subsets[name] = {
            "n": int(members.sum()),
            "accuracy": float(credit[members].mean()),
            "accuracy_interval": rate_with_interval(credit[members], prompts[members], confidence),
        }
        if name.lower() == TIES_SUBSET:
            subsets[name]["ties_score"] = ties_score(rows[members], confidence)
    fixed = {name: s["ties_score"]["score"] for name, s in subsets.items() if "ties_score" in s}

    def mean_over_subsets(drawn: np.ndarray) -> float:
        drawn = drawn.astype(int)
        drawn_names = names[drawn]
        means = [fixed.get(name, credit[drawn][drawn_names == name].mean()) for name in subsets if name in drawn_names]
        return float(np.mean(means))

    everyone = np.arange(len(rows), dtype=float)
    return {
        "rows": int(len(rows)),
        "accuracy": float(credit.mean()) if len(rows) else math.nan,
        "accuracy_interval": rate_with_interval(credit, prompts, confidence),
        "subsets": subsets,
        "rewardbench2_score": mean_over_subsets(everyone) if len(rows) else math.nan,
        "rewardbench2_score_interval": bootstrap_interval(
            everyone, prompts, statistic=mean_over_subsets, confidence=confidence
        ).as_dict()
        if len(rows)
        else None,
    }


def _is_answer_list(value) -> bool:
    return isinstance(value, (list, np.ndarray)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def is_rewardbench2(records: pd.DataFrame) -> bool:
    """RewardBench 2's format: ``chosen`` and ``rejected`` hold lists of answer texts (TRL's conversational
    files hold lists of ``{role, content}`` messages instead), or the file has RewardBench 2's
    ``num_correct`` / ``total_completions`` columns."""
    if not {"chosen", "rejected"} <= set(records.columns):
        return False
    return bool(set(REWARDBENCH2_MARKERS) & set(records.columns)) or bool(records["chosen"].map(_is_answer_list).any())


def rewardbench2_pairs(records: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, pd.DataFrame, str] | None:
    """A RewardBench 2 file's rows as standard pairs, one per (chosen, rejected) answer of a row, each on its
    row's line, and the rows that can't be (file, line, field, reason); None for any other format.

    A row needs ``chosen`` and ``rejected`` as non-empty lists of texts; ``num_correct`` and
    ``total_completions``, where given, must count them; a ``Ties`` row's ``id`` must be ``ref:N`` or
    ``tied:N`` (how RewardBench 2 pairs a prompt's reference and tied rows)."""
    if not is_rewardbench2(records):
        return None
    chosen, rejected = records["chosen"], records["rejected"]
    subset = records["subset"].astype(str).str.lower() if "subset" in records else pd.Series("", index=records.index)
    row_id = records["id"].where(records["id"].notna(), records["line"]) if "id" in records else records["line"]
    problems = []
    for index, line in records["line"].items():
        c, r = chosen[index], rejected[index]
        problem = None
        if not _is_answer_list(c):
            problem = ("chosen", "wrong_type", "a RewardBench 2 row holds chosen as a non-empty list of answer texts")
        elif not _is_answer_list(r):
            problem = (
                "rejected",
                "wrong_type",
                "a RewardBench 2 row holds rejected as a non-empty list of answer texts",
            )
        elif len(c) + len(r) > MAX_ANSWERS_PER_ROW:
            problem = (
                "rejected",
                "too_many_answers",
                f"{len(c)} chosen + {len(r)} rejected answers, over the {MAX_ANSWERS_PER_ROW} a row may hold "
                f"(MAX_ANSWERS_PER_ROW: it would be {len(c) * len(r)} pairs)",
            )
        else:
            for field, expected in (("num_correct", len(c)), ("total_completions", len(c) + len(r))):
                value = records[field][index] if field in records else None
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                    problem = (field, "wrong_type", f"{field} must be a number, not {value!r}")
                elif value != expected:
                    problem = (field, "bad_value", f"{field} is {value!r} but the row holds {expected}")
                if problem:
                    break
        if problem is None and subset[index] == TIES_SUBSET and not TIES_ID.match(str(row_id[index])):
            problem = ("id", "bad_value", f"a Ties row's id must be ref:N or tied:N, not {row_id[index]!r}")
        if problem:
            problems.append((index, line, *problem))
    bad = [index for index, *_ in problems]
    quarantine = pd.DataFrame(
        [
            {"file": str(path), "line": line, "field": f, "reason": why, "detail": text}
            for _, line, f, why, text in problems
        ],
        columns=QUARANTINE_COLUMNS[:-1],
    ).assign(raw=rows_as_json(records.loc[bad]).to_numpy())
    good = records.drop(index=bad)
    pairs = [
        {**row, "id": f"{row_id[index]}{PAIR_SUFFIX}{i}.{j}", "chosen": c, "rejected": r}
        for index, row in zip(good.index, good.to_dict("records"))
        for i, c in enumerate(row["chosen"])
        for j, r in enumerate(row["rejected"])
    ]
    columns = [*records.columns, "id"] if "id" not in records.columns else list(records.columns)
    return pd.DataFrame(pairs, columns=columns), quarantine, REWARDBENCH2_FORMAT
