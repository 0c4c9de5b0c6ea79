"""Ingestion: every row of every batch ends up a vote or a quarantined row naming file, line and reason."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.annotations import VOTE_COLUMNS, read_annotations
from rm_pipeline.lib.batch_folder import batch_files, list_batch_files
from rm_pipeline.lib.table_files import QUARANTINE_COLUMNS, AnnotationFileError, read_batch_bytes

BUNDLED = Path(__file__).resolve().parents[1] / "rm_pipeline" / "data" / "annotations"


def vote(**overrides) -> dict:
    row = {
        "item_id": "i1",
        "prompt_id": "p1",
        "prompt": "Say hi.",
        "response_a": "Hi!",
        "response_b": "Go away.",
        "annotator_id": "ann1",
        "vote": "a",
    }
    row.update(overrides)
    return row


def write_jsonl(path: Path, rows: list) -> Path:
    """dicts become JSON lines; str and bytes entries are written as the line itself."""
    lines = [
        row if isinstance(row, bytes) else (row if isinstance(row, str) else json.dumps(row)).encode("utf-8")
        for row in rows
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def ingest(*paths: Path):
    result = read_annotations(list(paths))
    assert_conserved(result)
    return result


def assert_conserved(result) -> None:
    """Nothing dropped: per file and in total, rows read = votes kept + rows quarantined."""
    assert result.rows_read == len(result.votes) + len(result.quarantine)
    for batch in result.batches.itertuples():
        assert batch.rows_read == batch.kept + batch.quarantined, batch
        assert batch.kept == int((result.votes["file"] == batch.file).sum())
        assert batch.quarantined == int((result.quarantine["file"] == batch.file).sum())
    assert list(result.votes.columns) == VOTE_COLUMNS
    assert list(result.quarantine.columns) == QUARANTINE_COLUMNS


def only_quarantined(result) -> dict:
    assert len(result.quarantine) == 1, result.quarantine
    return result.quarantine.iloc[0].to_dict()


# ---------------------------------------------------------------- bad rows


def test_malformed_json_line_is_quarantined_with_its_line_number(tmp_path):
    path = write_jsonl(
        tmp_path / "batch.jsonl", [vote(item_id="i1"), "", '{"item_id": "i2", "vote": ', vote(item_id="i3")]
    )
    result = ingest(path)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["line"], bad["file"]) == ("malformed_json", 3, str(path))  # blank line 2 still counts
    assert bad["raw"] == '{"item_id": "i2", "vote": '
    assert sorted(result.votes["source_item_id"]) == ["i1", "i3"]
    assert result.votes.set_index("source_item_id")["line"].to_dict() == {"i1": 1, "i3": 4}
    assert result.rows_read == 3


def test_missing_required_fields_are_named(tmp_path):
    no_annotator = vote(item_id="i2")
    del no_annotator["annotator_id"]
    path = write_jsonl(
        tmp_path / "batch.jsonl", [vote(), no_annotator, vote(item_id=""), vote(item_id="i4", vote=None)]
    )
    result = ingest(path)
    quarantine = result.quarantine.set_index("line")
    assert quarantine.loc[2, ["reason", "field"]].tolist() == ["missing_field", "annotator_id"]
    assert quarantine.loc[3, ["reason", "field"]].tolist() == ["missing_field", "item_id"]
    assert quarantine.loc[4, ["reason", "field"]].tolist() == ["missing_field", "vote"]
    assert result.votes["line"].tolist() == [1]


@pytest.mark.parametrize("label, expected", [("A", "a"), (" b ", "b"), ("TIE", "tie"), ("Abstain", "abstain")])
def test_vote_labels_are_case_insensitive(tmp_path, label, expected):
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", [vote(vote=label)]))
    assert result.quarantine.empty
    assert result.votes["vote"].tolist() == [expected]


def test_unknown_vote_label_is_a_bad_vote(tmp_path):
    path = write_jsonl(tmp_path / "batch.jsonl", [vote(vote="A"), vote(item_id="i2", vote="maybe")])
    result = ingest(path)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["field"], bad["line"]) == ("bad_vote", "vote", 2)
    assert json.loads(bad["raw"])["vote"] == "maybe"  # the row as read, ready to repair
    assert result.votes["vote"].tolist() == ["a"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"response_a": 42}, "response_a"),
        ({"response_a": {"text": "Hi!"}}, "response_a"),
        ({"response_b": ["Hi!"]}, "response_b"),
        ({"strength": "strong"}, "strength"),
        ({"annotator_id": 1.5}, "annotator_id"),
        ({"prompt": [{"role": "user"}]}, "prompt"),  # a message without content
    ],
)
def test_wrong_type_names_the_field(tmp_path, overrides, field):
    path = write_jsonl(tmp_path / "batch.jsonl", [vote(strength=2), vote(item_id="i2", **overrides)])
    result = ingest(path)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["field"], bad["line"]) == ("wrong_type", field, 2)
    assert field in bad["detail"]
    assert result.votes["source_item_id"].tolist() == ["i1"]


def test_negative_strength_is_a_bad_value_and_numeric_text_is_a_number(tmp_path):
    path = tmp_path / "batch.csv"
    path.write_text(
        "item_id,prompt,response_a,response_b,annotator_id,vote,strength\ni1,p,x,y,ann1,a,2\ni2,p,x,y,ann1,b,-1\n",
        encoding="utf-8",
    )
    result = ingest(path)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["field"], bad["line"]) == ("bad_value", "strength", 3)
    assert result.votes["strength"].tolist() == [2.0]


def test_same_annotator_voting_twice_keeps_the_first_vote(tmp_path):
    path = write_jsonl(tmp_path / "batch.jsonl", [vote(vote="a"), vote(annotator_id="ann2", vote="b"), vote(vote="b")])
    result = ingest(path)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["field"], bad["line"]) == ("duplicate_vote", "annotator_id", 3)
    assert "ann1" in bad["detail"] and "i1" in bad["detail"]
    assert result.votes.set_index("annotator_id")["vote"].to_dict() == {"ann1": "a", "ann2": "b"}


def test_duplicate_vote_is_found_across_batches_of_one_source(tmp_path):
    first = write_jsonl(tmp_path / "monday.jsonl", [vote(source="vendor")])
    second = write_jsonl(tmp_path / "tuesday.jsonl", [vote(vote="b", source="vendor")])
    result = ingest(first, second)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["file"], bad["line"]) == ("duplicate_vote", str(second), 1)
    assert result.votes["item_id"].tolist() == ["vendor/i1"]


def test_items_of_independent_batches_never_collide(tmp_path):
    """Two vendors numbering their items 1..N: each batch's items are its own, the id as written is kept."""
    first = write_jsonl(tmp_path / "vendor_a.jsonl", [vote(item_id=1), vote(item_id=2, prompt="Count to 3.")])
    second = write_jsonl(
        tmp_path / "vendor_b.jsonl",
        [vote(item_id=1, prompt="Other", vote="b"), vote(item_id=2, response_a="Something else.")],
    )
    result = ingest(first, second)
    assert result.quarantine.empty
    assert result.votes["item_id"].tolist() == ["vendor_a/1", "vendor_a/2", "vendor_b/1", "vendor_b/2"]
    assert result.votes["source_item_id"].tolist() == ["1", "2", "1", "2"]


