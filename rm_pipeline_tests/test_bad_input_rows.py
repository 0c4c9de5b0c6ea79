"""Identifiers in annotation rows: one person is one annotator, one comparison is one id, one file is one batch.

The matrix ``SPELLINGS`` lists two or more spellings of one identifier, written on votes of the same item,
and whether they must count as the same identifier after normalisation (NFC, trimmed; annotator ids also
case-folded). The tests below it cover scoped ids and batch names, which involve more than one file.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from rm_pipeline.lib.aggregation import aggregate_votes
from rm_pipeline_tests.test_annotations import assert_conserved, ingest, vote, write_jsonl

CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")


@dataclass(frozen=True)
class Spelling:
    name: str
    field: str
    values: tuple  # the same identifier written differently, one vote each on one item
    same: bool  # whether they must be one identifier after normalisation


SPELLINGS = [
    Spelling("annotator_trailing_space", "annotator_id", ("ann-1", "ann-1 "), same=True),
    Spelling("annotator_leading_tab_and_newline", "annotator_id", ("ann-1", "\tann-1\n"), same=True),
    Spelling("annotator_case", "annotator_id", ("ann-1", "ANN-1", "Ann-1"), same=True),
    Spelling("annotator_nfc_nfd", "annotator_id", (CAFE_NFC, CAFE_NFD), same=True),
    Spelling("annotator_case_and_nfd", "annotator_id", (CAFE_NFC, CAFE_NFD.upper()), same=True),
    Spelling("annotator_no_break_space", "annotator_id", ("ann-1", "ann-1\u00a0"), same=True),
    Spelling("annotator_distinct_people", "annotator_id", ("ann-1", "ann-2"), same=False),
    Spelling("item_leading_space", "item_id", (" q1", "q1"), same=True),
    Spelling("item_nfc_nfd", "item_id", (CAFE_NFC, CAFE_NFD), same=True),
    Spelling("item_case_is_kept", "item_id", ("Q1", "q1"), same=False),
    Spelling("integer_item_and_its_digits", "item_id", (7, " 7"), same=True),
    Spelling("source_trailing_space", "source", ("vend", "vend "), same=True),
    Spelling("source_nfc_nfd", "source", (CAFE_NFC, CAFE_NFD), same=True),
    Spelling("source_case_is_kept", "source", ("Vend", "vend"), same=False),
    Spelling("batch_trailing_space", "batch", ("b1", " b1 "), same=True),
    Spelling("prompt_id_trailing_space", "prompt_id", ("p1", "p1 "), same=True),
]


def _votes_for(spelling: Spelling) -> list[dict]:
    """One vote per spelling on one comparison; the other identifiers are held apart or together as needed."""
    rows = []
    for number, value in enumerate(spelling.values, start=1):
        row = vote(**{spelling.field: value})
        if spelling.field != "annotator_id":  # different people, so that a merged item keeps every vote
            row["annotator_id"] = f"ann-{number}"
        rows.append(row)
    return rows


@pytest.mark.parametrize("spelling", SPELLINGS, ids=[s.name for s in SPELLINGS])
def test_identifier_spellings(tmp_path, spelling):
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", _votes_for(spelling)))
    column = "item_id" if spelling.field == "source" else spelling.field
    distinct = result.votes[column].nunique()
    if spelling.field == "annotator_id":  # one person on one item: the first vote stands
        kept = 1 if spelling.same else len(spelling.values)
        assert len(result.votes) == kept
        assert (result.quarantine["reason"] == "duplicate_vote").sum() == len(spelling.values) - kept
        assert distinct == 1 if spelling.same else distinct == len(spelling.values)
    else:  # every vote is kept: different people
        assert len(result.votes) == len(spelling.values) and result.quarantine.empty, result.quarantine
        assert distinct == (1 if spelling.same else len(spelling.values)), result.votes[column].tolist()
    for name in ("item_id", "annotator_id", "prompt_id", "source", "batch", "source_item_id"):
        for value in result.votes[name].dropna():
            assert value == unicodedata.normalize("NFC", value).strip(), (name, value)


def test_one_person_in_three_spellings_does_not_outvote_two(tmp_path):
    """The issue's case: `ann-1`, `ann-1 ` and `ANN-1` voted `a`; two others voted `b`: `b` wins."""
    rows = [vote(annotator_id=a, vote="a") for a in ("ann-1", "ann-1 ", "ANN-1")]
    rows += [vote(annotator_id=a, vote="b") for a in ("ann-2", "ann-3")]
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", rows))
    comparisons = aggregate_votes(result.votes, method="majority_vote").comparisons
    assert comparisons["n_votes"].tolist() == [3]
    assert comparisons["winner"].tolist() == ["b"]


