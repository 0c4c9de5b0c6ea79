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
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rm_pipeline.lib.annotations import VOTE_COLUMNS, read_annotations
from rm_pipeline.lib.gates import raw_annotations_gate
from rm_pipeline.lib.table_files import (
    MAX_JSON_DEPTH,
    QUARANTINE_COLUMNS,
    AnnotationFileError,
    json_depth_exceeds,
    read_records,
)
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


def arrow_parquet(**columns) -> bytes:
    """Columns written by Arrow itself: a NaN stays a NaN (pandas writes it as a null)."""
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    return out.getvalue()


def csv_lines(*lines: str) -> bytes:
    """A CSV file written line by line, as a hand edit leaves it (the header is vote()'s fields)."""
    return "\n".join([",".join(vote()), *lines, ""]).encode("utf-8")


VOTE_LINE = ",".join(vote().values())  # i1,p1,Say hi.,Hi!,Go away.,ann1,a: 7 fields
STRAY_QUOTE_LINE = VOTE_LINE.replace("i1,p1,", 'i2,p1,"')  # a quote opens the prompt and never closes it


def vote_line(item_id: str, prompt: str = "Say hi.") -> str:
    return VOTE_LINE.replace("i1", item_id, 1).replace("Say hi.", prompt)


def vote_columns(count: int, **columns) -> dict:
    """vote()'s fields as columns of `count` rows, item ids i1..i<count>."""
    rows = {name: [value] * count for name, value in vote().items()}
    return {**rows, "item_id": [f"i{n}" for n in range(1, count + 1)], **columns}