def test_the_batch_field_scopes_items_spread_over_files(tmp_path):
    first = write_jsonl(tmp_path / "part1.jsonl", [vote(batch="week7")])
    second = write_jsonl(
        tmp_path / "part2.jsonl",
        [vote(batch="week7", annotator_id="ann2", vote="b", response_a="Go away.", response_b="Hi!")],
    )
    votes = ingest(first, second).votes
    assert votes["item_id"].tolist() == ["week7/i1", "week7/i1"]
    assert votes["orientation_flipped"].tolist() == [False, True]  # one item: the second vote is flipped to it


def test_invalid_utf8_jsonl_line_is_a_bad_encoding(tmp_path):
    bad_line = json.dumps(vote(item_id="i2", prompt="PLACEHOLDER")).encode().replace(b"PLACEHOLDER", b"caf\xe9")
    path = write_jsonl(tmp_path / "batch.jsonl", [vote(), bad_line, vote(item_id="i3")])
    result = ingest(path)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["line"], bad["file"]) == ("bad_encoding", 2, str(path))
    assert sorted(result.votes["source_item_id"]) == ["i1", "i3"]
    assert result.votes["prompt"].tolist() == ["Say hi.", "Say hi."]


def test_invalid_utf8_csv_row_is_a_bad_encoding(tmp_path):
    path = tmp_path / "batch.csv"
    path.write_bytes(
        b"item_id,prompt,response_a,response_b,annotator_id,vote,domain\n"
        b"i1,Say hi.,Hi!,Go away.,ann1,a,chat\n"
        b"i2,Say hi.,Hi!,Go away.,ann1,a,caf\xe9\n"
        b"i3,Say hi \xff,Hi!,Go away.,ann1,a,chat\n"
        b"i4,Say hi.,Hi!,Go away.,ann1,b,chat\n"
    )
    result = ingest(path)
    quarantine = result.quarantine.set_index("line")
    assert quarantine["reason"].to_dict() == {3: "bad_encoding", 4: "bad_encoding"}  # header is line 1
    assert quarantine["field"].to_dict() == {3: "domain", 4: "prompt"}
    assert sorted(result.votes["source_item_id"]) == ["i1", "i4"]
    for raw in result.quarantine["raw"]:
        raw.encode("utf-8")  # the quarantine itself stays writable as UTF-8
        assert json.loads(raw)["item_id"] in ("i2", "i3")


