"""Annotation batches as one table of votes: the vote schema, its field checks and item-level consistency.

The files are read by ``table_files`` (nothing dropped: a bad row is quarantined with file, line, field,
reason and raw text); this module maps their rows to canonical votes. Knows nothing of Dagster.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.row_checks import numbers
from rm_pipeline.lib.table_files import (
    QUARANTINE_COLUMNS,
    AnnotationFileError,
    empty_quarantine,
    is_string_array,
    only_text,
    read_records,
    rows_as_json,
)

VOTE_LABELS = ("a", "b", "tie", "abstain")
IDENTIFIER_FIELDS = ("item_id", "annotator_id")
NORMALISED_FIELDS = ("item_id", "annotator_id", "prompt_id", "source", "batch")  # see identifier
TEXT_FIELDS = ("response_a", "response_b")
OPTIONAL_TEXT_FIELDS = ("domain", "source", "batch")
CONTEXT_FIELDS = ("context_a", "context_b")
VOTE_COLUMNS = [
    "item_id",
    "source_item_id",
    "prompt_id",
    "prompt",
    "conversational",
    "response_a",
    "response_b",
    "context_a",
    "context_b",
    "annotator_id",
    "vote",
    "strength",
    "domain",
    "source",
    "batch",
    "file",
    "line",
    "orientation_flipped",
]
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
GROUP_ROWS = 10_000  # files are checked together up to this many rows: many small batches, one pass


@dataclass
class IngestResult:
    votes: pd.DataFrame
    quarantine: pd.DataFrame
    batches: pd.DataFrame  # one row per file: batch, file, format, rows_read, sha256, bytes, columns, kept, quarantined

    @property
    def rows_read(self) -> int:
        return int(self.batches["rows_read"].sum()) if len(self.batches) else 0


def read_annotations(paths: list[Path | str], rows_to_pairs: Callable | None = None) -> IngestResult:
    """Read batch files (JSONL, JSON list, CSV, Parquet; canonical votes or TRL pairs) into votes.

    ``rows_to_pairs(records, path)``: for a format whose rows hold several pairs (evaluation's RewardBench 2
    files), the pair records, each on its row's line, the rows it refused and the format's name; None for a
    file it does not read. ``rows_read`` still counts the file's rows.

    Each file is read and checked on its own, in order (the first that can't be read stops all); the
    row checks run once per group of small vote files with the same columns and column types (many small
    batches: one pass, not one per file), which gives each row what reading its file alone gives it."""
    paths = [Path(path) for path in paths]
    files, checked, formats, pending, pending_rows = [], [], {}, {}, Counter()

    def check(group: list[int]) -> None:
        votes, rejected, fmt = _group_votes([files[position] for position in group], group)
        checked.append((votes, rejected))
        for position in group:  # its rows are votes or quarantined rows now: the records can go
            formats[position], files[position].records = fmt, None

    for position, (path, batch) in enumerate(zip(paths, batch_names(paths))):
        files.append(_read_batch(path, batch, rows_to_pairs))
        key = _group_key(files[-1])
        pending.setdefault(key, []).append(position)
        pending_rows[key] += len(files[-1].records)
        if key is None or pending_rows[key] >= GROUP_ROWS:  # a large or a paired file at once, alone
            check(pending.pop(key))
            del pending_rows[key]
    for group in pending.values():
        check(group)
    votes = _in_file_order([votes for votes, _ in checked]) if files else _empty_votes()
    quarantine_parts = _read_quarantines(files) + [rejected for _, rejected in checked]
    quarantine = _in_file_order(quarantine_parts) if files else empty_quarantine()
    votes, inconsistent = _normalise_orientation(votes)
    votes, repeated = _drop_repeated_votes(votes)
    quarantine = pd.concat([quarantine, inconsistent, repeated], ignore_index=True)[QUARANTINE_COLUMNS]
    quarantine["line"] = quarantine["line"].astype("int64")
    batches = [
        {
            "batch": file.batch,
            "file": str(file.path),
            "format": formats[position],
            "rows_read": file.rows_read,
            "sha256": file.sha256,
            "bytes": file.bytes,
            "columns": file.columns,
        }
        for position, file in enumerate(files)
    ]
    summary = pd.DataFrame(batches, columns=["batch", "file", "format", "rows_read", "sha256", "bytes", "columns"])
    kept = votes.groupby("file").size()
    held = quarantine.groupby("file").size()
    summary["kept"] = summary["file"].map(kept).fillna(0).astype("int64")
    summary["quarantined"] = summary["file"].map(held).fillna(0).astype("int64")
    return IngestResult(votes.reset_index(drop=True), quarantine.reset_index(drop=True), summary)


@dataclass
class _Batch:
    """One file as read: its records (None once checked), the rows that aren't records (or were refused
    as pairs), and what the batches table says of it."""

    path: Path
    batch: str
    records: pd.DataFrame | None
    quarantine: pd.DataFrame
    rows_read: int
    row_format: str | None  # the format rows_to_pairs read it as, if it did
    sha256: str
    bytes: int
    columns: str


def _read_batch(path: Path, batch: str, rows_to_pairs: Callable | None) -> _Batch:
    records, quarantine, data = read_records(path)
    rows_read = len(records) + len(quarantine)
    expanded = rows_to_pairs(records, path) if rows_to_pairs else None
    row_format = None
    if expanded is not None:
        records, refused, row_format = expanded
        quarantine = pd.concat([quarantine, refused], ignore_index=True)
    _table_kind(records.columns, path)  # a file that is no annotation table stops the read here, in order
    digest, columns = hashlib.sha256(data).hexdigest(), ",".join(map(str, records.columns))
    return _Batch(path, batch, records, quarantine, rows_read, row_format, digest, len(data), columns)


def _group_key(file: _Batch) -> tuple | None:
    """Small vote files whose records have the same columns, in the same order, of the same types, are
    checked together (their rows concatenate unchanged); None: a file checked alone."""
    records = file.records
    if file.row_format is not None or len(records) >= GROUP_ROWS or _table_kind(records.columns, file.path) != "votes":
        return None
    return tuple(records.columns), tuple(records.dtypes)


def _group_votes(files: list[_Batch], positions: list[int]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """A group's votes and rejected rows, each with its file's `_position` and a `_part` (1: a file's
    rejected rows follow the rows its reader quarantined), and the group's format."""
    first = files[0]
    counts = [len(file.records) for file in files]
    if len(files) == 1:
        records, batch, names = first.records, first.batch, None
    else:  # a RangeIndex: a row's label is its place in the group
        records = pd.concat([file.records for file in files], ignore_index=True)
        batch = pd.Series(np.repeat([file.batch for file in files], counts), dtype="str")
        names = pd.Series(np.repeat([str(file.path) for file in files], counts), dtype="str")
    position = np.repeat(positions, counts)

    def at(frame: pd.DataFrame) -> np.ndarray:
        return position[frame.index.to_numpy()] if names is not None else np.full(len(frame), positions[0])

    votes, fmt = _to_canonical(records, first.path, batch, names)
    fmt = first.row_format or fmt
    votes, rejected = _validate_fields(votes, sides=("chosen", "rejected") if fmt == "conversational_pairs" else ())
    if fmt != "votes":  # name the file's own fields, not the canonical ones they became
        rejected["field"] = rejected["field"].replace(_pair_field_names(records.columns))
    rejected["raw"] = rows_as_json(records.loc[rejected.index])
    return votes.assign(_position=at(votes), _part=0), rejected.assign(_position=at(rejected), _part=1), fmt


