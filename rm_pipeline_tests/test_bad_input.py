"""Bad-input matrix: every kind of bad annotation file, one row each, and what must come of it.

A row is (case name, file name, file bytes, expected outcome): either the quarantined rows as
(line, reason, field[, text in the detail]) with the number of votes kept, or a whole-file error
(text of the message). To cover a new kind of bad input, add a row to CASES.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.annotations import VOTE_COLUMNS, read_annotations
from rm_pipeline.lib.gates import raw_annotations_gate
from rm_pipeline.lib.table_files import MAX_JSON_DEPTH, QUARANTINE_COLUMNS, AnnotationFileError, json_depth_exceeds
from rm_pipeline_tests.test_annotations import vote

BOM = b"\xef\xbb\xbf"
DEEP = "[" * 10_000 + "]" * 10_000  # 10,000 levels: segfaulted pyarrow, RecursionError in json


def jsonl(*rows) -> bytes:
    """dicts become JSON lines; str entries are the line itself."""
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode("utf-8")


def json_list(*elements) -> bytes:
    """dicts become JSON objects; str entries are the element's text itself."""
    return ("[" + ",\n".join(e if isinstance(e, str) else json.dumps(e) for e in elements) + "]").encode("utf-8")


def csv_text(*rows: dict, header: list | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = header or list(rows[0])
    writer.writerow(header)
    writer.writerows([row[name] for name in header] if isinstance(row, dict) else row for row in rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


def parquet(*rows: dict) -> bytes:
    out = io.BytesIO()
    pd.DataFrame(list(rows)).to_parquet(out)
    return out.getvalue()


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def chat_pair(chosen: list, rejected: list) -> dict:
    return {"chosen": chosen, "rejected": rejected}


HELLO = [msg("user", "Hi"), msg("assistant", "Hello!")]
RUDE = [msg("user", "Hi"), msg("assistant", "Go away.")]


@dataclass(frozen=True)
class Case:
    name: str
    file: str
    content: bytes
    quarantined: tuple = ()  # (line, reason, field) or (line, reason, field, text in the detail)
    kept: int = 0
    error: str | None = None  # the whole file refused: text of the error


CASES = [
    # nesting depth is bounded before any JSON parser sees the row
    Case(
        "jsonl_deeply_nested_line",
        "deep.jsonl",
        jsonl(vote(), '{"item_id": "i2", "x": ' + DEEP + "}", vote(item_id="i3")),
        ((2, "malformed_json", "", f"nested deeper than {MAX_JSON_DEPTH} levels"),),
        kept=2,
    ),
    Case(
        "jsonl_deeply_nested_bare_list",
        "deep_list.jsonl",
        jsonl(vote(), DEEP, vote(item_id="i3")),
        ((2, "malformed_json", "", "nested deeper"),),
        kept=2,
    ),
    Case(
        "json_list_deeply_nested_element",
        "deep_element.json",
        json_list(vote(), '{"item_id": "i2", "x": ' + DEEP + "}", vote(item_id="i3")),
        ((2, "malformed_json", "", "nested deeper"),),
        kept=2,
    ),
    Case(
        "jsonl_nesting_at_the_limit_is_read",
        "limit.jsonl",
        jsonl(
            vote(),
            vote(item_id="i2", extra="[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)),
            '{"item_id": "i3", "x": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}",
        ),
        ((3, "missing_field", "annotator_id"),),
        kept=2,
    ),
    # strength must be a finite number
    Case(
        "jsonl_strength_infinity",
        "infinity.jsonl",
        jsonl(vote(), vote(item_id="i2", strength=float("inf"))),
        ((2, "bad_value", "strength", "finite"),),
        kept=1,
    ),
    Case(
        "jsonl_strength_1e400",
        "huge.jsonl",
        jsonl(
            vote(strength=1),
            '{"item_id": "i2", "prompt": "p", "response_a": '
            '"x", "response_b": "y", "annotator_id": "a", "vote": "a", '
            '"strength": 1e400}',
        ),
        ((2, "bad_value", "strength"),),
        kept=1,
    ),
    Case(
        "csv_strength_inf",
        "inf.csv",
        csv_text(vote(strength="1"), vote(item_id="i2", strength="inf")),
        ((3, "bad_value", "strength"),),
        kept=1,
    ),
    Case(
        "parquet_strength_inf",
        "inf_parquet.parquet",
        parquet(vote(strength=1.0), vote(item_id="i2", strength=np.inf)),
        ((2, "bad_value", "strength"),),
        kept=1,
    ),
    Case(
        "trl_margin_1e400",
        "margin.jsonl",
        jsonl(
            {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 1},
            '{"prompt": "3+3?", "chosen": "6", "rejected": "7", "margin": 1e400}',
        ),
        ((2, "bad_value", "margin"),),
        kept=1,
    ),
    # one encoding rule for every format: a BOM is accepted, a bad row is quarantined with its line
    Case("jsonl_bom", "bom.jsonl", BOM + jsonl(vote(), vote(item_id="i2")), kept=2),
    Case(
        "jsonl_bom_line_by_line",
        "bom_slow.jsonl",
        BOM + jsonl(vote(), "{broken", vote(item_id="i3")),
        ((2, "malformed_json", ""),),
        kept=2,
    ),
    Case("json_list_bom", "bom_list.json", BOM + json_list(vote(), vote(item_id="i2")), kept=2),
    Case("csv_bom", "bom_csv.csv", BOM + csv_text(vote(), vote(item_id="i2")), kept=2),
    Case(
        "json_list_invalid_utf8",
        "latin1.json",
        json_list(vote(), vote(item_id="i2", prompt="PLACEHOLDER"), vote(item_id="i3")).replace(
            b"PLACEHOLDER", b"caf\xe9"
        ),
        ((2, "bad_encoding", "prompt"),),
        kept=2,
    ),
    Case(
        "csv_nul_in_first_4kb",
        "nul.csv",
        csv_text(vote(), vote(item_id="i2", response_a="Hi\x00!")),
        ((3, "bad_encoding", "response_a", "NUL"),),
        kept=1,
    ),
    Case(
        "csv_nul_after_4kb",
        "nul_late.csv",
        csv_text(*[vote(item_id=f"i{n}", prompt="x" * 100) for n in range(60)], vote(item_id="nul", response_b="\x00")),
        ((62, "bad_encoding", "response_b"),),
        kept=60,
    ),
    Case(
        "jsonl_escaped_nul",
        "nul_escaped.jsonl",
        jsonl(vote(), vote(item_id="i2", response_b="Go\x00 away.")),
        ((2, "bad_encoding", "response_b", "NUL"),),
        kept=1,
    ),
    Case(
        "jsonl_escaped_nul_line_by_line",
        "nul_slow.jsonl",
        jsonl(vote(), "{broken", vote(item_id="i3", prompt="\x00")),
        ((2, "malformed_json", ""), (3, "bad_encoding", "prompt")),
        kept=1,
    ),
    Case(
        "json_list_nul",
        "nul_list.json",
        json_list(vote(), vote(item_id="i2", domain="\x00")),
        ((2, "bad_encoding", "domain"),),
        kept=1,
    ),
    Case(
        "parquet_nul",
        "nul_parquet.parquet",
        parquet(vote(), vote(item_id="i2", response_a="\x00")),
        ((2, "bad_encoding", "response_a"),),
        kept=1,
    ),
    Case(
        "csv_ragged_row_too_long",
        "long_row.csv",
        csv_text(vote(), [*vote(item_id="i2").values(), "extra"], vote(item_id="i3")),
        ((3, "malformed_csv", "", "8 fields"),),
        kept=2,
    ),
    Case(
        "csv_ragged_row_too_short",
        "short_row.csv",
        csv_text(vote(), ["i2", "p1"], vote(item_id="i3")),
        ((3, "malformed_csv", ""),),
        kept=2,
    ),
    # CSV lines are physical lines: LLM answers hold newlines
    Case(
        "csv_line_after_multiline_answer",
        "multiline.csv",
        csv_text(vote(response_a="line\n" * 10), vote(item_id="i2", vote="maybe"), vote(item_id="i3", vote="no")),
        ((13, "bad_vote", "vote"), (14, "bad_vote", "vote")),
        kept=1,
    ),
    Case(
        "csv_blank_line_counts",
        "blank.csv",
        csv_text(vote()) + b"\n" + csv_text(vote(item_id="i2", vote="?")).split(b"\n", 1)[1],
        ((4, "bad_vote", "vote"),),
        kept=1,
    ),
    # conversations: known roles only, and the compared sides end with the assistant's answer
    Case(
        "trl_chosen_without_assistant_turn",
        "no_assistant.jsonl",
        jsonl(chat_pair(HELLO, RUDE), chat_pair([msg("user", "Hi"), msg("user", "Hello?")], RUDE)),
        ((2, "bad_value", "chosen", "assistant"),),
        kept=1,
    ),
    Case(
        "trl_unknown_role",
        "robot.jsonl",
        jsonl(chat_pair(HELLO, [msg("user", "Hi"), msg("robot", "Beep.")]), chat_pair(HELLO, RUDE)),
        ((1, "bad_value", "rejected", "robot"),),
        kept=1,
    ),
    Case(
        "votes_prompt_with_unknown_role",
        "robot_prompt.jsonl",
        jsonl(vote(prompt=[msg("user", "Hi")]), vote(item_id="i2", prompt=[msg("wizard", "Hi")])),
        ((2, "bad_value", "prompt", "wizard"),),
        kept=1,
    ),
    Case(
        "trl_tool_and_system_roles_are_known",
        "tools.jsonl",
        jsonl(
            {
                "prompt": [msg("system", "Be brief."), msg("user", "Time?"), msg("tool", "12:00")],
                "chosen": [msg("assistant", "Noon.")],
                "rejected": [msg("assistant", "No idea.")],
            }
        ),
        kept=1,
    ),
    # whole files that are not tables still name themselves
    Case("csv_duplicate_header", "dup.csv", b"item_id,item_id,prompt\n1,2,3\n", error="duplicate column"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(tmp_path, case):
    path = tmp_path / case.file
    path.write_bytes(case.content)
    if case.error:
        with pytest.raises(AnnotationFileError, match=case.error) as raised:
            read_annotations([path])
        assert raised.value.path == str(path)
        return
    result = read_annotations([path])
    quarantine = result.quarantine.sort_values("line", kind="stable")
    assert [tuple(row[:3]) for row in case.quarantined] == list(
        quarantine[["line", "reason", "field"]].itertuples(index=False, name=None)
    ), quarantine
    for row, detail in zip(case.quarantined, quarantine["detail"]):
        if len(row) > 3:
            assert row[3] in detail
    assert len(result.votes) == case.kept
    assert (result.quarantine["file"] == str(path)).all()
    for column in ("prompt", "response_a", "response_b", "context_a", "context_b"):  # NULs never reach training
        assert not result.votes[column].dropna().str.contains("\x00", regex=False).any()
    assert np.isfinite(result.votes["strength"].dropna()).all()


def test_counts_close_over_the_whole_matrix(tmp_path):
    """All readable matrix files in one ingestion: per batch, rows read = kept + quarantined."""
    stems = [case.file.rsplit(".", 1)[0] for case in CASES]
    assert len(set(stems)) == len(stems), "each case its own batch name (the file name without suffix)"
    paths = []
    for case in CASES:
        if not case.error:
            paths.append(tmp_path / case.file)
            paths[-1].write_bytes(case.content)
    result = read_annotations(paths)
    batches = result.batches.set_index("file")
    assert (batches["rows_read"] == batches["kept"] + batches["quarantined"]).all()
    assert result.rows_read == len(result.votes) + len(result.quarantine)
    for case, path in zip((c for c in CASES if not c.error), paths):
        assert batches.loc[str(path), "kept"] == case.kept, case.name
        assert batches.loc[str(path), "quarantined"] == len(case.quarantined), case.name
    assert list(result.votes.columns) == VOTE_COLUMNS and list(result.quarantine.columns) == QUARANTINE_COLUMNS


@pytest.mark.parametrize(
    "text, deep",
    [
        ("{}", False),
        ("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, False),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), True),
        (json.dumps({"text": "[" * 500}), False),  # brackets inside a string are text, not nesting
        (json.dumps({"text": 'a \\" quote then [[[' * 100}), False),
        (b'{"a": ' + b"{" * 100, True),  # unclosed: still too deep to hand to a parser
    ],
)
def test_json_depth_exceeds(text, deep):
    assert json_depth_exceeds(text, MAX_JSON_DEPTH) is deep


def test_raw_annotations_gate_requires_finite_strength():
    votes = pd.DataFrame([{**vote(), "strength": np.inf}], columns=VOTE_COLUMNS)
    for column in ("prompt_id", "batch", "file"):
        votes[column] = "x"
    empty = pd.DataFrame(columns=QUARANTINE_COLUMNS)
    assert not raw_annotations_gate(votes, empty, 0.2).success
    assert raw_annotations_gate(votes.assign(strength=2.0), empty, 0.2).success
