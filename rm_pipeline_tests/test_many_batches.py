"""Many batch files read together (issue 19 #13): the row checks run once per group of alike files, and
that must never change a result. Reading a set of files together gives exactly the tables (votes,
quarantine, batches: values, order and column types) of reading each file alone and concatenating.

The files have distinct stems (a batch's default name depends on the files read with it) and no item
shared between files (duplicates and inconsistent items across files are a whole-set check, the same
either way)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rm_pipeline.lib.annotations import GROUP_ROWS, read_annotations
from rm_pipeline.lib.evaluation.rewardbench2 import rewardbench2_pairs
from rm_pipeline.lib.table_files import AnnotationFileError
from rm_pipeline_tests.test_annotations import assert_conserved, vote, write_jsonl


def one_vote(index: int, **overrides) -> dict:
    row = {"item_id": f"i{index}", "prompt": f"Say hi {index}.", "annotator_id": f"ann{index % 3}"}
    return vote(**{**row, **overrides})


def alike_files(folder: Path, count: int = 6) -> list[Path]:
    """One-vote JSONL files with the same columns: one group; one vote bad, one with a blank batch."""
    rows = [one_vote(index, vote="ab"[index % 2], batch="") for index in range(count)]
    rows[1]["vote"] = "maybe"
    rows[-1]["batch"] = "vendor-x"
    return [write_jsonl(folder / f"alike_{index}.jsonl", [row]) for index, row in enumerate(rows)]


def mixed_columns(folder: Path) -> list[Path]:
    """Same columns, different column types (int item ids, int and float strengths), interleaved."""
    return [
        write_jsonl(folder / "strength_int_a.jsonl", [one_vote(10, strength=1), one_vote(11, strength=2)]),
        write_jsonl(folder / "strength_float_a.jsonl", [one_vote(12, strength=0.5)]),
        write_jsonl(folder / "strength_int_b.jsonl", [one_vote(13, strength=3), one_vote(14, strength=-1)]),
        write_jsonl(folder / "int_item.jsonl", [vote(item_id=7), vote(item_id=8, annotator_id=9)]),
        write_jsonl(folder / "strength_float_b.jsonl", [one_vote(15, strength=float("inf"))]),
        write_jsonl(folder / "no_prompt_id.jsonl", [{k: v for k, v in one_vote(16).items() if k != "prompt_id"}]),
        write_jsonl(folder / "missing_b.jsonl", [{k: v for k, v in one_vote(17).items() if k != "response_b"}]),
    ]


def bad_rows(folder: Path) -> list[Path]:
    """Files read line by line (a reader quarantine before the rejected rows), alike enough to group."""
    return [
        write_jsonl(folder / "broken_a.jsonl", [one_vote(20), "{not json", one_vote(21, vote="?")]),
        write_jsonl(folder / "broken_b.jsonl", ["[1, 2]", one_vote(22, vote="?"), one_vote(23)]),
        write_jsonl(folder / "repeated_key.jsonl", [one_vote(24), '{"item_id": "i25", "vote": "a", "vote": "b"}']),
        write_jsonl(folder / "bad_text.jsonl", [one_vote(26), json.dumps(one_vote(27, prompt="a\x00b"))]),
        write_jsonl(folder / "bad_utf8.jsonl", [b'{"item_id": "i28", "prompt": "\xff"}', one_vote(29)]),
    ]


def other_formats(folder: Path) -> list[Path]:
    """JSON list, CSV, Parquet and TRL pairs (standard, conversational) among plain vote files."""
    json_list = folder / "listed.json"
    json_list.write_text(json.dumps([one_vote(30), one_vote(31, response_a=5)]))
    table = folder / "table.csv"
    pd.DataFrame([one_vote(32), one_vote(33, vote="x"), one_vote(34, strength="strong")]).to_csv(table, index=False)
    parquet = folder / "stored.parquet"
    pd.DataFrame([one_vote(35, strength=1.5), one_vote(36, strength=float("nan"))]).to_parquet(parquet)
    chat = [{"role": "user", "content": "Hi?"}]
    return [
        json_list,
        write_jsonl(folder / "plain_a.jsonl", [one_vote(37)]),
        table,
        write_jsonl(folder / "pairs.jsonl", [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}]),
        parquet,
        write_jsonl(folder / "plain_b.jsonl", [one_vote(38)]),
        write_jsonl(
            folder / "chats.jsonl",
            [
                {"chosen": [*chat, {"role": "assistant", "content": "Hello."}], "rejected": [*chat]},
                {"chosen": [*chat, {"role": "assistant", "content": "Hey."}], "rejected": [*chat, chat[0]]},
            ],
        ),
        write_jsonl(folder / "plain_c.jsonl", [one_vote(39)]),
    ]


def large_files(folder: Path) -> list[Path]:
    """Alike files past GROUP_ROWS: a large file is checked alone, a group is checked once it has that many
    rows (and a new one begins), and small files between them still group."""
    big = [one_vote(index, vote="ab"[index % 2]) for index in range(GROUP_ROWS)]
    big[5]["vote"] = "?"
    return [
        write_jsonl(folder / "small_a.jsonl", [one_vote(1)]),
        write_jsonl(folder / "half_a.jsonl", big[: GROUP_ROWS // 2 + 1]),
        write_jsonl(folder / "large.jsonl", big),
        write_jsonl(folder / "half_b.jsonl", big[: GROUP_ROWS // 2 + 1]),
        write_jsonl(folder / "small_b.jsonl", [one_vote(2, vote="?")]),
        write_jsonl(folder / "half_c.jsonl", big[: GROUP_ROWS // 2 + 1]),
        write_jsonl(folder / "small_c.jsonl", [one_vote(3)]),
    ]


def everything(folder: Path) -> list[Path]:
    return [*alike_files(folder), *mixed_columns(folder), *bad_rows(folder), *other_formats(folder)]


FILE_SETS = {
    "one-vote-files-alike": alike_files,
    "same-columns-other-types": mixed_columns,
    "bad-rows-and-repeated-key": bad_rows,
    "json-list-csv-parquet-pairs": other_formats,
    "large-files-and-full-groups": large_files,
    "all-of-them": everything,
}


def assert_same_as_one_by_one(paths: list[Path], **options) -> None:
    together = read_annotations(paths, **options)
    if not options:  # a RewardBench 2 row becomes several pairs: rows_read counts the rows
        assert_conserved(together)
    alone = [read_annotations([path], **options) for path in paths]
    for name in ("votes", "quarantine", "batches"):
        expected = pd.concat([getattr(result, name) for result in alone], ignore_index=True)
        if name == "quarantine":
            expected["line"] = expected["line"].astype("int64")  # as one read makes it, whatever the parts
        pd.testing.assert_frame_equal(getattr(together, name), expected, check_dtype=True, obj=name)


@pytest.mark.parametrize("make", FILE_SETS.values(), ids=FILE_SETS.keys())
def test_files_read_together_give_the_tables_of_each_file_read_alone(tmp_path, make):
    paths = make(tmp_path)
    assert len({path.stem for path in paths}) == len(paths)
    assert_same_as_one_by_one(paths)


def test_the_file_sets_hold_the_cases_they_name(tmp_path):
    """The sets above do reach the paths they are meant to: quarantined rows of every kind, every format."""
    result = read_annotations(everything(tmp_path))
    reasons = set(result.quarantine["reason"])
    assert {"malformed_json", "duplicate_key", "bad_encoding", "bad_vote", "wrong_type", "missing_field"} <= reasons
    assert {"bad_value"} <= reasons  # an infinite strength, a conversation not ending with the answer
    assert set(result.batches["format"]) == {"votes", "standard_pairs", "conversational_pairs"}
    assert "vendor-x" in set(result.votes["batch"])


def test_rewardbench2_files_read_together_with_others_give_the_tables_of_each_alone(tmp_path):
    rows = [
        {"id": "1", "prompt": "Write", "subset": "Focus", "chosen": ["good"], "rejected": ["bad", "worse"]},
        {"id": "2", "prompt": "Again", "subset": "Focus", "chosen": [], "rejected": ["bad"]},
    ]
    paths = [
        write_jsonl(tmp_path / "rb2_a.jsonl", rows),
        *alike_files(tmp_path, 3),
        write_jsonl(tmp_path / "rb2_b.jsonl", rows[:1]),
        write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "No."}]),
    ]
    assert_same_as_one_by_one(paths, rows_to_pairs=rewardbench2_pairs)


def _not_a_table(folder: Path) -> Path:
    return write_jsonl(folder / "not_a_table.jsonl", [{"colour": "red"}])


def _empty(folder: Path) -> Path:
    path = folder / "empty.jsonl"
    path.write_text("\n")
    return path


@pytest.mark.parametrize(
    "first, second",
    [(_not_a_table, _empty), (_empty, _not_a_table)],
    ids=["not-a-table-before-an-empty-file", "empty-file-before-not-a-table"],
)
def test_the_first_file_that_fails_whole_is_the_one_named(tmp_path, first, second):
    """Among alike files, the first (in reading order) that can't be read at all stops the read."""
    good = alike_files(tmp_path, 3)
    failing = first(tmp_path)
    paths = [good[0], failing, good[1], second(tmp_path), good[2]]
    with pytest.raises(AnnotationFileError) as error:
        read_annotations(paths)
    assert error.value.path == str(failing)