def test_escaped_lone_surrogate_in_json_is_a_bad_encoding(tmp_path):
    path = write_jsonl(tmp_path / "batch.jsonl", [vote(), json.dumps(vote(item_id="i2", domain="\udcff"))])
    result = ingest(path)
    bad = only_quarantined(result)
    assert (bad["reason"], bad["field"], bad["line"]) == ("bad_encoding", "domain", 2)
    assert result.votes["source_item_id"].tolist() == ["i1"]


def test_each_bad_line_gets_its_own_reason_and_the_rest_is_kept(tmp_path):
    """Many problems in one file: each line gets its own reason and the rest is kept."""
    no_item = vote()
    del no_item["item_id"]
    rows = [
        vote(item_id="ok1"),
        "not json",
        no_item,
        vote(item_id="bv", vote="maybe"),
        vote(item_id="wt", response_a=7),
        vote(item_id="ok1", vote="b"),
        vote(item_id="ok2"),
    ]
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", rows))
    assert result.quarantine.set_index("line")["reason"].to_dict() == {
        2: "malformed_json",
        3: "missing_field",
        4: "bad_vote",
        5: "wrong_type",
        6: "duplicate_vote",
    }
    assert sorted(result.votes["source_item_id"]) == ["ok1", "ok2"]


# ---------------------------------------------------------------- files that aren't tables


