"""Reviewers close the loop: decisions read back from review files, checked, and applied to the comparisons."""

import csv
import hashlib
import json

import dagster as dg
import pandas as pd
import pytest

from rm_pipeline.lib.aggregation import aggregate_votes, neutralise_formulas, review_queue
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.pairs import REJECTION_REASONS, build_pairs
from rm_pipeline.lib.reviews import apply_reviews, read_reviews

# Split votes on every item: each one goes to the review queue.
ITEMS = {
    "i1": ("Name a prime.", "7", "4"),
    "i2": ("=1+1", "-2", "@home"),  # text a spreadsheet would run: exported with a leading quote
    "i3": ("Say hi.", "hi", "go away"),
    "i4": ("Capital of France?", "Paris", "Lyon"),
}


@pytest.fixture
def comparisons(tmp_path):
    rows = [
        {"item_id": item, "prompt": prompt, "response_a": a, "response_b": b, "annotator_id": who, "vote": vote}
        for item, (prompt, a, b) in ITEMS.items()
        for who, vote in (("u1", "a"), ("u2", "b"))
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return aggregate_votes(read_annotations([batch]).votes, "majority_vote").comparisons


def export(queue: pd.DataFrame, path, decisions: dict) -> None:
    """The queue as review_queue exports it, with reviewer columns filled per item id."""
    filled = queue.copy()
    for item_id, values in decisions.items():
        for column, value in values.items():
            filled.loc[filled["item_id"] == item_id, column] = value
    neutralise_formulas(filled).to_csv(path, index=False, lineterminator="\r\n")


def physical_lines(path) -> dict[str, int]:
    """item_id -> the physical line its CSV record starts on (records may span lines)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader, lines, end = csv.DictReader(handle), {}, 1
        for row in reader:
            lines[row["item_id"]] = end + 1
            end = reader.line_num
    return lines


def test_decisions_from_the_exported_csv_are_applied_with_the_escaping_undone(comparisons, tmp_path):
    queue = review_queue(comparisons)
    assert len(queue) == len(ITEMS) and {"review_decision", "reviewer_id", "note"} <= set(queue.columns)
    path = tmp_path / "reviews.csv"
    i2 = "batch/i2"
    export(
        queue,
        path,
        {
            "batch/i1": {"review_decision": " A ", "reviewer_id": "rev-1", "note": "7 is prime"},
            i2: {"review_decision": "b", "reviewer_id": "=rev", "note": "-careful"},  # quoted on export
            "batch/i4": {"review_decision": "drop"},
        },
    )
    assert "'=rev" in path.read_text() and "'-2" in path.read_text()  # the file really holds quoted cells

    result = read_reviews([path], comparisons)
    assert result.quarantine.empty, result.quarantine
    assert result.counts() == {"rows_read": 4, "applied": 3, "quarantined": 0, "blank": 1, "items_adjudicated": 3}
    decisions = result.decisions.set_index("item_id")
    assert decisions.loc[i2, "adjudicated_by"] == "=rev" and decisions.loc[i2, "review_note"] == "-careful"
    assert decisions.loc["batch/i4", "adjudicated_by"] == "unknown"

    applied = apply_reviews(comparisons, result.decisions).set_index("item_id")
    assert applied.loc["batch/i1", "winner"] == "a" and applied.loc[i2, "winner"] == "b"
    assert applied["adjudicated"].to_dict() == {"batch/i1": True, i2: True, "batch/i3": False, "batch/i4": True}
    assert applied.loc["batch/i1", "adjudicated_by"] == "rev-1"

    requeued = review_queue(applied.reset_index())
    assert requeued["item_id"].tolist() == ["batch/i3"]  # adjudicated ones leave the queue
    kept, rejected = build_pairs(applied.reset_index(), requeued["item_id"])
    assert set(kept["pair_id"]) == {"batch/i1", i2}
    assert kept.set_index("pair_id").loc[i2, "chosen"] == "@home"
    reasons = dict(zip(rejected["item_id"], rejected["reason"]))
    assert reasons == {"batch/i3": "tie_or_abstention", "batch/i4": "dropped_by_reviewer"}  # a split vote: no winner
    assert rejected.set_index("item_id").loc["batch/i4", "detail"] == "dropped by reviewer unknown"
    assert REJECTION_REASONS[:2] == ("dropped_by_reviewer", "tie_or_abstention")


def test_bad_unknown_and_contradictory_rows_are_quarantined_with_file_line_and_field(comparisons, tmp_path):
    queue = review_queue(comparisons)
    first = tmp_path / "first.csv"
    export(
        queue,
        first,
        {
            "batch/i1": {"review_decision": "maybe"},
            "batch/i2": {"review_decision": "a", "reviewer_id": "r1"},
            "batch/i3": {"review_decision": "tie"},
        },
    )
    second = tmp_path / "second.jsonl"
    second.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"item_id": "batch/i2", "review_decision": "b", "reviewer_id": "r2"},  # disagrees with first.csv
                {"item_id": "batch/nope", "review_decision": "a"},
                {"item_id": "batch/i3", "review_decision": "TIE", "reviewer_id": "r3"},  # agrees: applied
                {"item_id": "batch/i4", "review_decision": ""},
                {"item_id": "batch/i1", "review_decision": "a", "response_a": "8", "response_b": "4"},
            ]
        )
        + "\n{not json\n"
    )
    result = read_reviews([first, second], comparisons)
    lines = physical_lines(first)
    found = {(row.file, row.line, row.field, row.reason) for row in result.quarantine.itertuples()}
    assert found == {
        (str(first), lines["batch/i1"], "review_decision", "bad_decision"),
        (str(first), lines["batch/i2"], "review_decision", "contradictory_review"),
        (str(second), 1, "review_decision", "contradictory_review"),
        (str(second), 2, "item_id", "unknown_item"),
        (str(second), 5, "response_a", "changed_item"),
        (str(second), 6, "", "malformed_json"),
    }
    assert lines["batch/i2"] > 2  # records before it span several physical lines
    contradiction = result.quarantine[result.quarantine["reason"] == "contradictory_review"]["detail"].iloc[0]
    assert f"{first}:{lines['batch/i2']} says a" in contradiction and f"{second}:1 says b" in contradiction
    counts = result.counts()
    assert counts == {"rows_read": 10, "applied": 2, "quarantined": 6, "blank": 2, "items_adjudicated": 1}
    assert counts["rows_read"] == counts["applied"] + counts["quarantined"] + counts["blank"]
    files = result.files.set_index("file")
    assert files.loc[str(second), ["rows_read", "applied", "quarantined", "blank"]].tolist() == [6, 1, 4, 1]
    assert len(files.loc[str(first), "sha256"]) == 64
    decisions = result.decisions.set_index("item_id")
    assert decisions.loc["batch/i3", "adjudicated_by"] == "r3,unknown"


def test_a_decision_follows_its_response_when_the_comparison_shows_the_sides_swapped(comparisons, tmp_path):
    path = tmp_path / "swapped.jsonl"
    row = {"item_id": "batch/i4", "review_decision": "a", "response_a": "Lyon", "response_b": "Paris"}
    path.write_text(json.dumps(row) + "\n")
    result = read_reviews([path], comparisons)
    assert result.decisions["review_decision"].tolist() == ["b"]  # the reviewer chose Paris: side b here


def test_a_review_item_id_is_read_by_the_rule_ingestion_reads_ids_by(comparisons, tmp_path):
    """Trimmed and in NFC, as ingestion stores it: a reviewer's ` batch/i4 ` is the comparison batch/i4."""
    path = tmp_path / "spaced.jsonl"
    path.write_text(json.dumps({"item_id": " batch/i4\t", "review_decision": "b"}) + "\n")
    result = read_reviews([path], comparisons)
    assert result.decisions["item_id"].tolist() == ["batch/i4"] and result.quarantine.empty


DATA_STAGES = ["raw_annotations", "annotation_quarantine", "aggregated_preferences", "review_queue"]
PAIRS = ["preference_pairs", "rejected_pairs"]


def test_the_review_round_trip(annotations_slice, storage_root, tmp_path):
    """Export the queue, fill decisions, drop the file in the reviews folder, materialise again."""
    from rm_pipeline.definitions import build_defs

    reviews = tmp_path / "reviews"
    reviews.mkdir()
    defs = build_defs(str(storage_root), str(annotations_slice), reviews_dir=str(reviews))

    def materialize():
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=[*DATA_STAGES, *PAIRS],
            resources=defs.resources,
            instance=instance,
        )
        assert result.success
        tables = storage_root / "tables"
        return result, {
            name: pd.read_parquet(tables / f"{name}.parquet") for name in ["aggregated_preferences", *PAIRS]
        }

    with dg.instance_for_test() as instance:
        materialize()
        export = storage_root / "review" / "review_queue.csv"
        with open(export, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) >= 4
        decided = {rows[0]["item_id"]: "b", rows[1]["item_id"]: "A", rows[2]["item_id"]: "drop"}
        for row in rows:
            if row["item_id"] in decided:
                row.update(review_decision=decided[row["item_id"]], reviewer_id="rev-7", note="checked")
        rows[3]["review_decision"] = "perhaps"
        with open(reviews / "round1.csv", "w", newline="", encoding="utf-8") as handle:  # as a spreadsheet saves it
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\r\n")
            writer.writeheader()
            writer.writerows(rows)
        (reviews / "~$round1.csv").write_bytes(b"\x0bJane Doe" + b"\x00" * 40)  # the spreadsheet still has it open

        result, tables = materialize()
        comparisons = tables["aggregated_preferences"].set_index("item_id")
        labelled = [item for item, decision in decided.items() if decision != "drop"]
        dropped = rows[2]["item_id"]
        for item in labelled:
            assert comparisons.loc[item, "winner"] == decided[item].lower()
            assert comparisons.loc[item, "adjudicated"] and comparisons.loc[item, "adjudicated_by"] == "rev-7"
            assert comparisons.loc[item, "review_note"] == "checked"
        assert comparisons.loc[dropped, "adjudicated"] and comparisons.loc[dropped, "review_decision"] == "drop"
        assert comparisons["adjudicated"].sum() == 3

        queue = pd.read_csv(export, keep_default_na=False)
        assert not queue["item_id"].isin(decided).any()
        assert set(labelled) <= set(tables["preference_pairs"]["pair_id"])
        rejected = tables["rejected_pairs"].set_index("item_id")
        assert rejected.loc[dropped, "reason"] == "dropped_by_reviewer"
        assert not rejected.index.isin(labelled).any()

        metadata = result.asset_materializations_for_node("aggregated_preferences")[0].metadata
        assert metadata["review_rows"].value == {
            "rows_read": len(rows),
            "applied": 3,
            "quarantined": 1,
            "blank": len(rows) - 4,
            "items_adjudicated": 3,
        }
        listed = metadata["review_quarantine"].value
        assert "bad_decision" in listed and str(reviews / "round1.csv") in listed
        files = {row.data["file"]: row.data for row in metadata["review_files"].value.records}
        assert (
            files[str(reviews / "round1.csv")]["sha256"]
            == hashlib.sha256((reviews / "round1.csv").read_bytes()).hexdigest()
        )
        skipped = [(row.data["file"], row.data["reason"]) for row in metadata["review_files_skipped"].value.records]
        assert skipped == [(str(reviews / "~$round1.csv"), "lock_file")]
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks and all(checks.values()), checks
