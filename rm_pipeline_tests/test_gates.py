"""Quality gates: each passes on good stage output and fails, in words, on bad output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from rm_pipeline.lib import gates
from rm_pipeline.lib.aggregation import aggregate_votes, review_queue
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.pairs import build_pairs
from rm_pipeline.lib.split import split_by_group


@dataclass
class Stages:
    votes: pd.DataFrame
    quarantine: pd.DataFrame
    comparisons: pd.DataFrame
    queue: pd.DataFrame
    pairs: pd.DataFrame
    rejected: pd.DataFrame
    split: pd.DataFrame


def run_stages(folder, rows_by_file: dict[str, list]) -> Stages:
    paths = []
    for name, rows in rows_by_file.items():
        path = folder / name
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
        paths.append(path)
    ingested = read_annotations(paths)
    comparisons = aggregate_votes(ingested.votes, method="majority_vote").comparisons
    queue = review_queue(comparisons)
    pairs, rejected = build_pairs(
        comparisons, queue["item_id"], token_lengths=lambda p, r, c: r.str.len().to_numpy(), max_length=100
    )
    return Stages(ingested.votes, ingested.quarantine, comparisons, queue, pairs, rejected, split_by_group(pairs))


def good_rows() -> list[dict]:
    rows = []
    for i in range(40):
        domain = ("math", "chat")[i % 2]
        for annotator in ("u1", "u2", "u3"):
            label = "b" if (i % 7 == 0 and annotator == "u3") else "a"  # some 2-of-3 items for the review queue
            rows.append(
                {
                    "item_id": f"i{i}",
                    "prompt_id": f"p{i // 2}",
                    "prompt": f"Question {i // 2}?",
                    "response_a": f"Good answer {i}.",
                    "response_b": f"Bad answer {i}.",
                    "annotator_id": annotator,
                    "vote": label,
                    "domain": domain,
                }
            )
    rows.append({**rows[0], "item_id": "tied", "vote": "tie", "annotator_id": "u1"})
    return rows


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Stages:
    stages = run_stages(tmp_path_factory.mktemp("good"), {"batch.jsonl": good_rows()})
    assert len(stages.queue) > 0 and len(stages.rejected) > 0 and set(stages.split["split"]) == {"train", "eval"}
    return stages


def assert_fails(result: gates.GateResult, *words: str) -> str:
    assert not result.success
    assert result.failures, "a failed gate must say why"
    for failure in result.failures:  # in words first, then what Great Expectations found
        words, technical = failure.split(" [", 1)
        assert words and " failed {" in technical, failure
    text = "\n".join(result.failures)
    for word in words:
        assert word in text, (word, text)
    return text


# ---------------------------------------------------------------- raw annotations


def test_raw_gate_passes_on_good_votes(good):
    result = gates.raw_annotations_gate(good.votes, good.quarantine, max_quarantine_fraction=0.05)
    assert result.success and result.failures == []
    assert result.expectations >= 10


def test_raw_gate_fails_when_a_batch_is_mostly_quarantined(tmp_path):
    clean = good_rows()[:6]
    dirty = [clean[0] | {"item_id": "d1"}, "not json", "{also not json", clean[0] | {"item_id": "d2", "vote": "maybe"}]
    stages = run_stages(tmp_path, {"clean.jsonl": clean, "dirty.jsonl": dirty})
    health = gates.batch_health(stages.votes, stages.quarantine).set_index("file")["quarantined_share"]
    assert health[str(tmp_path / "dirty.jsonl")] == pytest.approx(0.75)
    assert health[str(tmp_path / "clean.jsonl")] == 0.0
    assert_fails(
        gates.raw_annotations_gate(stages.votes, stages.quarantine, max_quarantine_fraction=0.5),
        "annotation_batches",
        "quarantined_share",
        "0.75",
    )
    assert gates.raw_annotations_gate(stages.votes, stages.quarantine, max_quarantine_fraction=0.75).success


def test_a_failed_batch_names_its_file_the_rows_their_reasons_and_the_limit(tmp_path):
    row = {"item_id": "x", "prompt": "p", "response_a": "r1", "annotator_id": "v", "vote": "a"}  # no response_b
    stages = run_stages(tmp_path, {"bad_batch_02.jsonl": [row | {"item_id": f"i{n}"} for n in range(40)]})
    failures = gates.raw_annotations_gate(stages.votes, stages.quarantine, max_quarantine_fraction=0.2).failures
    sentence = "`bad_batch_02.jsonl`: 40 of 40 rows quarantined (missing_field response_b: 40), above the 20% limit"
    assert any(failure.startswith(f"{sentence} (`max_quarantine_fraction`) [") for failure in failures), failures


def test_a_failed_row_is_named_by_its_file_and_line(good):
    votes = good.votes.copy()
    votes.loc[3, "strength"] = -2.0
    text = assert_fails(gates.raw_annotations_gate(votes, good.quarantine, 1.0), "strength")
    assert f"`{Path(votes.loc[3, 'file']).name}` line {votes.loc[3, 'line']}: strength -2.0 is not a finite" in text


def test_raw_gate_fails_on_an_unknown_vote_label(good):
    votes = good.votes.copy()
    votes.loc[0, "vote"] = "maybe"
    assert_fails(gates.raw_annotations_gate(votes, good.quarantine, 1.0), "raw_annotations", "vote", "maybe")


def test_raw_gate_fails_on_a_repeated_vote(good):
    votes = pd.concat([good.votes, good.votes.iloc[[0]]], ignore_index=True)
    assert_fails(gates.raw_annotations_gate(votes, good.quarantine, 1.0), "item_id", "annotator_id")


def test_raw_gate_fails_on_a_missing_column_or_null_prompt(good):
    assert_fails(
        gates.raw_annotations_gate(good.votes.drop(columns="domain"), good.quarantine, 1.0),
        "expect_table_columns_to_match_set",
    )
    votes = good.votes.copy()
    votes.loc[3, "prompt"] = None
    assert_fails(
        gates.raw_annotations_gate(votes, good.quarantine, 1.0), "expect_column_values_to_not_be_null", "prompt"
    )


def test_raw_gate_fails_on_an_empty_votes_table(good):
    assert_fails(gates.raw_annotations_gate(good.votes.iloc[0:0], good.quarantine, 1.0), "row_count")


# ---------------------------------------------------------------- aggregated preferences


def test_aggregation_gate_passes_on_good_comparisons(good):
    result = gates.aggregated_preferences_gate(good.comparisons, good.votes)
    assert result.success and result.failures == []


def test_aggregation_gate_fails_when_counts_do_not_add_up(good):
    comparisons = good.comparisons.copy()
    comparisons.loc[0, "n_votes"] += 1
    assert_fails(gates.aggregated_preferences_gate(comparisons, good.votes), "count_gap", "n_votes")


def test_aggregation_gate_fails_when_votes_went_missing(good):
    assert_fails(
        gates.aggregated_preferences_gate(good.comparisons, good.votes.iloc[1:]),
        "expect_column_sum_to_be_between",
        "n_votes",
    )


def test_aggregation_gate_fails_on_a_bad_winner_or_share(good):
    comparisons = good.comparisons.copy()
    comparisons.loc[0, "winner"] = "c"
    comparisons.loc[1, "chosen_share"] = 1.5
    text = assert_fails(gates.aggregated_preferences_gate(comparisons, good.votes), "winner", "chosen_share")
    assert "'c'" in text and "1.5" in text


def test_aggregation_gate_fails_on_a_repeated_item(good):
    comparisons = pd.concat([good.comparisons, good.comparisons.iloc[[0]]], ignore_index=True)
    assert_fails(gates.aggregated_preferences_gate(comparisons, good.votes), "item_id")


# ---------------------------------------------------------------- review queue


def test_review_queue_gate_passes_on_the_queue(good):
    assert gates.review_queue_gate(good.queue, good.comparisons).success


def test_review_queue_gate_passes_on_an_empty_queue(good):
    assert gates.review_queue_gate(good.queue.iloc[0:0], good.comparisons).success


def test_review_queue_gate_fails_on_unknown_items_or_missing_reasons(good):
    queue = good.queue.copy()
    queue.loc[0, "item_id"] = "nobody-knows"
    assert_fails(gates.review_queue_gate(queue, good.comparisons), "known_item")
    queue = good.queue.copy()
    queue.loc[0, "review_reasons"] = ""
    assert_fails(gates.review_queue_gate(queue, good.comparisons), "review_reasons")


# ---------------------------------------------------------------- preference pairs


def test_pairs_gate_passes_on_good_pairs(good):
    result = gates.preference_pairs_gate(good.pairs, good.rejected, good.comparisons, max_length=100)
    assert result.success and result.failures == []


def test_pairs_gate_passes_without_token_counts(good):
    pairs, rejected = build_pairs(good.comparisons, good.queue["item_id"])
    assert pairs["chosen_tokens"].isna().all()
    assert gates.preference_pairs_gate(pairs, rejected, good.comparisons, max_length=100).success


def test_pairs_gate_fails_when_kept_plus_rejected_is_not_the_comparisons(good):
    text = assert_fails(
        gates.preference_pairs_gate(good.pairs, good.rejected.iloc[1:], good.comparisons, 100), "pair_ledger", "gap"
    )
    assert "preference_pairs" not in text  # only the ledger is wrong


def test_pairs_gate_fails_on_a_pair_that_breaks_a_rule(good):
    pairs = good.pairs.copy()
    pairs.loc[0, "rejected"] = pairs.loc[0, "chosen"]
    pairs.loc[1, "chosen"] = "  "
    pairs.loc[2, "chosen_tokens"] = 101
    text = assert_fails(
        gates.preference_pairs_gate(pairs, good.rejected, good.comparisons, max_length=100),
        "identical",
        "chosen_blank",
        "chosen_tokens",
    )
    assert "101" in text


def test_pairs_gate_fails_on_duplicate_pairs_and_unexplained_rejections(good):
    pairs = pd.concat([good.pairs, good.pairs.iloc[[0]]], ignore_index=True)
    rejected = good.rejected.copy()
    rejected.loc[0, "reason"] = None
    comparisons = pd.concat([good.comparisons, good.comparisons.iloc[[0]]], ignore_index=True)
    assert_fails(
        gates.preference_pairs_gate(pairs, rejected, comparisons, max_length=100),
        "pair_id",
        "chosen",
        "rejected_pairs",
        "reason",
    )


# ---------------------------------------------------------------- split


def test_split_gate_passes_on_a_grouped_split(good):
    result = gates.preference_split_gate(good.split)
    assert result.success and result.failures == []


def test_split_gate_fails_when_a_prompt_is_on_both_sides(good):
    split = good.split.copy()
    sizes = split["prompt_id"].value_counts()
    rows = split.index[split["prompt_id"] == sizes.index[sizes == 2][0]]  # two items share a prompt
    split.loc[rows, "split"] = ["train", "eval"]
    assert_fails(gates.preference_split_gate(split), "split_groups", "sides")


def test_split_gate_fails_when_a_domain_has_no_eval(good):
    split = good.split.copy()
    math_groups = split.groupby("prompt_group")["domain"].first() == "math"  # a group's domain is its first pair's
    split.loc[split["prompt_group"].isin(math_groups.index[math_groups]), "split"] = "train"
    assert_fails(gates.preference_split_gate(split), "split_domains", "eval_missing")


def test_split_gate_fails_on_an_unknown_side(good):
    split = good.split.copy()
    split.loc[0, "split"] = "test"
    assert_fails(gates.preference_split_gate(split), "preference_split", "test")


def test_gate_results_merge():
    merged = gates.GateResult(True, 2, []).merge(gates.GateResult(False, 3, ["x: failed"]))
    assert (merged.success, merged.expectations, merged.failures) == (False, 5, ["x: failed"])
