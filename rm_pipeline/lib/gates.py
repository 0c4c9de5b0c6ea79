"""Great Expectations 1.x suites that gate each stage's output. Knows nothing of Dagster.

Each gate validates the stage's table (and small derived tables for cross-row rules such as count
conservation or split overlap) and returns every failed expectation in words a person can act on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from a gate


class _Expectations:
    """`great_expectations.expectations`, imported when a gate first builds a suite: the import takes seconds,
    and every process that loads the Dagster definitions (UI, daemon, each CLI call) would pay it."""

    def __getattr__(self, name: str):
        import great_expectations.expectations

        return getattr(great_expectations.expectations, name)


gxe = _Expectations()

from rm_pipeline.lib.aggregation import OUTCOMES
from rm_pipeline.lib.annotations import VOTE_COLUMNS, VOTE_LABELS
from rm_pipeline.lib.augmentation import ANNOTATED, AUGMENTED_KINDS, KIND, OTHER, SOURCE, TARGET, annotated_train
from rm_pipeline.lib.pairs import PREFERRED, TIE, tie_pairs
from rm_pipeline.lib.split import NO_DOMAIN, normalised_prompt


@dataclass
class GateResult:
    success: bool = True
    expectations: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: GateResult) -> GateResult:
        return GateResult(
            self.success and other.success, self.expectations + other.expectations, self.failures + other.failures
        )


EXPLAINED_ROWS = 5  # failing rows told in words per expectation; the count says how many more


def explained(expectation, explain: str):
    """`expectation`, with the words its failure is told in: a template over a failing row's columns and the
    expectation's own arguments (`{max_value:.0%}`), so a failure names the file, the line and the limit."""
    expectation.meta = {**(expectation.meta or {}), "explain": explain}
    return expectation


def validate(table_name: str, frame: pd.DataFrame, expectations: list) -> GateResult:
    """Run expectations on a whole DataFrame in an ephemeral GE context."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    frame = frame.reset_index(drop=True)  # failing rows are reported by position
    batch = (
        context.data_sources.add_pandas(table_name)
        .add_dataframe_asset(table_name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name=f"{table_name}_suite", expectations=expectations)
    outcome = batch.validate(suite)
    failures = [_describe(table_name, result, frame) for result in outcome.results if not result.success]
    return GateResult(bool(outcome.success), len(outcome.results), failures)


def _describe(table_name: str, result, frame: pd.DataFrame) -> str:
    """In words (the expectation's `explain` template) first, then what Great Expectations found."""
    config = result.expectation_config
    target = config.kwargs.get("column") or config.kwargs.get("column_list") or ""
    details = {
        key: result.result[key]
        for key in ("observed_value", "unexpected_count", "partial_unexpected_list")
        if _present(result.result.get(key))
    }
    if result.exception_info.get("raised_exception"):
        details["error"] = result.exception_info.get("exception_message")
    technical = f"{table_name}: {config.type}({target}) failed {details}"
    words = _in_words(config, result.result, frame) if "error" not in details else None
    return f"{words} [{technical}]" if words else technical


def _in_words(config, found: dict, frame: pd.DataFrame) -> str | None:
    template = (config.meta or {}).get("explain")
    if not template:
        return None
    values = {**config.kwargs, "observed_value": found.get("observed_value")}
    rows = found.get("partial_unexpected_index_list") or []
    try:
        if not rows:
            return template.format_map(values)
        told = [template.format_map({**values, **_fields(frame.loc[row])}) for row in rows[:EXPLAINED_ROWS]]
    except (KeyError, ValueError, TypeError, IndexError):  # a template that doesn't fit: the technical words only
        return None
    more = int(found.get("unexpected_count") or len(rows)) - len(told)
    return "; ".join(told) + (f"; and {more} more" if more > 0 else "")


def _fields(row: pd.Series) -> dict:
    """A failing row's columns, and `file_name`: the batch file without its folder."""
    fields = row.to_dict()
    if isinstance(fields.get("file"), str):
        fields["file_name"] = Path(fields["file"]).name
    return fields


def _present(value) -> bool:
    # not `value not in (None, [])`: a NumPy scalar (a column sum) compared with [] is an empty array, and
    # its truth value raises instead of describing the failure
    return value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0)


