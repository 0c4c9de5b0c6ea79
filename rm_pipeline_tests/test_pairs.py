"""Pairs: comparisons become chosen/rejected pairs or rejected rows with a reason; nothing is lost."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from rm_pipeline.lib.aggregation import aggregate_votes, review_queue
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.batch_folder import list_batch_files
from rm_pipeline.lib.pairs import (
    CHARS_PER_TOKEN_CEILING,
    PAIR_COLUMNS,
    REJECTED_COLUMNS,
    REJECTION_REASONS,
    build_pairs,
    rejection_counts,
)
from rm_pipeline.lib.tokenization import default_base_model, load_tokenizer, token_lengths

BUNDLED = Path(__file__).resolve().parents[1] / "rm_pipeline" / "data" / "annotations"


def vote(item_id, **overrides) -> dict:
    row = {
        "item_id": item_id,
        "prompt": f"Question {item_id}?",
        "response_a": f"Good answer to {item_id}.",
        "response_b": f"Bad answer to {item_id}.",
        "annotator_id": "ann1",
        "vote": "a",
    }
    row.update(overrides)
    return row


def comparisons_from(tmp_path, rows, **aggregation) -> pd.DataFrame:
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    ingested = read_annotations([path])
    assert ingested.quarantine.empty, ingested.quarantine
    votes = ingested.votes.assign(item_id=ingested.votes["source_item_id"])  # ids as written: tests name items by them
    return aggregate_votes(votes, method=aggregation.pop("method", "majority_vote"), **aggregation).comparisons


def split_pairs(comparisons, **options):
    kept, rejected = build_pairs(comparisons, **options)
    assert len(kept) + len(rejected) == len(comparisons)
    assert list(kept.columns) == PAIR_COLUMNS and list(rejected.columns) == REJECTED_COLUMNS
    return kept, rejected


def reasons(rejected) -> dict:
    return dict(zip(rejected["item_id"], rejected["reason"]))


@pytest.fixture(scope="module")
def minilm():
    return load_tokenizer(default_base_model())


def test_classic_toy_example_keeps_only_the_good_pair(tmp_path):
    rows = [
        vote("good"),
        vote("same", response_a="Identical.", response_b="Identical."),
        vote("ctx", prompt="Hi", context_a="user: Hi", context_b="user: Hello", response_a="Hey!", response_b="Bye."),
        vote("tie", vote="tie"),
    ]
    comparisons = comparisons_from(tmp_path, rows)
    kept, rejected = split_pairs(comparisons)
    assert kept["pair_id"].tolist() == ["good"]
    assert reasons(rejected) == {"same": "identical_candidates", "ctx": "context_mismatch", "tie": "tie_or_abstention"}
    counts = rejection_counts(rejected)
    assert list(counts) == list(REJECTION_REASONS)  # every reason reported, zeros included
    assert {name: n for name, n in counts.items() if n} == {
        "tie_or_abstention": 1,
        "identical_candidates": 1,
        "context_mismatch": 1,
    }
    assert len(kept) + sum(counts.values()) == len(comparisons)


def test_chosen_and_rejected_follow_the_winner(tmp_path):
    comparisons = comparisons_from(tmp_path, [vote("i1", vote="a"), vote("i2", vote="b")])
    kept, _ = split_pairs(comparisons)
    pairs = kept.set_index("pair_id")
    assert pairs.loc["i1", ["chosen", "rejected"]].tolist() == ["Good answer to i1.", "Bad answer to i1."]
    assert pairs.loc["i2", ["chosen", "rejected"]].tolist() == ["Bad answer to i2.", "Good answer to i2."]


def test_abstention_only_items_are_rejected(tmp_path):
    comparisons = comparisons_from(tmp_path, [vote("i1", vote="abstain"), vote("i2")])
    kept, rejected = split_pairs(comparisons)
    assert reasons(rejected) == {"i1": "tie_or_abstention"}
    assert "abstain" in rejected["detail"].iloc[0]


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_empty_candidate_is_kept_at_ingestion_and_rejected_as_a_pair(tmp_path, blank):
    rows = [vote("empty_b", response_b=blank), vote("empty_a", response_a=blank, vote="b"), vote("fine")]
    comparisons = comparisons_from(tmp_path, rows)  # asserts nothing was quarantined
    kept, rejected = split_pairs(comparisons)
    assert kept["pair_id"].tolist() == ["fine"]
    assert reasons(rejected) == {"empty_b": "empty_candidate", "empty_a": "empty_candidate"}


def test_the_first_rule_broken_is_the_reason(tmp_path):
    """A tie between identical candidates is reported once, as the tie."""
    comparisons = comparisons_from(tmp_path, [vote("i1", vote="tie", response_a="Same.", response_b="Same.")])
    _, rejected = split_pairs(comparisons)
    assert reasons(rejected) == {"i1": "tie_or_abstention"}


def test_same_prompt_chosen_rejected_twice_is_a_duplicate(tmp_path):
    rows = [
        vote("first", prompt="Q?", response_a="Yes.", response_b="No."),
        # another item_id with the candidates shown the other way round and the same preference
        vote("second", prompt="Q?", response_a="No.", response_b="Yes.", vote="b"),
        # same candidates, opposite preference: a different pair, not a duplicate
        vote("opposite", prompt="Q?", response_a="Yes.", response_b="No.", vote="b", annotator_id="ann2"),
    ]
    kept, rejected = split_pairs(comparisons_from(tmp_path, rows))
    assert sorted(kept["pair_id"]) == ["first", "opposite"]
    assert reasons(rejected) == {"second": "duplicate"}


def test_an_earlier_rejected_pair_does_not_make_a_later_one_a_duplicate(tmp_path):
    rows = [
        vote("disputed", prompt="Q?", response_a="Yes.", response_b="No."),
        vote("kept", prompt="Q?", response_a="Yes.", response_b="No."),
    ]
    comparisons = comparisons_from(tmp_path, rows)
    kept, rejected = split_pairs(comparisons, disputed_item_ids=["disputed"])
    assert kept["pair_id"].tolist() == ["kept"]
    assert reasons(rejected) == {"disputed": "disputed"}


def test_disputed_items_are_excluded_unless_included(tmp_path):
    rows = [
        vote("x", annotator_id="u1"),
        vote("x", annotator_id="u2"),
        vote("x", annotator_id="u3", vote="b"),
        vote("clear"),
    ]
    comparisons = comparisons_from(tmp_path, rows)
    queue = review_queue(comparisons)  # a 2-of-3 vote is low agreement at the default threshold
    assert queue["item_id"].tolist() == ["x"]
    kept, rejected = split_pairs(comparisons, disputed_item_ids=queue["item_id"])
    assert kept["pair_id"].tolist() == ["clear"] and reasons(rejected) == {"x": "disputed"}
    assert rejected["detail"].iloc[0] == "routed to the review queue"
    kept, rejected = split_pairs(comparisons, disputed_item_ids=queue["item_id"], include_disputed=True)
    assert sorted(kept["pair_id"]) == ["clear", "x"] and rejected.empty
    assert kept.set_index("pair_id").loc["x", "chosen_share"] == pytest.approx(2 / 3)


def test_too_long_pairs_are_dropped_not_truncated(tmp_path, minilm):
    long_answer = " ".join(["word"] * 300)
    rows = [vote("short"), vote("long", response_b=long_answer, vote="b")]
    comparisons = comparisons_from(tmp_path, rows)
    count = partial(token_lengths, minilm)
    lengths = dict(
        zip(
            comparisons["item_id"],
            count(comparisons["prompt"], comparisons["response_b"], comparisons["conversational"]),
        )
    )
    assert lengths["short"] < 50 < 300 < lengths["long"]
    kept, rejected = split_pairs(comparisons, token_lengths=count, max_length=100)
    assert kept["pair_id"].tolist() == ["short"]
    assert reasons(rejected) == {"long": "too_long"}
    assert f"{lengths['long']} tokens > max_length 100" in rejected["detail"].iloc[0]

    kept, rejected = split_pairs(comparisons, token_lengths=count, max_length=lengths["long"])
    assert rejected.empty  # exactly max_length fits
    pairs = kept.set_index("pair_id")
    assert pairs.loc["long", "chosen"] == long_answer  # whole, not cut
    assert pairs.loc["long", "chosen_tokens"] == lengths["long"]
    assert pairs.loc["short", "rejected_tokens"] == lengths["short"]
    assert pairs.loc["short", "chosen_tokens"] == count(["Question short?"], ["Good answer to short."], [False])[0]

    _, rejected = split_pairs(comparisons, token_lengths=count, max_length=lengths["long"] - 1)
    assert reasons(rejected) == {"long": "too_long"}


def test_without_a_tokenizer_the_length_rule_is_skipped(tmp_path):
    comparisons = comparisons_from(tmp_path, [vote("long", response_a=" ".join(["word"] * 2000))])
    kept, rejected = split_pairs(comparisons, max_length=8)
    assert kept["pair_id"].tolist() == ["long"] and rejected.empty
    assert kept["chosen_tokens"].isna().all()


def test_only_pairs_that_pass_every_other_rule_are_measured(tmp_path):
    seen = []

    def count(prompts, responses, conversational):
        seen.extend(prompts.index)
        return pd.Series(1, index=prompts.index).to_numpy()

    comparisons = comparisons_from(tmp_path, [vote("ok"), vote("tied", vote="tie")])
    kept, _ = split_pairs(comparisons, token_lengths=count)
    ok_index = comparisons.index[comparisons["item_id"] == "ok"].tolist()
    assert seen == ok_index * 2  # chosen and rejected sides of the one pair still in the running
    assert kept["chosen_tokens"].tolist() == [1]


def test_implicit_prompt_conversations_with_different_contexts_are_rejected(tmp_path):
    def chat(*turns):
        return [{"role": role, "content": text} for role, text in turns]

    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "chosen": chat(("user", "Hi"), ("assistant", "Hello!")),
            "rejected": chat(("user", "Hi"), ("assistant", "Go away.")),
        },
        {
            "chosen": chat(("user", "Hi"), ("assistant", "Hello!")),
            "rejected": chat(("user", "Hey"), ("assistant", "Go away.")),
        },
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    votes = read_annotations([path]).votes
    comparisons = aggregate_votes(votes).comparisons
    kept, rejected = split_pairs(comparisons)
    assert kept["pair_id"].tolist() == ["chat/1"] and bool(kept["conversational"].iloc[0])
    assert reasons(rejected) == {"chat/2": "context_mismatch"}


# ---------------------------------------------------------------- the bundled real data


def test_bundled_data_rejections(minilm):
    votes = read_annotations(list_batch_files(BUNDLED)).votes
    comparisons = aggregate_votes(votes).comparisons
    queue = review_queue(comparisons)
    kept, rejected = split_pairs(
        comparisons,
        disputed_item_ids=queue["item_id"],
        max_length=512,
        token_lengths=lambda p, r, c: token_lengths(minilm, p, r, c),
    )
    by_reason = rejected.groupby("reason")["item_id"].apply(set)
    assert by_reason["context_mismatch"] == {f"hh-rlhf/hh-harmless:{n}" for n in (1255, 1689, 1951, 1953, 2037)}
    assert {f"hh-rlhf/hh-harmless:{n}" for n in (87, 517, 926, 1104)} <= by_reason["empty_candidate"]
    assert set(queue["item_id"]) - by_reason["disputed"] <= set(rejected["item_id"])  # earlier rule won
    assert (kept[["chosen_tokens", "rejected_tokens"]].max(axis=1) <= 512).all()
    assert not kept.duplicated(["prompt", "chosen", "rejected"]).any()
    assert (kept["chosen"] != kept["rejected"]).all()
    assert sum(rejection_counts(rejected).values()) == len(rejected)
    assert {"hh-rlhf", "pandalm", "tulu1-human-eval"} == set(kept["source"])


# ---------------------------------------------------------------- nothing to measure, texts far too long


def test_no_comparison_reaching_the_length_rule_is_no_pairs_not_a_crash(tmp_path, minilm):
    comparisons = comparisons_from(
        tmp_path, [vote("tied", vote="tie"), vote("same", response_b="Good answer to same.")]
    )
    kept, rejected = split_pairs(comparisons, token_lengths=lambda p, r, c: token_lengths(minilm, p, r, c))
    assert kept.empty and reasons(rejected) == {"tied": "tie_or_abstention", "same": "identical_candidates"}
    kept, rejected = split_pairs(comparisons.iloc[:0], token_lengths=lambda p, r, c: token_lengths(minilm, p, r, c))
    assert kept.empty and rejected.empty


def test_a_text_far_beyond_max_length_is_too_long_without_being_tokenized(tmp_path, minilm):
    huge = "word " * 1_000_000  # 5 MB
    bound = 100 * CHARS_PER_TOKEN_CEILING
    near = "x " * ((bound - len("Question near?")) // 2 - 5)  # just under the bound: tokenized (and too long)
    comparisons = comparisons_from(tmp_path, [vote("huge", response_b=huge), vote("near", response_a=near), vote("ok")])
    measured = []

    def count(prompts, responses, conversational):
        measured.extend(responses.str.len())
        return token_lengths(minilm, prompts, responses, conversational)

    kept, rejected = split_pairs(comparisons, token_lengths=count, max_length=100)
    assert kept["pair_id"].tolist() == ["ok"]
    assert reasons(rejected) == {"huge": "too_long", "near": "too_long"}
    detail = rejected.set_index("item_id")["detail"]
    assert detail["huge"] == f"{len('Question huge?') + len(huge)} characters, far beyond max_length 100 tokens"
    assert "tokens > max_length 100" in detail["near"]
    assert max(measured) == len(near)  # the huge text never reached the tokenizer