REPEATED_VOTE = (
    '{"item_id": "ITEM", "prompt": "p", "response_a": "x", "response_b": "y", "annotator_id": "a", '
    '"vote": "a", "vote": "b"}'
)


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
    # one number rule for every format: NaN and infinities are bad_value, decimals are numbers
    Case(
        "jsonl_strength_nan",
        "nan.jsonl",
        jsonl(vote(strength=1), vote(item_id="i2", strength=float("nan")), vote(item_id="i3")),
        ((2, "bad_value", "strength", "finite"),),
        kept=2,
    ),
    Case(
        "jsonl_strength_nan_line_by_line",
        "nan_slow.jsonl",
        jsonl(vote(), "{broken", vote(item_id="i3", strength=float("nan")), vote(item_id="i4", strength=None)),
        ((2, "malformed_json", ""), (3, "bad_value", "strength", "finite")),
        kept=2,
    ),
    Case(
        "jsonl_strength_integer_too_large_for_a_float",
        "huge_int.jsonl",
        jsonl(vote(strength=1), json.dumps(vote(item_id="i2")).replace("}", ', "strength": 1' + "0" * 400 + "}")),
        ((2, "bad_value", "strength", "finite"),),
        kept=1,
    ),
    Case(
        "json_list_strength_nan",
        "nan_list.json",
        json_list(vote(strength=0.5), vote(item_id="i2", strength=float("nan"))),
        ((2, "bad_value", "strength", "finite"),),
        kept=1,
    ),
    Case(
        "csv_strength_nan_and_infinity",
        "nan_csv.csv",
        csv_text(
            vote(strength="1"),
            vote(item_id="i2", strength="nan"),
            vote(item_id="i3", strength="NaN"),
            vote(item_id="i4", strength="-Infinity"),
            vote(item_id="i5", strength="high"),
            vote(item_id="i6", strength=" 1.50 "),
        ),
        (
            (3, "bad_value", "strength"),
            (4, "bad_value", "strength"),
            (5, "bad_value", "strength"),
            (6, "wrong_type", "strength"),
        ),
        kept=2,
    ),
    Case(
        "parquet_strength_nan_written_by_arrow",
        "nan_parquet.parquet",
        arrow_parquet(**vote_columns(3, strength=[1.0, float("nan"), None])),
        ((2, "bad_value", "strength", "finite"),),
        kept=2,
    ),
    Case(
        "parquet_strength_decimal128",
        "decimal.parquet",
        arrow_parquet(**vote_columns(2, strength=pa.array([Decimal("1.50"), None], pa.decimal128(5, 2)))),
        kept=2,
    ),
    Case(
        "trl_margin_nan",
        "margin_nan.jsonl",
        jsonl(
            {"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": 1},
            {"prompt": "3+3?", "chosen": "6", "rejected": "7", "margin": float("nan")},
        ),
        ((2, "bad_value", "margin"),),
        kept=1,
    ),
    # a key given twice in one JSON object: which value counts is anyone's guess
    Case(
        "jsonl_repeated_key",
        "repeated.jsonl",
        jsonl(vote(), REPEATED_VOTE.replace("ITEM", "i2"), vote(item_id="i3")),
        ((2, "duplicate_key", "vote", '"vote"'),),
        kept=2,
    ),
    Case(
        "jsonl_repeated_key_line_by_line",
        "repeated_slow.jsonl",
        jsonl(vote(), "{broken", REPEATED_VOTE.replace("ITEM", "i3")),
        ((2, "malformed_json", ""), (3, "duplicate_key", "vote")),
        kept=1,
    ),
    Case(
        "jsonl_repeated_key_with_an_escape",
        "repeated_escaped.jsonl",
        jsonl(vote(), REPEATED_VOTE.replace("ITEM", "i2").replace('"vote": "b"', '"vot\\u0065": "b"')),
        ((2, "duplicate_key", "vote"),),
        kept=1,
    ),
    Case(
        "jsonl_repeated_key_in_a_message",
        "repeated_role.jsonl",
        jsonl(
            vote(),
            json.dumps(vote(item_id="i2", prompt="PROMPT")).replace(
                '"PROMPT"', '[{"role": "user", "role": "assistant", "content": "Hi"}]'
            ),
        ),
        ((2, "duplicate_key", "prompt", '"role"'),),
        kept=1,
    ),
    Case(
        "jsonl_key_named_in_a_value_is_no_repeat",
        "key_in_value.jsonl",
        jsonl(vote(prompt='Reply with {"vote": "a", "vote": "b"}'), vote(item_id="i2", prompt='say "vote": now')),
        kept=2,
    ),
    Case(
        "json_list_repeated_key",
        "repeated_list.json",
        json_list(vote(), REPEATED_VOTE.replace("ITEM", "i2"), vote(item_id="i3")),
        ((2, "duplicate_key", "vote", '"vote"'),),
        kept=2,
    ),
    Case(
        "json_list_repeated_key_element_by_element",
        "repeated_deep_list.json",
        json_list(vote(), '{"item_id": "i2", "x": ' + DEEP + "}", REPEATED_VOTE.replace("ITEM", "i3")),
        ((2, "malformed_json", "", "nested deeper"), (3, "duplicate_key", "vote")),
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
    # a stray quote must not swallow the rows after it: each is quarantined on its own line
    Case(
        "csv_unbalanced_quote_to_end_of_file",
        "stray_quote_eof.csv",
        csv_lines(VOTE_LINE, STRAY_QUOTE_LINE, vote_line("i3"), vote_line("i4")),
        (
            (3, "malformed_csv", "", "unbalanced quote on line 3"),
            (4, "malformed_csv", "", "unbalanced quote on line 3"),
            (5, "malformed_csv", "", "unbalanced quote on line 3"),
        ),
        kept=1,
    ),
    Case(
        "csv_unbalanced_quote_closed_by_a_later_quoted_field",
        "stray_quote_kept.csv",  # was kept as one vote with a three-line prompt
        csv_lines(VOTE_LINE, STRAY_QUOTE_LINE, vote_line("i3"), vote_line("i4", '"Say hi."'), vote_line("i5")),
        ((3, "malformed_csv", "", "line 3"), (4, "malformed_csv", "", "line 3"), (5, "malformed_csv", "", "line 3")),
        kept=2,
    ),
    Case(
        "csv_unbalanced_quote_closed_at_a_field_end_by_chance",
        "stray_quote_chance.csv",
        csv_lines(VOTE_LINE, STRAY_QUOTE_LINE, vote_line("i3"), vote_line("i4", 'A 12" pizza.'), vote_line("i5")),
        ((3, "malformed_csv", "", "line 3"), (4, "malformed_csv", "", "line 3"), (5, "malformed_csv", "", "line 3")),
        kept=2,
    ),
    Case(
        "csv_unbalanced_quote_crlf_lines",
        "stray_quote_crlf.csv",
        csv_lines(STRAY_QUOTE_LINE, vote_line("i3"), vote_line("i4", '"Say hi."')).replace(b"\n", b"\r\n"),
        ((2, "malformed_csv", "", "line 2"), (3, "malformed_csv", "", "line 2"), (4, "malformed_csv", "", "line 2")),
    ),
    Case(
        "csv_multiline_quoted_prompt_is_kept",
        "multiline_prompt.csv",
        csv_text(
            vote(prompt="First, a line.\nSecond, third, fourth, fifth, sixth, seventh.\n\nLast."),
            vote(item_id="i2", prompt="Sum these rows:\n1,2,3,4,5,6,7\n8,9,10,11,12,13,14"),
            vote(item_id="i3"),
        ),
        kept=3,
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


def test_a_one_column_csv_keeps_its_multiline_cells(tmp_path):
    """Every line of a one-column table reads as a row: a multi-line cell there is no sign of a stray quote."""
    path = tmp_path / "notes.csv"
    path.write_bytes(b'note\n"first line\nsecond line"\nthird\n')
    records, quarantine, _ = read_records(path)
    assert records["note"].tolist() == ["first line\nsecond line", "third"] and quarantine.empty