def _read_quarantines(files: list[_Batch]) -> list[pd.DataFrame]:
    """Each file's own quarantine, with its `_position` and `_part` 0. Of the empty ones, one for each set
    of column types: they hold no rows, only types, which decide the table's as they did file by file."""
    parts, kinds = [], set()
    for position, file in enumerate(files):
        kind = tuple(zip(file.quarantine.columns, file.quarantine.dtypes))
        if len(file.quarantine) or kind not in kinds:
            kinds.add(kind)
            parts.append(file.quarantine.assign(_position=position, _part=0))
    return parts


def _in_file_order(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The parts as one table, rows in their files' order (a file's reader quarantine before its rejected
    rows; the rows of a file in their own order), as reading the files one by one gives them."""
    frame = pd.concat(parts, ignore_index=True)
    order = np.lexsort([frame[name].to_numpy(dtype="int64") for name in ("_part", "_position")])  # stable
    if (np.diff(order) < 0).any():  # not already in order (files checked one by one, as they came)
        frame = frame.iloc[order].reset_index(drop=True)
    return frame.drop(columns=["_position", "_part"])


def batch_names(paths: list[Path]) -> list[str]:
    """Each file's default batch name: its name without the suffix, unless another file read with it has
    the same one (`vend.jsonl`, `vend.csv`): then its name, or where names are shared too (files from
    several folders), its path. A folder's files keep the names they have always had until such a
    file arrives; the names are compared as identifiers are (see ``identifier``)."""
    stems = [identifier(path.stem) for path in paths]
    names = [identifier(path.name) for path in paths]
    stem_count, name_count = Counter(stems), Counter(names)
    return [
        stem if stem_count[stem] == 1 else name if name_count[name] == 1 else identifier(str(path))
        for path, stem, name in zip(paths, stems, names)
    ]


def _table_kind(columns, path: Path) -> str:
    """ "votes" or "pairs" by a file's columns; a file with neither is refused whole."""
    columns = set(columns)
    if "vote" in columns or ({"item_id", "annotator_id"} & columns and not {"chosen", "rejected"} <= columns):
        return "votes"
    if {"chosen", "rejected"} <= columns:
        return "pairs"
    raise AnnotationFileError(
        path,
        "not an annotation table: expected vote columns (item_id, prompt, response_a, response_b, "
        f"annotator_id, vote) or paired columns (chosen, rejected); found {sorted(columns - {'line'})}",
    )


