"""Great Expectations 1.x suites that gate each stage's output. Knows nothing of Dagster.

Each gate validates the stage's table (and small derived tables for cross-row rules such as count
conservation or split overlap) and returns every failed expectation in words a person can act on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from a gate

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.data_context.types.base import ProgressBarsConfig

from rm_pipeline.lib.aggregation import OUTCOMES
from rm_pipeline.lib.annotations import VOTE_COLUMNS, VOTE_LABELS
from rm_pipeline.lib.pairs import PREFERRED, TIE, tie_pairs
from rm_pipeline.lib.split import NO_DOMAIN


@dataclass
class GateResult:
    success: bool = True
    expectations: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: GateResult) -> GateResult:
        return GateResult(
            self.success and other.success, self.expectations + other.expectations, self.failures + other.failures
        )


def validate(table_name: str, frame: pd.DataFrame, expectations: list) -> GateResult:
    """Run expectations on a whole DataFrame in an ephemeral GE context."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(table_name)
        .add_dataframe_asset(table_name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name=f"{table_name}_suite", expectations=expectations)
    outcome = batch.validate(suite)
    failures = [_describe(table_name, result) for result in outcome.results if not result.success]
    return GateResult(bool(outcome.success), len(outcome.results), failures)


def _describe(table_name: str, result) -> str:
    config = result.expectation_config
    target = config.kwargs.get("column") or config.kwargs.get("column_list") or ""
    details = {
        key: result.result[key]
        for key in ("observed_value", "unexpected_count", "partial_unexpected_list")
        if _present(result.result.get(key))
    }
    if result.exception_info.get("raised_exception"):
        details["error"] = result.exception_info.get("exception_message")
    return f"{table_name}: {config.type}({target}) failed {details}"


def _present(value) -> bool:
    # not `value not in (None, [])`: a NumPy scalar (a column sum) compared with [] is an empty array, and
    # its truth value raises instead of describing the failure
    return value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0)


def raw_annotations_gate(votes: pd.DataFrame, quarantine: pd.DataFrame, max_quarantine_fraction: float) -> GateResult:
    """Schema and value sets of the votes, one vote per (item, annotator), and no batch mostly unreadable."""
    vote_rules = [
        gxe.ExpectTableColumnsToMatchSet(column_set=VOTE_COLUMNS, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="vote", value_set=list(VOTE_LABELS)),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["item_id", "annotator_id"]),
        gxe.ExpectColumnValuesToBeBetween(column="strength", min_value=0, max_value=sys.float_info.max),
    ]
    vote_rules += [
        gxe.ExpectColumnValuesToNotBeNull(column=name)
        for name in ("item_id", "prompt_id", "prompt", "response_a", "response_b", "annotator_id", "batch", "file")
    ]
    batches = batch_health(votes, quarantine)
    batch_rules = [gxe.ExpectColumnValuesToBeBetween(column="quarantined_share", max_value=max_quarantine_fraction)]
    return validate("raw_annotations", votes, vote_rules).merge(validate("annotation_batches", batches, batch_rules))


def batch_health(votes: pd.DataFrame, quarantine: pd.DataFrame) -> pd.DataFrame:
    """Per file: votes kept, rows quarantined, and the quarantined share."""
    health = pd.DataFrame({"kept": votes.groupby("file").size(), "quarantined": quarantine.groupby("file").size()})
    health = health.fillna(0).astype("int64")
    health["quarantined_share"] = health["quarantined"] / (health["kept"] + health["quarantined"])
    return health.rename_axis("file").reset_index()


def aggregated_preferences_gate(comparisons: pd.DataFrame, votes: pd.DataFrame) -> GateResult:
    """Counts add up per comparison and to the votes in; shares are proportions; winners are outcomes."""
    derived = comparisons.assign(
        count_gap=comparisons["n_votes"] - comparisons[["votes_a", "votes_b", "ties", "abstentions"]].sum(axis=1)
    )
    rules = [
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValuesToBeInSet(column="winner", value_set=[*OUTCOMES, "abstain"]),
        gxe.ExpectColumnValuesToBeBetween(column="n_votes", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="count_gap", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="chosen_share", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="tie_share", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1),
        gxe.ExpectColumnSumToBeBetween(column="n_votes", min_value=len(votes), max_value=len(votes)),
    ]
    return validate("aggregated_preferences", derived, rules)