def raw_annotations_gate(votes: pd.DataFrame, quarantine: pd.DataFrame, max_quarantine_fraction: float) -> GateResult:
    """Schema and value sets of the votes, one vote per (item, annotator), and no batch mostly unreadable."""
    at = "`{file_name}` line {line}: "
    vote_rules = [
        explained(
            gxe.ExpectTableColumnsToMatchSet(column_set=VOTE_COLUMNS, exact_match=True),
            "the votes table has columns {observed_value}, not the vote schema",
        ),
        explained(
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            "no vote was read: the annotation folder is empty or every row was quarantined",
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="vote", value_set=list(VOTE_LABELS)),
            at + "vote {vote!r} is not one of " + ", ".join(VOTE_LABELS),
        ),
        explained(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["item_id", "annotator_id"]),
            at + "{annotator_id} voted on {item_id} more than once",
        ),
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="strength", min_value=0, max_value=sys.float_info.max),
            at + "strength {strength} is not a finite number >= 0",
        ),
    ]
    vote_rules += [
        explained(gxe.ExpectColumnValuesToNotBeNull(column=name), at + "no {column}")
        for name in ("item_id", "prompt_id", "prompt", "response_a", "response_b", "annotator_id", "batch", "file")
    ]
    batches = batch_health(votes, quarantine)
    batch_rules = [
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="quarantined_share", max_value=max_quarantine_fraction),
            "`{file_name}`: {quarantined} of {rows} rows quarantined ({reasons}), above the {max_value:.0%} limit "
            "(`max_quarantine_fraction`)",
        )
    ]
    return validate("raw_annotations", votes, vote_rules).merge(validate("annotation_batches", batches, batch_rules))


def batch_health(votes: pd.DataFrame, quarantine: pd.DataFrame) -> pd.DataFrame:
    """Per file: votes kept, rows quarantined, the quarantined share, and the reasons with their counts."""
    health = pd.DataFrame({"kept": votes.groupby("file").size(), "quarantined": quarantine.groupby("file").size()})
    health = health.fillna(0).astype("int64")
    health["rows"] = health["kept"] + health["quarantined"]
    health["quarantined_share"] = health["quarantined"] / health["rows"]
    labels = quarantine["reason"].astype(str) + quarantine["field"].map(
        lambda field: f" {field}" if isinstance(field, str) and field else ""
    )
    health["reasons"] = labels.groupby(quarantine["file"]).agg(_counted).reindex(health.index)
    return health.rename_axis("file").reset_index().fillna({"reasons": "none"})


def _counted(labels: pd.Series) -> str:
    """`missing_field response_b: 40, malformed_json: 2`, most frequent first."""
    return ", ".join(f"{label}: {count}" for label, count in labels.value_counts().items())


def aggregated_preferences_gate(comparisons: pd.DataFrame, votes: pd.DataFrame) -> GateResult:
    """Counts add up per comparison and to the votes in; shares are proportions; winners are outcomes."""
    derived = comparisons.assign(
        count_gap=comparisons["n_votes"] - comparisons[["votes_a", "votes_b", "ties", "abstentions"]].sum(axis=1)
    )
    rules = [
        explained(gxe.ExpectColumnValuesToBeUnique(column="item_id"), "comparison {item_id} appears more than once"),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="winner", value_set=[*OUTCOMES, "abstain"]),
            "comparison {item_id}: winner {winner!r} is not an outcome",
        ),
        explained(gxe.ExpectColumnValuesToBeBetween(column="n_votes", min_value=1), "comparison {item_id} has no vote"),
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="count_gap", min_value=0, max_value=0),
            "comparison {item_id}: {n_votes} votes, but {votes_a} for A + {votes_b} for B + {ties} ties + "
            "{abstentions} abstentions",
        ),
        *(
            explained(
                gxe.ExpectColumnValuesToBeBetween(column=share, min_value=0, max_value=1),
                "comparison {item_id}: {column} is outside [0, 1]",
            )
            for share in ("chosen_share", "tie_share", "confidence")
        ),
        explained(
            gxe.ExpectColumnSumToBeBetween(column="n_votes", min_value=len(votes), max_value=len(votes)),
            "the comparisons count {observed_value} votes, the votes table holds {min_value}",
        ),
    ]
    return validate("aggregated_preferences", derived, rules)