def _to_canonical(
    records: pd.DataFrame, path: Path, batch: str | pd.Series, files: pd.Series | None = None
) -> tuple[pd.DataFrame, str]:
    """Map a file's records to the canonical vote columns; TRL pairs become single-vote items.

    Several vote files' records at once: `batch` and `files` give each row its file's (a RangeIndex)."""
    frame = records.copy()
    if _table_kind(records.columns, path) == "votes":
        fmt = "votes"
    else:
        frame, fmt = _pairs_to_votes(frame, batch)
    for column in VOTE_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame["file"] = str(path) if files is None else files
    frame["batch"] = frame["batch"].where(~_is_missing(frame["batch"]), batch)
    return frame, fmt


def _pairs_to_votes(frame: pd.DataFrame, batch: str) -> tuple[pd.DataFrame, str]:
    """TRL standard (`prompt`/`chosen`/`rejected` text) or conversational (message lists) pairs."""
    conversational = frame["chosen"].map(lambda value: isinstance(value, (list, np.ndarray))).to_numpy()
    chosen, rejected = frame["chosen"].map(_as_list_or_value), frame["rejected"].map(_as_list_or_value)
    if "prompt" not in frame.columns:  # implicit prompt: everything before the last message
        frame["prompt"] = [c[:-1] if conv and c else None for c, conv in zip(chosen, conversational)]
        frame["context_a"] = frame["prompt"]
        frame["context_b"] = [r[:-1] if conv and r else None for r, conv in zip(rejected, conversational)]
    frame["response_a"] = [_last_content(c) if conv else c for c, conv in zip(chosen, conversational)]
    frame["response_b"] = [_last_content(r) if conv else r for r, conv in zip(rejected, conversational)]
    frame["vote"] = "a"
    if "subset" in frame.columns and "domain" not in frame.columns:  # RewardBench's slice name
        frame["domain"] = frame["subset"]
    if "margin" in frame.columns and "strength" not in frame.columns:
        frame["strength"] = frame["margin"]
    if "item_id" not in frame.columns:
        frame["item_id"] = (frame["id"] if "id" in frame.columns else frame["line"]).astype(str)  # scoped later
    if "annotator_id" not in frame.columns:
        frame["annotator_id"] = batch
    return frame, "conversational_pairs" if conversational.all() and len(frame) else "standard_pairs"


def _pair_field_names(columns) -> dict[str, str]:
    """Canonical column -> the paired file's field it was made from (see ``_pairs_to_votes``)."""
    names = {"response_a": "chosen", "response_b": "rejected", "context_a": "chosen", "context_b": "rejected"}
    if "subset" in columns and "domain" not in columns:
        names["domain"] = "subset"
    if "margin" in columns and "strength" not in columns:
        names["strength"] = "margin"
    return names


def _as_list_or_value(value):
    return list(value) if isinstance(value, np.ndarray) else value


