"""Aggregation: one row per comparison, ties and abstentions counted, winners by majority or Dawid-Skene."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.aggregation import (
    ADJUDICATION_COLUMNS,
    COMPARISON_COLUMNS,
    aggregate_votes,
    review_queue,
    review_reasons,
)
from rm_pipeline.lib.annotations import read_annotations

FLIP = {"a": "b", "b": "a"}


def ingest_votes(tmp_path, triples, name="batch") -> pd.DataFrame:
    """(item, annotator, vote[, strength]) tuples written as a JSONL batch and read back as the votes table."""
    path = tmp_path / f"{name}.jsonl"
    rows = []
    for item, annotator, label, *strength in triples:
        rows.append(
            {
                "item_id": item,
                "prompt_id": f"prompt-{item}",
                "prompt": f"Question {item}?",
                "response_a": f"answer A to {item}",
                "response_b": f"answer B to {item}",
                "annotator_id": annotator,
                "vote": label,
                "strength": strength[0] if strength else None,
                "domain": "test",
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = read_annotations([path])
    assert result.quarantine.empty, result.quarantine
    return result.votes.assign(item_id=result.votes["source_item_id"])  # ids as written: tests name items by them


HAND_MADE = [
    ("x", "u1", "a"),
    ("x", "u2", "a"),
    ("x", "u3", "b"),  # 2-of-3 majority for a
    ("y", "u1", "a"),
    ("y", "u2", "tie"),
    ("y", "u3", "tie"),  # tie-heavy
    ("z", "u1", "a"),
    ("z", "u2", "b"),  # exact a/b draw
    ("w", "u1", "a"),
    ("w", "u2", "abstain"),  # abstention is counted, not a side
    ("n", "u3", "abstain"),  # nobody picked anything
]


@pytest.fixture
def hand_made(tmp_path):
    return ingest_votes(tmp_path, HAND_MADE)


def by_item(result) -> pd.DataFrame:
    return result.comparisons.set_index("item_id")


def test_one_row_per_comparison_with_every_vote_counted(hand_made):
    result = aggregate_votes(hand_made, method="majority_vote")
    assert list(result.comparisons.columns) == COMPARISON_COLUMNS
    c = by_item(result)
    assert sorted(c.index) == ["n", "w", "x", "y", "z"]
    counts = c[["votes_a", "votes_b", "ties", "abstentions", "n_votes"]].astype(int)
    assert counts.to_dict("index") == {
        "x": {"votes_a": 2, "votes_b": 1, "ties": 0, "abstentions": 0, "n_votes": 3},
        "y": {"votes_a": 1, "votes_b": 0, "ties": 2, "abstentions": 0, "n_votes": 3},
        "z": {"votes_a": 1, "votes_b": 1, "ties": 0, "abstentions": 0, "n_votes": 2},
        "w": {"votes_a": 1, "votes_b": 0, "ties": 0, "abstentions": 1, "n_votes": 2},
        "n": {"votes_a": 0, "votes_b": 0, "ties": 0, "abstentions": 1, "n_votes": 1},
    }
    assert c["n_votes"].sum() == len(hand_made)


def test_majority_winners_draws_and_abstentions(hand_made):
    c = by_item(aggregate_votes(hand_made, method="majority_vote"))
    assert c["winner"].to_dict() == {"x": "a", "y": "tie", "z": "tie", "w": "a", "n": "abstain"}
    assert (c["winner"] == c["majority_winner"]).all()
    assert (c["method"] == "majority_vote").all()


def test_shares_on_a_hand_made_example(hand_made):
    c = by_item(aggregate_votes(hand_made, method="majority_vote"))
    assert c.loc["x", "chosen_share"] == pytest.approx(2 / 3)
    assert c.loc["x", "tie_share"] == 0.0
    assert c.loc["y", "tie_share"] == pytest.approx(2 / 3)
    assert c.loc["z", "chosen_share"] == pytest.approx(1 / 2)
    assert c.loc["w", "chosen_share"] == 1.0  # the abstention is not a vote against
    assert np.isnan(c.loc["n", "chosen_share"]) and np.isnan(c.loc["n", "tie_share"])
    assert c.loc["x", "confidence"] == pytest.approx(2 / 3)


def test_tie_policy_ignore_lets_the_only_side_win(hand_made):
    counted = by_item(aggregate_votes(hand_made, method="majority_vote", tie_policy="count_as_vote"))
    ignored = by_item(aggregate_votes(hand_made, method="majority_vote", tie_policy="ignore"))
    assert counted.loc["y", "winner"] == "tie"
    assert ignored.loc["y", "winner"] == "a"
    assert ignored.loc["y", "ties"] == 2  # still counted
    assert ignored.loc["y", "confidence"] == 1.0  # ignored ties don't dilute the only side that voted
    assert ignored.loc["z", "winner"] == "tie"  # an a/b draw stays a draw


def test_winner_strength_is_the_mean_of_agreeing_votes(tmp_path):
    votes = ingest_votes(
        tmp_path, [("s", "u1", "a", 2), ("s", "u2", "a", 1), ("s", "u3", "b", 2), ("t", "u1", "b", None)]
    )
    c = by_item(aggregate_votes(votes, method="majority_vote"))
    assert c.loc["s", "strength"] == pytest.approx(1.5)
    assert np.isnan(c.loc["t", "strength"])


def test_votes_in_swapped_orientation_agree(tmp_path):
    path = tmp_path / "batch.jsonl"
    base = {"item_id": "i1", "prompt": "Say hi.", "response_a": "Hi!", "response_b": "Go away."}
    rows = [
        {**base, "annotator_id": "u1", "vote": "a"},
        {**base, "response_a": "Go away.", "response_b": "Hi!", "annotator_id": "u2", "vote": "B"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    votes = read_annotations([path]).votes
    for method in ("majority_vote", "dawid_skene"):
        result = aggregate_votes(votes, method=method)
        row = result.comparisons.iloc[0]
        assert (row["votes_a"], row["votes_b"], row["winner"], row["chosen_share"]) == (2, 0, "a", 1.0)
        assert review_reasons(result.comparisons).tolist() == [""]


def test_batches_lists_every_batch_that_voted(tmp_path):
    first = ingest_votes(tmp_path, [("i", "u1", "a")], name="monday")
    second = ingest_votes(tmp_path, [("i", "u2", "a"), ("j", "u2", "b")], name="tuesday")
    c = by_item(aggregate_votes(pd.concat([first, second], ignore_index=True), method="majority_vote"))
    assert c["batches"].to_dict() == {"i": "monday,tuesday", "j": "tuesday"}


# ---------------------------------------------------------------- Dawid-Skene


def crowd_with_an_adversary(seed=0):
    """40 items seen by three honest annotators and one who always picks the other side; then 6 items
    seen only by one honest annotator and the adversary, where majority vote can only call a draw."""
    rng = random.Random(seed)
    triples, truth = [], {}
    for i in range(40):
        truth[f"t{i}"] = side = rng.choice("ab")
        triples += [(f"t{i}", honest, side) for honest in ("g1", "g2", "g3")] + [(f"t{i}", "adv", FLIP[side])]
    for i in range(6):
        truth[f"h{i}"] = side = rng.choice("ab")
        triples += [(f"h{i}", "g1", side), (f"h{i}", "adv", FLIP[side])]
    return triples, pd.Series(truth)


def test_dawid_skene_learns_who_to_trust(tmp_path):
    triples, truth = crowd_with_an_adversary()
    votes = ingest_votes(tmp_path, triples)
    majority = aggregate_votes(votes, method="majority_vote")
    skene = aggregate_votes(votes, method="dawid_skene")
    hard = [f"h{i}" for i in range(6)]
    assert (by_item(majority).loc[hard, "winner"] == "tie").all()
    assert by_item(skene).loc[hard, "winner"].tolist() == truth[hard].tolist()
    assert (by_item(skene)["winner"] == truth.reindex(by_item(skene).index)).all()
    reliability = skene.annotators.set_index("annotator_id")["reliability"]
    assert reliability["adv"] < 0.2 < 0.8 < reliability[["g1", "g2", "g3"]].min()
    assert (by_item(skene)["method"] == "dawid_skene").all()
    # the disagreement with majority vote is visible to the review queue
    assert all(
        "methods_disagree" in reason
        for reason in review_reasons(skene.comparisons)[skene.comparisons["item_id"].isin(hard)]
    )


def test_dawid_skene_leaves_single_vote_annotators_alone(tmp_path):
    """An annotator seen only on single-vote items shares nothing to learn from: their vote stands.

    Fitted on everything, Dawid-Skene explains "always votes a" on items where b is the usual truth as
    an annotator whose "a" means b, and flips every one of their labels.
    """
    crowd = [(f"t{i}", honest, "a" if i % 5 == 0 else "b") for i in range(40) for honest in ("g1", "g2", "g3")]
    crowd += [("d1", "g1", "a"), ("d1", "g2", "b"), ("d1", "g3", "b")]  # some disagreement to fit
    solo = [(f"s{i}", "solo", "a") for i in range(10)]
    result = aggregate_votes(ingest_votes(tmp_path, crowd + solo), method="dawid_skene")
    c = by_item(result)
    assert (c.loc[[item for item, _, _ in solo], "winner"] == "a").all()
    assert (c.loc[[f"t{i}" for i in range(40)], "winner"] == ["a" if i % 5 == 0 else "b" for i in range(40)]).all()
    reliability = result.annotators.set_index("annotator_id")
    assert reliability.loc["solo", "votes"] == 10
    assert np.isnan(reliability.loc["solo", "reliability"])
    assert reliability.loc[["g1", "g2", "g3"], "reliability"].notna().all()
    assert c.loc[[item for item, _, _ in solo], "annotator_reliability"].isna().all()


def test_dawid_skene_on_single_vote_data_is_the_votes_themselves(tmp_path):
    votes = ingest_votes(
        tmp_path, [("p1", "crowd", "a"), ("p2", "crowd", "b"), ("p3", "crowd", "a"), ("p4", "crowd", "tie")]
    )
    c = by_item(aggregate_votes(votes, method="dawid_skene"))
    assert c["winner"].to_dict() == {"p1": "a", "p2": "b", "p3": "a", "p4": "tie"}


# ---------------------------------------------------------------- review


def test_review_reasons_flag_disputes_with_a_configurable_threshold(hand_made):
    comparisons = aggregate_votes(hand_made, method="majority_vote").comparisons
    strict = dict(zip(comparisons["item_id"], review_reasons(comparisons)))
    assert strict == {"x": "low_agreement", "y": "tie_heavy", "z": "split_vote", "w": "", "n": ""}
    lenient = dict(zip(comparisons["item_id"], review_reasons(comparisons, agreement_threshold=0.6)))
    assert lenient["x"] == ""  # 2 of 3 is enough at 0.6
    assert lenient["z"] == "split_vote"
    relaxed = dict(zip(comparisons["item_id"], review_reasons(comparisons, tie_heavy_share=0.7)))
    assert relaxed["y"] == ""


def test_review_reasons_combine(hand_made):
    comparisons = aggregate_votes(hand_made, method="majority_vote", tie_policy="ignore").comparisons
    reasons = dict(zip(comparisons["item_id"], review_reasons(comparisons)))
    assert reasons["y"] == "low_agreement,tie_heavy"  # a wins on 1 vote of 3


def test_low_reliability_flag(tmp_path):
    triples, _ = crowd_with_an_adversary()
    comparisons = aggregate_votes(ingest_votes(tmp_path, triples), method="majority_vote").comparisons
    hard = comparisons["item_id"].str.startswith("h")  # one honest voter and the adversary, on average ~0.5
    assert (
        comparisons.loc[hard, "annotator_reliability"].max()
        < 0.6
        < comparisons.loc[~hard, "annotator_reliability"].min()
    )
    flagged = review_reasons(comparisons, agreement_threshold=0.0, min_annotator_reliability=0.6)
    assert flagged[hard].str.contains("low_reliability").all()
    assert not flagged[~hard].str.contains("low_reliability").any()
    assert not review_reasons(comparisons, agreement_threshold=0.0).str.contains("low_reliability").any()


def test_review_queue_holds_disputed_items_with_an_empty_decision(hand_made):
    comparisons = aggregate_votes(hand_made, method="majority_vote").comparisons
    queue = review_queue(comparisons, agreement_threshold=0.6)
    assert sorted(queue["item_id"]) == ["y", "z"]
    assert list(queue.columns[:2]) == ["item_id", "review_reasons"]
    assert (queue[["review_decision", "reviewer_id", "note"]] == "").all().all()
    # every comparison column but the adjudication ones (always empty in the queue: decided items leave it)
    assert set(comparisons.columns) - set(ADJUDICATION_COLUMNS) <= set(queue.columns)
