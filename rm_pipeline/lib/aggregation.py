"""Votes to one row per comparison: counts, shares, a winner by majority vote or Dawid-Skene.

Crowd-kit does the aggregation; this module counts what it can't see (abstentions, ties as a
separate outcome) and decides which comparisons go to human review. Knows nothing of Dagster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from rm_pipeline.lib.annotations import first_rows
from rm_pipeline.lib.settings import check_settings, setting

AggregationMethod = Literal["majority_vote", "dawid_skene"]
TiePolicy = Literal["count_as_vote", "ignore"]
OUTCOMES = ("a", "b", "tie")
LABELS = (*OUTCOMES, "abstain")  # every vote label, in the order of the integer codes

# Set by rm_pipeline.lib.reviews.apply_reviews when a reviewer decided the comparison.
ADJUDICATION_COLUMNS = ["review_decision", "adjudicated", "adjudicated_by", "review_note"]
# What describes the comparison itself, taken from its first vote.
ITEM_FIELDS = [
    "prompt_id",
    "prompt",
    "conversational",
    "response_a",
    "response_b",
    "context_a",
    "context_b",
    "domain",
    "source",
]
COMPARISON_COLUMNS = [
    "item_id",
    *ITEM_FIELDS,
    "batches",
    "n_votes",
    "votes_a",
    "votes_b",
    "ties",
    "abstentions",
    "winner",
    "majority_winner",
    "method",
    "confidence",
    "chosen_share",
    "tie_share",
    "strength",
    "annotator_reliability",
    *ADJUDICATION_COLUMNS,
]


@dataclass(frozen=True)
class AggregationSettings:
    method: AggregationMethod = setting(
        "dawid_skene", "How votes become a winner (crowd-kit); majority vote is always reported too."
    )
    tie_policy: TiePolicy = setting("count_as_vote", "count_as_vote: 'tie' can win; ignore: only a/b votes decide.")
    max_iterations: int = setting(50, "Dawid-Skene EM iterations at most.", minimum=1, maximum=100_000)

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class ReviewThresholds:
    agreement_threshold: float = setting(
        1.0,
        "Winners backed by a smaller share of votes go to review (1.0: anything not unanimous).",
        minimum=0,
        maximum=1,
    )
    tie_heavy_share: float = setting(
        0.5, "Tie share at which a comparison with a-or-b votes is disputed.", minimum=0, maximum=1
    )
    min_annotator_reliability: float = setting(
        0.0, "Items whose annotators' mean reliability is lower go to review.", minimum=0, maximum=1
    )

    def __post_init__(self):
        check_settings(self)


@dataclass
class AggregationResult:
    comparisons: pd.DataFrame
    annotators: pd.DataFrame  # annotator_id, votes, reliability


def aggregate_votes(
    votes: pd.DataFrame,
    method: AggregationMethod = AggregationSettings.method,
    tie_policy: TiePolicy = AggregationSettings.tie_policy,
    max_iterations: int = AggregationSettings.max_iterations,
) -> AggregationResult:
    """One row per item_id. `winner` is a, b, tie (no side preferred) or abstain (nobody voted).

    tie_policy "count_as_vote": a tie vote is an outcome that can win; "ignore": tie votes are
    counted in `ties` but only a/b votes decide the winner. `votes` as read_annotations gives them
    (item_id and annotator_id never missing).
    """
    # Everything works on integer codes: crowd-kit joins and groups the votes by task and worker in
    # every EM iteration, several times faster on integers than on string ids. Items are numbered in
    # order of their first vote, which is the order of the output rows.
    item, items = pd.factorize(votes["item_id"].to_numpy())
    worker, workers = pd.factorize(votes["annotator_id"].to_numpy(), sort=True)
    label = pd.Index(LABELS).get_indexer(votes["vote"])  # a, b, tie, abstain -> 0..3; anything else -1
    n_items = len(items)

    counts = _vote_counts(item, label, n_items)
    deciding = np.isin(label, [0, 1] if tie_policy == "ignore" else [0, 1, 2])
    crowd = pd.DataFrame({"task": item[deciding], "worker": worker[deciding], "label": label[deciding]})

    majority = _majority(crowd)
    majority_winner = np.full(n_items, "abstain", dtype=object)
    majority_winner[majority.index] = majority.to_numpy()
    winner = majority_winner.copy()
    outcome_votes = counts[:, :2] if tie_policy == "ignore" else counts[:, :3]
    with np.errstate(divide="ignore", invalid="ignore"):  # no deciding vote: NaN
        confidence = outcome_votes.max(axis=1) / outcome_votes.sum(axis=1)
    reliability, posterior = _reliability(crowd, n_items, method, max_iterations)
    if posterior is not None:
        winner[posterior.index] = _argmax_label(posterior).to_numpy()
        confidence[posterior.index] = posterior.max(axis=1).to_numpy()
    worker_reliability = reliability.reindex(range(len(workers))).to_numpy(dtype=float)

    votes_a, votes_b, ties = counts[:, 0], counts[:, 1], counts[:, 2]
    decisive = (votes_a + votes_b + ties).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        chosen_share = np.select([winner == "a", winner == "b"], [votes_a, votes_b], np.maximum(votes_a, votes_b))
        chosen_share = chosen_share / decisive
        tie_share = ties / decisive

    comparisons = _item_fields(votes, item)
    comparisons.insert(0, "item_id", pd.Index(items))  # inferred as groupby infers it (str for text ids)
    for column, values in [
        ("n_votes", counts.sum(axis=1)),
        ("votes_a", votes_a),
        ("votes_b", votes_b),
        ("ties", ties),
        ("abstentions", counts[:, 3]),
    ]:
        comparisons[column] = values.astype("int64")
    comparisons["winner"] = pd.Series(winner, dtype=object)
    comparisons["majority_winner"] = pd.Series(majority_winner, dtype=object)
    comparisons["method"] = method
    comparisons["confidence"] = confidence
    comparisons["chosen_share"] = chosen_share
    comparisons["tie_share"] = tie_share
    # strength: the mean of the votes that agree with the winner (NaN where none gave one)
    agrees = label == pd.Index(LABELS).get_indexer(winner)[item]
    comparisons["strength"] = _item_mean(votes["strength"].to_numpy(dtype=float), item, n_items, where=agrees)
    comparisons["annotator_reliability"] = _item_mean(worker_reliability[worker], item, n_items)
    for column in ADJUDICATION_COLUMNS:
        comparisons[column] = pd.Series(
            False if column == "adjudicated" else None, index=comparisons.index, dtype=object
        )
    comparisons["adjudicated"] = comparisons["adjudicated"].astype(bool)

    annotators = pd.DataFrame(
        {
            "annotator_id": pd.Index(workers),
            "votes": np.bincount(worker, minlength=len(workers)).astype("int64"),
            "reliability": worker_reliability,
        }
    )
    return AggregationResult(comparisons[COMPARISON_COLUMNS], annotators)


def _reliability(
    crowd: pd.DataFrame, n_items: int, method: AggregationMethod, max_iterations: int
) -> tuple[pd.Series, pd.DataFrame | None]:
    """Each annotator's reliability (by worker code) and, under Dawid-Skene, each item's posterior over the
    outcomes (None otherwise)."""
    from crowdkit.aggregation import DawidSkene, MajorityVote  # here: crowd-kit takes seconds to import

    # Reliability is learnt from items annotators share; fitted on single-vote items too, Dawid-Skene
    # can "correct" an annotator who always picks one side into always meaning the other.
    overlapping = crowd[np.bincount(crowd["task"], minlength=n_items)[crowd["task"]] > 1]
    if method == "dawid_skene" and overlapping["label"].nunique() > 1:
        # Rows grouped by task make crowd-kit's per-iteration joins ~1.5x faster. (Only here: crowd-kit's
        # MajorityVote breaks draws by the order labels first appear in, so its skills need vote order.)
        model = DawidSkene(n_iter=max_iterations).fit(overlapping.sort_values("task", kind="stable"))
        posterior = model.probas_.reindex(columns=range(len(OUTCOMES)), fill_value=0.0)
        return _dawid_skene_reliability(model), posterior
    if len(overlapping):
        return MajorityVote().fit(overlapping).skills_, None
    return pd.Series(dtype=float), None


def _vote_counts(item: np.ndarray, label: np.ndarray, n_items: int) -> np.ndarray:
    """Votes per item and label: columns a, b, tie, abstain (other labels aren't counted)."""
    known = label >= 0
    flat = np.bincount(item[known] * len(LABELS) + label[known], minlength=n_items * len(LABELS))
    return flat.reshape(n_items, len(LABELS))


def _majority(crowd: pd.DataFrame) -> pd.Series:
    """Crowd-kit majority vote, except that an exact draw between outcomes is a tie, not a coin flip."""
    from crowdkit.aggregation import MajorityVote

    if crowd.empty:
        return pd.Series(dtype=object)
    shares = MajorityVote().fit(crowd).probas_.reindex(columns=range(len(OUTCOMES)), fill_value=0.0)
    return _argmax_label(shares)


def _argmax_label(probabilities: pd.DataFrame) -> pd.Series:
    """The most probable outcome per row (columns: outcome codes 0, 1, 2); a draw at the top is a tie."""
    values = probabilities.to_numpy()
    top = values.max(axis=1, keepdims=True)
    at_top = (values == top) | np.isclose(values, top)
    label = np.asarray(OUTCOMES, dtype=object)[values.argmax(axis=1)]
    label[at_top.sum(axis=1) > 1] = "tie"
    return pd.Series(label, index=probabilities.index, dtype=object)


def _dawid_skene_reliability(model) -> pd.Series:
    """P(annotator reports the true outcome), from Dawid-Skene's confusion matrices and priors."""
    errors = model.errors_  # index (worker, observed label), columns true label: P(observed | true)
    priors = model.priors_
    correct = [
        errors.xs(label, level=1).get(label, pd.Series(dtype=float)) * priors.get(label, 0.0)
        for label in errors.columns
        if label in errors.index.get_level_values(1)
    ]
    return pd.concat(correct, axis=1).sum(axis=1) / priors.sum()


def _item_mean(values: np.ndarray, item: np.ndarray, n_items: int, where: np.ndarray | None = None) -> np.ndarray:
    """Mean per item of the values present (and selected by `where`); NaN where there is none."""
    use = ~np.isnan(values) if where is None else where & ~np.isnan(values)
    total = np.bincount(item[use], weights=values[use], minlength=n_items)
    count = np.bincount(item[use], minlength=n_items)
    with np.errstate(divide="ignore", invalid="ignore"):
        return total / count


def _item_fields(votes: pd.DataFrame, item: np.ndarray) -> pd.DataFrame:
    """What describes the comparison itself, from its first vote; batches lists every batch that voted."""
    first = first_rows(item)  # each item's first vote
    fields = pd.DataFrame({name: _first_values(votes[name], item, first) for name in ITEM_FIELDS})
    fields["batches"] = pd.Series(_batch_lists(votes["batch"], item))  # dtype inferred, as groupby().agg() does
    return fields


def _first_values(values: pd.Series, item: np.ndarray, first: np.ndarray) -> pd.Series:
    """Each item's first value that isn't missing, as groupby().first() gives it."""
    array = values.to_numpy()
    result = array[first]
    missing = pd.isna(result)
    if missing.any():  # look further only for the items whose first vote has no value
        later = np.flatnonzero(missing[item] & pd.notna(array))
        found, position = np.unique(item[later], return_index=True)
        result[found] = array[later[position]]
        if result.dtype == object:
            result[pd.isna(result)] = None  # groupby().first() gives None for a group with no value
    return pd.Series(result, dtype=values.dtype)


def _batch_lists(batch: pd.Series, item: np.ndarray) -> np.ndarray:
    """Per item, the sorted batch names that voted on it, joined by ','."""
    code, names = pd.factorize(batch.to_numpy(), sort=True)
    if not len(names):
        return np.array([], dtype=object)
    pairs = np.sort(item.astype(np.int64) * len(names) + code)  # by item, then batch name
    pairs = pairs[np.diff(pairs, prepend=-1) > 0]  # each (item, batch) once (np.unique is slower: it hashes)
    pair_item, pair_batch = np.divmod(pairs, len(names))
    starts = np.flatnonzero(np.diff(pair_item, prepend=-1))
    separator = np.full(len(pairs), ",", dtype=object)
    separator[starts] = ""
    return np.add.reduceat(separator + names.astype(object)[pair_batch], starts)  # string concatenation per item


def review_reasons(
    comparisons: pd.DataFrame,
    agreement_threshold: float = ReviewThresholds.agreement_threshold,
    tie_heavy_share: float = ReviewThresholds.tie_heavy_share,
    min_annotator_reliability: float = ReviewThresholds.min_annotator_reliability,
) -> pd.Series:
    """Why each comparison needs a person ('' when it doesn't), reasons joined by ','.

    - split_vote: as many votes for a as for b, so the aggregate has no winner
    - low_agreement: a winner backed by less than `agreement_threshold` of the votes
    - tie_heavy: at least `tie_heavy_share` of votes are ties while some voters did pick a side
    - methods_disagree: majority vote and the configured method pick different winners
    - low_reliability: the item's annotators are on average below `min_annotator_reliability`
    """
    has_side = comparisons["winner"].isin(("a", "b"))
    decisive = comparisons["votes_a"] + comparisons["votes_b"]
    checks = {
        "split_vote": (decisive > 0) & (comparisons["votes_a"] == comparisons["votes_b"]),
        "low_agreement": has_side & (comparisons["chosen_share"] < agreement_threshold - 1e-9),
        "tie_heavy": (decisive > 0) & (comparisons["tie_share"] >= tie_heavy_share),
        "methods_disagree": comparisons["winner"] != comparisons["majority_winner"],
        "low_reliability": comparisons["annotator_reliability"] < min_annotator_reliability,
    }
    reasons = pd.Series("", index=comparisons.index, dtype=object)
    for name, mask in checks.items():
        mask = mask.fillna(False).astype(bool)
        reasons[mask] = reasons[mask].where(reasons[mask] == "", reasons[mask] + ",") + name
    return reasons


REVIEWER_COLUMNS = ["review_decision", "reviewer_id", "note"]  # what the reviewer fills in


def review_queue(comparisons: pd.DataFrame, **thresholds) -> pd.DataFrame:
    """Disputed comparisons that no reviewer has decided yet, with the reasons and empty columns for the
    reviewer: `review_decision`, `reviewer_id`, `note`."""
    reasons = review_reasons(comparisons, **thresholds)
    queued = (reasons != "") & ~comparisons["adjudicated"].astype(bool)
    queue = comparisons[queued].drop(columns=ADJUDICATION_COLUMNS)
    queue.insert(1, "review_reasons", reasons[queued])
    for column in REVIEWER_COLUMNS:
        queue[column] = ""
    return queue.reset_index(drop=True)


# OWASP's CSV-injection rule: a spreadsheet runs a cell starting with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Quoted: a text starting like a formula, after any single quotes. Quoting "'=x" too keeps the escape
# reversible: restore_formulas removes exactly one quote from every text starting with quotes and a prefix.
_PREFIX = "[" + re.escape("".join(FORMULA_PREFIXES)) + "]"
_NEEDS_QUOTE = re.compile("'*" + _PREFIX)
_QUOTED = re.compile("'+" + _PREFIX)


def neutralise_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` safe to open in a spreadsheet: every text cell that starts like a formula gets
    a leading single quote (which the spreadsheet shows as text). Numbers stay numbers."""
    safe = table.copy()
    for column in safe.columns:
        values = safe[column]
        if values.dtype != object and not pd.api.types.is_string_dtype(values):
            continue
        text = values.map(lambda value: isinstance(value, str) and _NEEDS_QUOTE.match(value) is not None)
        if text.any():
            quoted = values.astype(object)
            quoted[text] = "'" + values[text].astype(str)
            safe[column] = quoted
    return safe


def restore_formulas(value):
    """The text ``neutralise_formulas`` quoted, as it was (its exact inverse); anything else unchanged."""
    return value[1:] if isinstance(value, str) and _QUOTED.match(value) else value