def _last_content(messages):
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return messages[-1].get("content")
    return messages


def _votes_as_json(votes: pd.DataFrame) -> pd.Series:
    """Votes as JSON text with the item's own id (normalised, not scoped), for repair and replay."""
    return rows_as_json(votes[VOTE_COLUMNS].assign(item_id=votes["source_item_id"]).drop(columns="source_item_id"))


def _validate_fields(frame: pd.DataFrame, sides: tuple = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into valid votes and quarantined rows, the first failing field naming the reason.

    `sides`: a paired file's conversation columns, each of which must end with the assistant's answer."""
    reason = pd.Series(None, index=frame.index, dtype=object)
    field = pd.Series(None, index=frame.index, dtype=object)
    detail = pd.Series(None, index=frame.index, dtype=object)

    def flag(mask, name, why, text):
        mask = pd.Series(mask, index=frame.index).fillna(False).astype(bool) & reason.isna()
        reason[mask], field[mask] = why, name
        detail[mask] = text[mask] if isinstance(text, pd.Series) else text

    for name in IDENTIFIER_FIELDS:
        values = frame[name]
        flag(_is_missing(values), name, "missing_field", f"{name} is required")
        flag(~_is_identifier(values), name, "wrong_type", f"{name} must be a string or an integer")
    flag(_is_missing(frame["prompt"]), "prompt", "missing_field", "prompt is required")
    flag(
        ~_is_prompt(frame["prompt"]),
        "prompt",
        "wrong_type",
        "prompt must be text or a list of {role, content} messages",
    )
    for name in TEXT_FIELDS:
        flag(frame[name].isna(), name, "missing_field", f"{name} is required")
        flag(~_is_text(frame[name]), name, "wrong_type", f"{name} must be text")
    for name in CONTEXT_FIELDS:
        present = frame[name].notna()
        if present.any():  # nothing to check in a column of JSON nulls
            flag(present & ~_is_prompt(frame[name]), name, "wrong_type", f"{name} must be text or a list of messages")
    for name in (*sides, "prompt", *CONTEXT_FIELDS):  # the sides first: an implicit prompt is cut from them
        problems = role_problems(frame[name], name, answer=name in sides)
        flag(problems.notna(), name, "bad_value", problems)
    flag(frame["vote"].isna(), "vote", "missing_field", "vote is required")
    flag(~_is_text(frame["vote"]), "vote", "wrong_type", "vote must be one of " + ", ".join(VOTE_LABELS))
    vote = _map_values(frame["vote"], lambda v: v.strip().lower() if isinstance(v, str) else v)
    flag(~vote.isin(VOTE_LABELS), "vote", "bad_vote", "vote must be one of " + ", ".join(VOTE_LABELS))
    strength, not_a_number, not_finite = numbers(frame["strength"])
    flag(not_a_number, "strength", "wrong_type", "strength must be a number")
    flag(not_finite, "strength", "bad_value", "strength must be a finite number")
    flag(strength < 0, "strength", "bad_value", "strength must be >= 0")
    for name in ("prompt_id", *OPTIONAL_TEXT_FIELDS):
        flag(frame[name].notna() & ~_is_identifier(frame[name]), name, "wrong_type", f"{name} must be text")

    bad = reason.notna()
    quarantine = pd.DataFrame(
        {
            "file": frame["file"][bad],
            "line": frame["line"][bad],
            "field": field[bad],
            "reason": reason[bad],
            "detail": detail[bad],
        }
    )
    good = frame[~bad].copy()
    good["vote"] = vote[~bad]
    good["strength"] = strength[~bad].astype("float64")
    good = _canonical_types(good)
    return good[VOTE_COLUMNS], quarantine


def _canonical_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Identifiers as normalised text, chat prompts as canonical JSON text with a `conversational` flag.

    An item_id is scoped by the row's `source`, or without one its `batch` (default: the file name), so
    that independent vendors numbering items 1..N never collide: item_id becomes `scope/item_id`, with
    `%` and `/` in the scope written `%25` and `%2F` (the first `/` ends the scope: source `x/y` with
    item `z` and source `x` with item `y/z` stay apart), and the item's own id is kept in `source_item_id`."""
    for name in (*IDENTIFIER_FIELDS, "prompt_id", *OPTIONAL_TEXT_FIELDS):
        frame[name] = _as_text(frame[name])
    for name in NORMALISED_FIELDS:
        frame[name] = _normalised(frame[name], _annotator if name == "annotator_id" else identifier)
    scope = frame["source"].where(frame["source"].notna() & (frame["source"] != ""), frame["batch"])
    scope = scope.str.replace("%", "%25", regex=False).str.replace("/", "%2F", regex=False)
    frame["source_item_id"] = frame["item_id"]
    frame["item_id"] = scope + "/" + frame["item_id"]
    # An Arrow string column holds no chat lists: only object columns are looked at element by element.
    if is_string_array(frame["prompt"]):
        frame["conversational"] = False
    else:
        frame["conversational"] = frame["prompt"].map(lambda value: isinstance(value, (list, np.ndarray))).astype(bool)
    for name in ("prompt", *CONTEXT_FIELDS):
        values = frame[name]
        if not is_string_array(values) and values.notna().any():
            values = values.map(_canonical_prompt)
        frame[name] = _as_text(values)
    for name in TEXT_FIELDS:
        frame[name] = _as_text(frame[name])
    missing_prompt_id = frame["prompt_id"].isna() | (frame["prompt_id"] == "")
    if missing_prompt_id.any():
        frame.loc[missing_prompt_id, "prompt_id"] = "prompt:" + pd.Series(
            pd.util.hash_array(frame.loc[missing_prompt_id, "prompt"].to_numpy(dtype=object)),
            index=frame.index[missing_prompt_id],
        ).map("{:016x}".format)
    frame["line"] = frame["line"].astype("int64")
    frame["orientation_flipped"] = False
    return frame


def _normalised(values: pd.Series, rule) -> pd.Series:
    """`rule` applied once per distinct text (ids repeat: annotators, sources); missing stays None."""
    codes, uniques = pd.factorize(values)
    mapped = np.array([rule(value) for value in uniques] + [None], dtype=object)
    return pd.Series(mapped[codes], index=values.index, dtype=object)  # code -1 (missing) takes the None


def identifier(value):
    """The one rule for identifiers (item, prompt, source, batch): Unicode NFC, surrounding whitespace
    trimmed, case kept (`Q1` and `q1` may well be different items)."""
    return unicodedata.normalize("NFC", value).strip() if isinstance(value, str) else value


def _annotator(value):
    """An annotator id is an identifier compared without case: `ANN-1` and `ann-1 ` are one person.
    Stored case-folded (NFC again after folding, which can decompose)."""
    return unicodedata.normalize("NFC", identifier(value).casefold()) if isinstance(value, str) else value


def _canonical_prompt(value):
    if isinstance(value, (list, np.ndarray)):
        return json.dumps([dict(m) for m in value], ensure_ascii=False, sort_keys=True)
    return value


def _as_text(values: pd.Series) -> pd.Series:
    """Text, or None where missing: integer ids (an Arrow int64 column too) become their digits."""
    missing = values.isna()  # before str(): a NaN (key absent from some JSON records) must stay missing, not "nan"
    if not missing.all() and not only_text(values):
        values = values.astype(object).map(lambda v: v if isinstance(v, str) else str(v))
    return values.astype(object).where(~missing, None)


def _map_values(values: pd.Series, function) -> pd.Series:
    """`values.map(function)`; on an Arrow string column, called once per distinct value (same result)."""
    if not is_string_array(values):
        return values.map(function)
    codes, uniques = pd.factorize(values)
    mapped = pd.array([function(value) for value in uniques], dtype="str")
    return pd.Series(mapped.take(codes, allow_fill=True), index=values.index)


def _is_missing(values: pd.Series) -> pd.Series:
    if is_string_array(values):  # Arrow strips the same whitespace as str.strip() (checked on every code point)
        return values.isna() | values.str.strip().eq("").fillna(False).astype(bool)
    # element-wise: astype(str) would make an Arrow string that can't hold a CSV cell's undecodable bytes
    blank = values.map(lambda v: isinstance(v, str) and v.strip() == "").astype(bool)
    return values.isna() | blank


def _is_text(values: pd.Series) -> pd.Series:
    if only_text(values):
        return pd.Series(True, index=values.index)
    return values.map(lambda v: v is None or isinstance(v, str)).astype(bool)


def _is_identifier(values: pd.Series) -> pd.Series:
    if only_text(values) or pd.api.types.is_integer_dtype(values.dtype):
        return pd.Series(True, index=values.index)
    return values.map(
        lambda v: v is None or isinstance(v, str) or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
    ).astype(bool)


def is_message_list(value) -> bool:
    return (
        isinstance(value, (list, np.ndarray))
        and len(value) > 0
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )


def role_problems(values: pd.Series, name: str, answer: bool) -> pd.Series:
    """Per message list: an unknown role, or (`answer`) a last message that isn't the assistant's; else None."""
    if only_text(values):
        return pd.Series(None, index=values.index, dtype=object)

    def problem(messages):
        if not is_message_list(messages):
            return None  # text, missing or malformed: the type checks name it
        for number, message in enumerate(messages, start=1):
            if message["role"] not in MESSAGE_ROLES:
                return f"{name} message {number} has role {message['role']!r}; roles are {', '.join(MESSAGE_ROLES)}"
        if answer and messages[-1]["role"] != "assistant":
            return f"{name} must end with the assistant's answer, not a {messages[-1]['role']!r} message"
        return None

    return values.map(problem).astype(object)


def _is_prompt(values: pd.Series) -> pd.Series:
    if is_string_array(values):
        return pd.Series(True, index=values.index)
    return values.map(lambda v: v is None or isinstance(v, str) or is_message_list(v)).astype(bool)


def _normalise_orientation(votes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Show every vote on an item in the orientation of its first vote (A/B order may be randomised).

    Votes whose prompt or candidates differ from the item's first vote are quarantined: the same
    item_id then names two different comparisons.
    """
    if votes.empty:
        return votes, empty_quarantine()
    # Each vote against its item's first vote: factorise item_id once and gather that row's values
    # (prompt and candidates are never missing here, so the first row holds the first value).
    item, _ = pd.factorize(votes["item_id"])
    first_row = first_rows(item)[item]
    a, b, prompt = (votes[name].to_numpy() for name in ("response_a", "response_b", "prompt"))
    first_a, first_b, first_prompt = a[first_row], b[first_row], prompt[first_row]
    same = (a == first_a) & (b == first_b)
    swapped = (a == first_b) & (b == first_a) & ~same
    consistent = (same | swapped) & (prompt == first_prompt)
    votes = votes.copy()
    flip = swapped & consistent
    votes.loc[flip, ["response_a", "response_b"]] = votes.loc[flip, ["response_b", "response_a"]].to_numpy()
    votes.loc[flip, ["context_a", "context_b"]] = votes.loc[flip, ["context_b", "context_a"]].to_numpy()
    votes.loc[flip, "vote"] = votes.loc[flip, "vote"].map({"a": "b", "b": "a"}).fillna(votes.loc[flip, "vote"])
    votes.loc[flip, "orientation_flipped"] = True
    bad = votes[~consistent]
    field = np.where(prompt[~consistent] != first_prompt[~consistent], "prompt", "response_a")
    quarantine = pd.DataFrame(
        {
            "file": bad["file"],
            "line": bad["line"],
            "field": field,
            "reason": "inconsistent_item",
            "detail": "item_id " + bad["item_id"] + " already names a different comparison",
            "raw": _votes_as_json(bad),
        }
    )
    return (votes if consistent.all() else votes[consistent]), quarantine


def first_rows(codes: np.ndarray) -> np.ndarray:
    """Position of each group's first row, for codes from pd.factorize (-1 for missing is skipped).

    pd.factorize numbers groups in order of appearance, so the running maximum of the codes rises
    exactly at each group's first row (O(n), no sort).
    """
    return np.flatnonzero(np.diff(np.maximum.accumulate(codes), prepend=-1) > 0)


def _drop_repeated_votes(votes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One vote per (item, annotator): the first stands, later ones are quarantined."""
    repeated = votes.duplicated(["item_id", "annotator_id"], keep="first")
    bad = votes[repeated]
    quarantine = pd.DataFrame(
        {
            "file": bad["file"],
            "line": bad["line"],
            "field": "annotator_id",
            "reason": "duplicate_vote",
            "detail": "annotator " + bad["annotator_id"] + " already voted on item " + bad["item_id"],
            "raw": _votes_as_json(bad),
        }
    )
    return votes[~repeated], quarantine


def _empty_votes() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in VOTE_COLUMNS})