def review_queue_gate(queue: pd.DataFrame, comparisons: pd.DataFrame) -> GateResult:
    """Each queued comparison exists, once, with a reason, and no reviewer has decided it yet."""
    decided = comparisons.loc[comparisons["adjudicated"].astype(bool), "item_id"]
    derived = queue.assign(
        known_item=queue["item_id"].isin(comparisons["item_id"]), adjudicated=queue["item_id"].isin(decided)
    )
    rules = [
        explained(gxe.ExpectColumnValuesToBeUnique(column="item_id"), "{item_id} is queued more than once"),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="known_item", value_set=[True]),
            "{item_id} is queued but no comparison",
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="adjudicated", value_set=[False]),
            "{item_id} is queued though a reviewer decided it",
        ),
        explained(
            gxe.ExpectColumnValueLengthsToBeBetween(column="review_reasons", min_value=1),
            "{item_id} is queued without a reason",
        ),
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
        explained(gxe.ExpectColumnValuesToBeUnique(column="pair_id"), "pair {pair_id} appears more than once"),
        explained(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["prompt", "chosen", "rejected"]),
            "pair {pair_id} repeats another pair's prompt, chosen and rejected",
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="identical", value_set=[False]),
            "pair {pair_id}: chosen and rejected are the same text",
        ),
        *(
            explained(
                gxe.ExpectColumnValuesToBeInSet(column=f"{side}_blank", value_set=[False]),
                f"pair {{pair_id}}: the {side} answer is blank",
            )
            for side in ("chosen", "rejected")
        ),
        *(
            explained(
                gxe.ExpectColumnValuesToBeBetween(column=f"{side}_tokens", max_value=max_length),
                f"pair {{pair_id}}: {{{side}_tokens}} tokens, above max_length {{max_value}}",
            )
            for side in ("chosen", "rejected")
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="preference", value_set=[PREFERRED, TIE]),
            "pair {pair_id}: preference {preference} is neither 1 (preferred) nor 0.5 (a tie)",
        ),
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
    ledger_rules = [
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="gap", min_value=0, max_value=0),
            "{comparisons} comparisons in, {kept} pairs kept and {rejected} rejected: {gap} unaccounted for",
        )
    ]
    rejected_rules = [
        explained(
            gxe.ExpectColumnValuesToNotBeNull(column="reason"), "comparison {item_id} was rejected without a reason"
        )
    ]
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
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "eval"]),
            "pair {pair_id}: split {split!r} is neither train nor eval",
        ),
        explained(gxe.ExpectColumnValuesToNotBeNull(column="split"), "pair {pair_id} is on neither side"),
    ]
    group_rules = [
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="sides", max_value=1),
            f"prompt group {{{group_column}}} is on both sides of the split",
        )
    ]
    domain_rules = [
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="train_pairs", min_value=1), "domain {domain} has no training pair"
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="eval_missing", value_set=[False]),
            "domain {domain} has {groups} prompt groups but no held-out pair",
        ),
    ]
    return (
        validate("preference_split", split, split_rules)
        .merge(validate("split_groups", groups, group_rules))
        .merge(validate("split_domains", domains.reset_index(), domain_rules))
    )


def training_pairs_gate(split: pd.DataFrame, rows: pd.DataFrame, ledger: list[dict]) -> GateResult:
    """The rows a model trains on (lib/augmentation.py ``augment``): every augmented row is on the train side,
    made from annotated train pairs only (no held-out prompt or answer in it), with its kind's target
    preference; and per kind, rows requested = built + over max_length + not applicable, built = rows present."""
    train = annotated_train(split)
    train_ids = set(train["pair_id"])
    held_out = split[split["split"] != "train"]
    # a held-out text that some train pair also has (a stock refusal) is training data already
    held_out_prompts = set(normalised_prompt(held_out["prompt"])) - set(normalised_prompt(train["prompt"]))
    held_out_answers = (
        (set(held_out["chosen"]) | set(held_out["rejected"])) - set(train["chosen"]) - set(train["rejected"])
    )
    augmented = rows[rows[KIND] != ANNOTATED]
    if augmented.empty:  # no provenance columns to check
        augmented = augmented.assign(**{SOURCE: "", OTHER: ""})
    derived = augmented.assign(
        from_train=augmented[SOURCE].isin(train_ids) & augmented[OTHER].isin(train_ids),
        held_out_text=normalised_prompt(augmented["prompt"]).isin(held_out_prompts)
        | augmented["chosen"].isin(held_out_answers)
        | augmented["rejected"].isin(held_out_answers),
        target_ok=augmented["preference"].to_numpy(float) == augmented[KIND].map(TARGET).to_numpy(float),
    )
    rules = [
        explained(
            gxe.ExpectColumnValuesToBeInSet(column=KIND, value_set=list(AUGMENTED_KINDS)),
            "row {pair_id}: kind {kind!r} is no augmentation",
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=["train"]),
            "augmented row {pair_id} is on the {split} side",
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="from_train", value_set=[True]),
            "augmented row {pair_id} was made from a pair that is not an annotated train pair",
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="held_out_text", value_set=[False]),
            "augmented row {pair_id} carries a held-out prompt or answer",
        ),
        explained(
            gxe.ExpectColumnValuesToBeInSet(column="target_ok", value_set=[True]),
            "augmented row {pair_id}: preference {preference} is not its kind's target",
        ),
    ]
    counts = rows.loc[rows["split"] == "train", KIND].value_counts()
    table = pd.DataFrame(ledger)
    table["present"] = table[KIND].map(counts).fillna(0).astype(int)
    table["gap"] = table["requested"] - table["built"] - table["over_max_length"] - table["not_applicable"]
    table["missing"] = table["built"] - table["present"]
    ledger_rules = [
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="gap", min_value=0, max_value=0),
            "{kind}: {requested} rows requested, {built} built, {over_max_length} over max_length and "
            "{not_applicable} not applicable: {gap} unaccounted for",
        ),
        explained(
            gxe.ExpectColumnValuesToBeBetween(column="missing", min_value=0, max_value=0),
            "{kind}: {built} rows built but {present} among the training rows",
        ),
    ]
    result = validate("training_pair_ledger", table, ledger_rules)
    return validate("augmented_pairs", derived, rules).merge(result) if len(augmented) else result