def _random_bytes(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize(
    "name, content",
    [
        ("x.parquet", _random_bytes(700)),
        ("x.parquet", b""),
        ("string.json", b'"just a string"'),
        ("number.json", b"42"),
        ("list_of_numbers.json", b"[1, 2, 3]"),
        ("object.json", b'{"hello": "world"}'),
        ("prose.jsonl", b"hello\nworld\n[1, 2]\n"),
        ("empty.jsonl", b"\n  \n"),
        ("random.jsonl", _random_bytes(900)),
        ("binary.csv", b"\x00\x01\x02" + _random_bytes(300)),
        ("random.csv", _random_bytes(1200)),
        ("empty.csv", b""),
        ("wrong_columns.csv", b"x,y\n1,2\n"),
        ("notes.txt", b"item_id,vote\ni1,a\n"),
    ],
)
def test_a_file_that_is_not_an_annotation_table_names_itself(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    good = write_jsonl(tmp_path / "good.jsonl", [vote()])
    with pytest.raises(AnnotationFileError) as raised:
        read_annotations([good, path])
    assert str(path) in str(raised.value)
    assert raised.value.path == str(path)


def test_unsupported_suffix_passed_explicitly_says_what_is_supported(tmp_path):
    path = tmp_path / "votes.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(AnnotationFileError, match=r"unsupported file type '\.xlsx'.*\.jsonl"):
        read_annotations([path])


def test_missing_file_names_itself(tmp_path):
    path = tmp_path / "gone.jsonl"
    with pytest.raises(AnnotationFileError, match="gone.jsonl"):
        read_annotations([path])


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_random_bytes_never_escape_as_a_bare_exception(tmp_path, suffix):
    for seed in range(25):
        rng = random.Random(seed)
        path = tmp_path / f"r{seed}{suffix}"
        path.write_bytes(rng.randbytes(rng.choice([5, 200, 3000])))
        with pytest.raises(AnnotationFileError) as raised:
            read_annotations([path])
        assert str(path) in str(raised.value)


def test_list_batch_files_sorts_and_skips_non_batches(tmp_path):
    for name in ("b.csv", "a.jsonl", "README.md", ".gitkeep", "c.PARQUET", "d.json"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub.jsonl").mkdir()
    assert [p.name for p in list_batch_files(tmp_path)] == ["a.jsonl", "b.csv", "c.PARQUET", "d.json"]
    with pytest.raises(AnnotationFileError, match="nowhere"):
        list_batch_files(tmp_path / "nowhere")


def test_temporary_names_and_files_being_written_are_left_for_the_next_run(tmp_path):
    for name in ("done.jsonl", ".uploading.jsonl", "upload.jsonl.tmp", "upload.csv.part", "upload.json.partial"):
        write_jsonl(tmp_path / name, [vote()])
    growing = tmp_path / "growing.jsonl"
    growing.write_text("")
    stop = threading.Event()

    def append():
        with growing.open("a") as out:
            while not stop.is_set():
                out.write(json.dumps(vote()) + "\n")
                out.flush()
                time.sleep(0.02)

    writer = threading.Thread(target=append)
    writer.start()
    try:
        ready, busy = batch_files(tmp_path, settle_seconds=0.5)
    finally:
        stop.set()
        writer.join()
    assert [p.name for p in ready] == ["done.jsonl"]  # young too, but unchanged while waited for
    assert [p.name for p in busy] == ["growing.jsonl"]
    assert [p.name for p in list_batch_files(tmp_path, settle_seconds=0)] == ["done.jsonl", "growing.jsonl"]


def test_a_batch_rewritten_while_read_is_read_again_whole(tmp_path):
    path = write_jsonl(tmp_path / "batch.jsonl", [vote()])
    complete = write_jsonl(tmp_path / "complete.jsonl", [vote(), vote(item_id="i2")]).read_bytes()
    rewrites = []

    def rewrite_once(target):
        if not rewrites:
            rewrites.append(target)
            target.write_bytes(complete)

    assert read_batch_bytes(path, while_reading=rewrite_once) == complete


def test_a_batch_that_keeps_changing_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "batch.jsonl", [vote()])

    def append(target):
        with target.open("a") as out:
            out.write(json.dumps(vote(item_id="more")) + "\n")

    with pytest.raises(AnnotationFileError, match="changed while being read") as raised:
        read_batch_bytes(path, while_reading=append)
    assert raised.value.path == str(path)


def test_each_batch_records_the_content_it_was_read_from(tmp_path):
    path = write_jsonl(tmp_path / "batch.jsonl", [vote(), vote(item_id="i2")])
    batch = ingest(path).batches.iloc[0]
    assert batch["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert batch["bytes"] == path.stat().st_size


# ---------------------------------------------------------------- formats and columns


def test_batches_with_different_columns_are_unioned(tmp_path):
    rich = write_jsonl(
        tmp_path / "rich.jsonl",
        [vote(domain="math", strength=2, source="vendor"), vote(item_id="i2", domain="code", strength=1, vote="b")],
    )
    plain = tmp_path / "plain.csv"
    plain.write_text(
        "item_id,prompt,response_a,response_b,annotator_id,vote\ni3,What is 2+2?,4,5,ann2,TIE\n", encoding="utf-8"
    )
    result = ingest(rich, plain)
    votes = result.votes.set_index("source_item_id")
    assert votes.loc["i1", "domain"] == "math" and votes.loc["i2", "domain"] == "code"
    assert votes.loc["i1", "strength"] == 2.0 and votes.loc["i2", "strength"] == 1.0
    assert votes.loc["i3", "domain"] is None and votes.loc["i3", "source"] is None
    assert np.isnan(votes.loc["i3", "strength"])
    assert votes.loc["i3", "vote"] == "tie"
    assert votes["batch"].to_dict() == {"i1": "rich", "i2": "rich", "i3": "plain"}
    batches = result.batches.set_index("batch")
    assert batches["format"].to_dict() == {"rich": "votes", "plain": "votes"}
    assert batches["rows_read"].to_dict() == {"rich": 2, "plain": 1}
    assert "domain" in batches.loc["rich", "columns"] and "domain" not in batches.loc["plain", "columns"]


def test_absent_optional_keys_are_null_not_the_text_nan(tmp_path):
    """JSON records with different key sets: absent values must be None, never the string 'nan'."""
    sparse = vote(item_id="i2", prompt="Another prompt")
    del sparse["prompt_id"]
    rows = [vote(domain="math", source="vendor"), sparse]
    json_list = tmp_path / "listed.json"
    json_list.write_text(json.dumps(rows), encoding="utf-8")
    slow = write_jsonl(tmp_path / "slow.jsonl", [*rows[:1], "{broken", *rows[1:]])  # line-by-line path
    fast = write_jsonl(tmp_path / "fast.jsonl", rows)
    for path in (json_list, slow, fast):
        result = read_annotations([path])
        second = result.votes.set_index("source_item_id").loc["i2"]
        assert second["domain"] is None and second["source"] is None, path
        assert second["prompt_id"].startswith("prompt:"), path  # derived from the prompt, not "nan"
        assert second["batch"] == path.stem


def test_missing_prompt_id_is_derived_from_the_prompt(tmp_path):
    path = write_jsonl(
        tmp_path / "batch.jsonl",
        [
            vote(item_id="i1", prompt_id=None, prompt="Same prompt"),
            vote(item_id="i2", prompt_id="", prompt="Same prompt"),
            vote(item_id="i3", prompt_id=None, prompt="Other prompt"),
        ],
    )
    ids = ingest(path).votes.set_index("source_item_id")["prompt_id"]
    assert ids["i1"] == ids["i2"] != ids["i3"]


@pytest.mark.parametrize("extra_line", [[], ["{not json"]], ids=["arrow", "line_by_line"])
def test_integer_identifiers_become_text(tmp_path, extra_line):
    path = write_jsonl(
        tmp_path / "batch.jsonl",
        [
            vote(item_id=1, annotator_id=7, prompt_id=3),
            vote(item_id=1, annotator_id=7, prompt_id=3, vote="b"),
            vote(item_id=2, annotator_id=8, prompt_id=4),
            *extra_line,
        ],
    )
    result = ingest(path)
    assert result.votes["source_item_id"].tolist() == ["1", "2"]
    assert result.votes["annotator_id"].tolist() == ["7", "8"]
    assert result.votes["prompt_id"].tolist() == ["3", "4"]
    duplicate = result.quarantine[result.quarantine["reason"] == "duplicate_vote"]
    assert duplicate["line"].tolist() == [2] and "annotator 7" in duplicate["detail"].iloc[0]


def test_json_list_rows_are_numbered_by_position(tmp_path):
    path = tmp_path / "batch.json"
    path.write_text(json.dumps([vote(item_id="i1"), vote(item_id="i2", vote="maybe"), vote(item_id="i3")]))
    result = ingest(path)
    assert only_quarantined(result)["line"] == 2
    assert result.votes["line"].tolist() == [1, 3]


def test_parquet_votes_are_read(tmp_path):
    path = tmp_path / "batch.parquet"
    pd.DataFrame([vote(strength=1.0), vote(item_id="i2", vote="B", strength=None)]).to_parquet(path)
    result = ingest(path)
    assert result.quarantine.empty
    assert result.votes["vote"].tolist() == ["a", "b"]
    assert result.votes["line"].tolist() == [1, 2]


# ---------------------------------------------------------------- A/B orientation


def test_swapped_candidates_are_flipped_back_to_the_first_orientation(tmp_path):
    first = vote(annotator_id="ann1", vote="a", context_a="ctx A", context_b="ctx B")
    swapped = vote(
        annotator_id="ann2",
        vote="b",
        response_a=first["response_b"],
        response_b=first["response_a"],
        context_a="ctx B",
        context_b="ctx A",
    )
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", [first, swapped]))
    votes = result.votes.set_index("annotator_id")
    assert votes["orientation_flipped"].to_dict() == {"ann1": False, "ann2": True}
    assert votes.loc["ann2", "vote"] == "a"  # b on the swapped display = a on the first orientation
    assert (votes["response_a"] == first["response_a"]).all() and (votes["response_b"] == first["response_b"]).all()
    assert (votes["context_a"] == "ctx A").all() and (votes["context_b"] == "ctx B").all()


@pytest.mark.parametrize("label", ["tie", "abstain"])
def test_flipping_keeps_a_symmetric_vote(tmp_path, label):
    swapped = vote(annotator_id="ann2", vote=label, response_a="Go away.", response_b="Hi!")
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", [vote(), swapped]))
    flipped = result.votes.set_index("annotator_id").loc["ann2"]
    assert flipped["orientation_flipped"] and flipped["vote"] == label


def test_item_id_reused_for_a_different_comparison_is_inconsistent(tmp_path):
    rows = [
        vote(annotator_id="ann1"),
        vote(annotator_id="ann2", response_b="Something else entirely."),
        vote(annotator_id="ann3", prompt="A different prompt"),
    ]
    result = ingest(write_jsonl(tmp_path / "batch.jsonl", rows))
    quarantine = result.quarantine.set_index("line")
    assert quarantine["reason"].to_dict() == {2: "inconsistent_item", 3: "inconsistent_item"}
    assert quarantine.loc[3, "field"] == "prompt"
    assert "i1" in quarantine.loc[2, "detail"]
    assert result.votes["annotator_id"].tolist() == ["ann1"]


# ---------------------------------------------------------------- TRL preference files


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_trl_standard_pairs_are_single_vote_items(tmp_path):
    path = write_jsonl(
        tmp_path / "trl.jsonl",
        [
            {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
            {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        ],
    )
    result = ingest(path)
    votes = result.votes
    assert result.batches["format"].tolist() == ["standard_pairs"]
    assert votes["vote"].tolist() == ["a", "a"]
    assert votes["response_a"].tolist() == ["Paris.", "4"] and votes["response_b"].tolist() == ["Rome.", "5"]
    assert votes["item_id"].is_unique and votes["annotator_id"].tolist() == ["trl", "trl"]
    assert not votes["conversational"].any()


def test_a_bad_pair_row_names_the_files_own_field(tmp_path):
    path = write_jsonl(
        tmp_path / "trl.jsonl",
        [
            {"prompt": "2+2?", "chosen": "4", "rejected": None, "margin": 1},
            {"prompt": "3+3?", "chosen": 6, "rejected": "7", "margin": "big"},
            {"prompt": "4+4?", "chosen": "8", "rejected": "9", "margin": "x"},
        ],
    )
    quarantine = ingest(path).quarantine.sort_values("line")
    assert quarantine["field"].tolist() == ["rejected", "chosen", "margin"]
    assert quarantine["reason"].tolist() == ["missing_field", "wrong_type", "wrong_type"]


def test_trl_conversational_with_explicit_prompt(tmp_path):
    prompt = [msg("system", "Be brief."), msg("user", "Capital of France?")]
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"prompt": prompt, "chosen": [msg("assistant", "Paris.")], "rejected": [msg("assistant", "Rome.")]}],
    )
    result = ingest(path)
    row = result.votes.iloc[0]
    assert result.batches["format"].tolist() == ["conversational_pairs"]
    assert row["conversational"] and row["vote"] == "a"
    assert json.loads(row["prompt"]) == prompt  # canonical JSON text of the messages
    assert (row["response_a"], row["response_b"]) == ("Paris.", "Rome.")
    assert row["context_a"] is None and row["context_b"] is None


def test_trl_conversational_implicit_prompt_from_parquet(tmp_path):
    path = tmp_path / "chat.parquet"
    pd.DataFrame(
        [
            {
                "chosen": [msg("user", "Hi"), msg("assistant", "Hello!")],
                "rejected": [msg("user", "Hi"), msg("assistant", "Go away.")],
            }
        ]
    ).to_parquet(path)
    result = ingest(path)
    row = result.votes.iloc[0]
    assert row["conversational"] and json.loads(row["prompt"]) == [msg("user", "Hi")]
    assert row["context_a"] == row["context_b"] == row["prompt"]
    assert (row["response_a"], row["response_b"]) == ("Hello!", "Go away.")


# ---------------------------------------------------------------- the bundled real data


@pytest.fixture(scope="module")
def bundled():
    files = list_batch_files(BUNDLED)
    return files, read_annotations(files)


def test_bundled_batches_are_read_completely(bundled):
    files, result = bundled
    assert sorted(p.name for p in files) == [
        "hh_rlhf_harmless_test.jsonl",
        "pandalm_testset_v1.jsonl",
        "tulu1_human_eval.jsonl",
    ]
    assert_conserved(result)
    lines = {str(p): sum(1 for line in p.read_bytes().split(b"\n") if line.strip()) for p in files}
    assert result.batches.set_index("file")["rows_read"].to_dict() == lines
    assert result.rows_read == sum(lines.values())
    assert set(result.votes["vote"]) <= {"a", "b", "tie", "abstain"}
    assert not result.votes.duplicated(["item_id", "annotator_id"]).any()


def test_bundled_quarantine_points_at_the_right_lines(bundled):
    _, result = bundled
    assert len(result.quarantine) > 0  # known source quirks: boolean responses, a null response, repeat votes
    for row in result.quarantine.itertuples():
        source_line = Path(row.file).read_text(encoding="utf-8").split("\n")[row.line - 1]
        item_id = json.loads(source_line)["item_id"]
        assert row.raw.startswith('{"item_id": ' + json.dumps(item_id, ensure_ascii=False)), row  # raw may be cut short


def test_bundled_tulu_votes_shown_in_both_orders_are_flipped(bundled):
    _, result = bundled
    tulu = result.votes[result.votes["batch"] == "tulu1_human_eval"]
    flipped = tulu[tulu["orientation_flipped"]]
    assert len(flipped) > 0
    assert not result.votes.loc[result.votes["batch"] != "tulu1_human_eval", "orientation_flipped"].any()
    # after flipping, every vote on an item shows the same candidates in the same order
    assert (tulu.groupby("item_id")[["response_a", "response_b"]].nunique() == 1).all().all()


def test_bundled_hh_is_conversational_with_per_side_contexts(bundled):
    _, result = bundled
    hh = result.votes[result.votes["batch"] == "hh_rlhf_harmless_test"]
    assert hh["conversational"].all() and hh["context_a"].notna().all() and hh["context_b"].notna().all()
    assert json.loads(hh["prompt"].iloc[0])[0]["role"] == "user"