def review_queue_gate(queue: pd.DataFrame, comparisons: pd.DataFrame) -> GateResult:
    """Each queued comparison exists, once, with a reason, and no reviewer has decided it yet."""
    decided = comparisons.loc[comparisons["adjudicated"].astype(bool), "item_id"]
    derived = queue.assign(
        known_item=queue["item_id"].isin(comparisons["item_id"]), adjudicated=queue["item_id"].isin(decided)
    )
    rules = [
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        gxe.ExpectColumnValuesToBeInSet(column="known_item", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="adjudicated", value_set=[False]),
        gxe.ExpectColumnValueLengthsToBeBetween(column="review_reasons", min_value=1),
    ]
    return validate("review_queue", derived, rules)


def preference_pairs_gate(
    pairs: pd.DataFrame, rejected: pd.DataFrame, comparisons: pd.DataFrame, max_length: int
) -> GateResult:
    """The pair rules hold on every kept pair, each is preferred (1) or a tie (0.5), and kept (tie pairs
    included) + rejected = comparisons in."""
    derived = pairs.assign(
        identical=pairs["chosen"] == pairs["rejected"],
        chosen_blank=pairs["chosen"].str.strip() == "",
        rejected_blank=pairs["rejected"].str.strip() == "",
    )
    rules = [
        gxe.ExpectColumnValuesToBeUnique(column="pair_id"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["prompt", "chosen", "rejected"]),
        gxe.ExpectColumnValuesToBeInSet(column="identical", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="chosen_blank", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="rejected_blank", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="chosen_tokens", max_value=max_length),
        gxe.ExpectColumnValuesToBeBetween(column="rejected_tokens", max_value=max_length),
        gxe.ExpectColumnValuesToBeInSet(column="preference", value_set=[PREFERRED, TIE]),
    ]
    ledger = pd.DataFrame(
        {
            "comparisons": [len(comparisons)],
            "kept": [len(pairs)],
            "tie_pairs": [int(tie_pairs(pairs).sum())],
            "rejected": [len(rejected)],
        }
    )
    ledger["gap"] = ledger["comparisons"] - ledger["kept"] - ledger["rejected"]
    ledger_rules = [gxe.ExpectColumnValuesToBeBetween(column="gap", min_value=0, max_value=0)]
    rejected_rules = [gxe.ExpectColumnValuesToNotBeNull(column="reason")]
    return (
        validate("preference_pairs", derived, rules)
        .merge(validate("pair_ledger", ledger, ledger_rules))
        .merge(validate("rejected_pairs", rejected, rejected_rules))
    )


def preference_split_gate(split: pd.DataFrame, group_column: str = "prompt_group") -> GateResult:
    """No prompt group on both sides; every domain in train, and in eval when it has two groups or more.
    A group's domain is its first pair's, as the split stratifies it."""
    groups = split.groupby(group_column)["split"].nunique().rename("sides").reset_index()
    domain = split["domain"].fillna(NO_DOMAIN).groupby(split[group_column]).transform("first")
    domains = (
        split.assign(domain=domain)
        .groupby("domain")
        .agg(
            groups=(group_column, "nunique"),
            train_pairs=("split", lambda s: int((s == "train").sum())),
            eval_pairs=("split", lambda s: int((s == "eval").sum())),
        )
    )
    domains["eval_missing"] = (domains["groups"] >= 2) & (domains["eval_pairs"] == 0)
    split_rules = [
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "eval"]),
        gxe.ExpectColumnValuesToNotBeNull(column="split"),
    ]
    group_rules = [gxe.ExpectColumnValuesToBeBetween(column="sides", max_value=1)]
    domain_rules = [
        gxe.ExpectColumnValuesToBeBetween(column="train_pairs", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="eval_missing", value_set=[False]),
    ]
    return (
        validate("preference_split", split, split_rules)
        .merge(validate("split_groups", groups, group_rules))
        .merge(validate("split_domains", domains.reset_index(), domain_rules))
    )