def test_annotator_ids_are_stored_case_folded(tmp_path):
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", [vote(annotator_id=" Straße-1 ")]))
    assert result.votes["annotator_id"].tolist() == ["strasse-1"]


# ---------------------------------------------------------------- scoped ids


@pytest.mark.parametrize(
    "first, second",
    [
        (("x/y", "z"), ("x", "y/z")),  # both were x/y/z: one vendor's vote lost as inconsistent_item
        (("x%2Fy", "z"), ("x/y", "z")),  # an escape written literally in a source stays apart
        (("a/", "b"), ("a", "/b")),
    ],
    ids=["slash_in_source_or_item", "escape_text_in_source", "slash_at_the_edges"],
)
def test_scoped_ids_never_collide(tmp_path, first, second):
    rows = [
        vote(source=first[0], item_id=first[1], annotator_id="v1"),
        vote(source=second[0], item_id=second[1], annotator_id="v2", response_a="Hello."),
    ]
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", rows))
    assert result.quarantine.empty, result.quarantine
    assert result.votes["item_id"].nunique() == 2
    assert result.votes["source_item_id"].tolist() == [first[1], second[1]]
    scope, _, item = result.votes["item_id"].iloc[0].partition("/")  # the first "/" ends the scope
    assert item == first[1] and "/" not in scope


def test_scoped_ids_of_plain_sources_are_unchanged(tmp_path):
    """The bundled data's sources hold no `/` or `%`: their ids, and so the trained model, stay as they were."""
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", [vote(source="hh-rlhf", item_id="hh-harmless:1")]))
    assert result.votes["item_id"].tolist() == ["hh-rlhf/hh-harmless:1"]


# ---------------------------------------------------------------- batch names


def _csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_same_stem_files_are_distinct_batches(tmp_path):
    """`vend.jsonl` and `vend.csv` from two vendors: both were batch `vend`, their item 1 one comparison."""
    jsonl = write_jsonl(tmp_path / "vend.jsonl", [vote(item_id="1", annotator_id="a1")])
    csv = _csv(tmp_path / "vend.csv", [vote(item_id="1", annotator_id="a2", response_a="Other.")])
    other = write_jsonl(tmp_path / "other.jsonl", [vote(item_id="1", annotator_id="a3")])
    result = ingest(jsonl, csv, other)
    assert result.quarantine.empty, result.quarantine
    assert sorted(result.batches["batch"]) == ["other", "vend.csv", "vend.jsonl"]
    assert sorted(result.votes["batch"]) == ["other", "vend.csv", "vend.jsonl"]
    assert result.votes["item_id"].nunique() == 3
    assert_conserved(result)


def test_a_unique_stem_stays_the_batch_name(tmp_path):
    result = ingest(write_jsonl(tmp_path / "vend.jsonl", [vote()]), _csv(tmp_path / "other.csv", [vote()]))
    assert sorted(result.batches["batch"]) == ["other", "vend"]
    assert sorted(result.votes["item_id"]) == ["other/i1", "vend/i1"]


def test_same_file_name_in_two_folders_are_distinct_batches(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = write_jsonl(tmp_path / "a" / "vend.jsonl", [vote(annotator_id="a1")])
    second = write_jsonl(tmp_path / "b" / "vend.jsonl", [vote(annotator_id="a2", response_a="Other.")])
    result = ingest(first, second)
    assert result.quarantine.empty, result.quarantine
    assert result.batches["batch"].nunique() == 2 and result.votes["item_id"].nunique() == 2


def test_pair_files_with_one_stem_are_distinct_annotators(tmp_path):
    """A TRL pair file's votes are its batch's: two `pairs` files are two batches, not one annotator twice."""
    pair = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": "1"}
    result = ingest(write_jsonl(tmp_path / "pairs.jsonl", [pair]), _csv(tmp_path / "pairs.csv", [pair]))
    assert result.quarantine.empty, result.quarantine
    assert sorted(result.votes["annotator_id"]) == ["pairs.csv", "pairs.jsonl"]


def test_a_blank_batch_field_takes_the_file_batch(tmp_path):
    result = ingest(write_jsonl(tmp_path / "vend.jsonl", [vote(batch="  ")]))
    assert result.votes["batch"].tolist() == ["vend"] and result.votes["item_id"].tolist() == ["vend/i1"]
