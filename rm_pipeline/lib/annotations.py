"""Reading annotation batches into one table of votes, quarantining what can't be read.

Every row of every file ends up either in the votes table or in the quarantine (file, line, field,
reason, raw text): nothing is dropped. Knows nothing of Dagster.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
VOTE_LABELS = ("a", "b", "tie", "abstain")
IDENTIFIER_FIELDS = ("item_id", "annotator_id")
TEXT_FIELDS = ("response_a", "response_b")
OPTIONAL_TEXT_FIELDS = ("domain", "source", "batch")
CONTEXT_FIELDS = ("context_a", "context_b")

VOTE_COLUMNS = [
    "item_id", "prompt_id", "prompt", "conversational", "response_a", "response_b",
    "context_a", "context_b", "annotator_id", "vote", "strength", "domain", "source", "batch",
    "file", "line", "orientation_flipped",
]
QUARANTINE_COLUMNS = ["file", "line", "field", "reason", "detail", "raw"]
RAW_TEXT_LIMIT = 4000  # enough to recognise and repair a row; the file itself stays untouched


class AnnotationFileError(ValueError):
    """A whole file can't be read as an annotation table."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


@dataclass
class IngestResult:
    votes: pd.DataFrame
    quarantine: pd.DataFrame
    batches: pd.DataFrame  # one row per file: batch, file, format, rows_read, kept, quarantined

    @property
    def rows_read(self) -> int:
        return int(self.batches["rows_read"].sum()) if len(self.batches) else 0


def list_batch_files(directory: Path | str) -> list[Path]:
    """Annotation batch files in a folder, sorted by name; other files (README, .gitkeep) are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AnnotationFileError(directory, "annotation folder does not exist")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


def read_annotations(paths: list[Path | str]) -> IngestResult:
    """Read batch files (JSONL, JSON list, CSV, Parquet; canonical votes or TRL pairs) into votes."""
    frames, quarantines, batches = [], [], []
    for path in map(Path, paths):
        records, quarantine = _read_records(path)
        votes, fmt = _to_canonical(records, path)
        votes, rejected = _validate_fields(votes)
        if fmt != "votes":  # name the file's own fields, not the canonical ones they became
            rejected["field"] = rejected["field"].replace(_pair_field_names(records.columns))
        rejected["raw"] = _rows_as_json(records.loc[rejected.index])
        batch_quarantine = pd.concat([quarantine, rejected], ignore_index=True)
        frames.append(votes)
        quarantines.append(batch_quarantine)
        batches.append({"batch": path.stem, "file": str(path), "format": fmt,
                        "rows_read": len(records) + len(quarantine), "columns": ",".join(map(str, records.columns))})
    votes = pd.concat(frames, ignore_index=True) if frames else _empty_votes()
    quarantine = pd.concat(quarantines, ignore_index=True) if quarantines else _empty_quarantine()
    votes, inconsistent = _normalise_orientation(votes)
    votes, repeated = _drop_repeated_votes(votes)
    quarantine = pd.concat([quarantine, inconsistent, repeated], ignore_index=True)[QUARANTINE_COLUMNS]
    quarantine["line"] = quarantine["line"].astype("int64")
    summary = pd.DataFrame(batches, columns=["batch", "file", "format", "rows_read", "columns"])
    kept = votes.groupby("file").size()
    held = quarantine.groupby("file").size()
    summary["kept"] = summary["file"].map(kept).fillna(0).astype("int64")
    summary["quarantined"] = summary["file"].map(held).fillna(0).astype("int64")
    return IngestResult(votes.reset_index(drop=True), quarantine.reset_index(drop=True), summary)


# ---------------------------------------------------------------- reading files


def _read_records(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of a file as a DataFrame with a 1-based `line` column, plus rows that aren't records at all."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise AnnotationFileError(path, f"unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise AnnotationFileError(path, f"can't be read: {error.strerror}") from error
    if suffix == ".parquet":
        return _read_parquet(path, data), _empty_quarantine()
    if suffix == ".csv":
        return _split_undecodable(path, _read_csv(path, data), _empty_quarantine())
    if suffix == ".json" and data.lstrip()[:1] == b"[":
        return _split_undecodable(path, _read_json_list(path, data), _empty_quarantine())
    return _split_undecodable(path, *_read_jsonl(path, data))


def _split_undecodable(path: Path, frame: pd.DataFrame, quarantine: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine rows holding text that isn't valid Unicode as bad_encoding.

    CSV bytes that aren't UTF-8 survive decoding as lone surrogates (surrogateescape), and so do
    `\\udcXX` escapes in JSON; no Arrow string, Parquet file or UTF-8 JSON can hold them.
    """
    # Object columns only (Arrow strings are valid UTF-8), and not one without values (all JSON nulls).
    columns = [name for name in frame.columns
               if name != "line" and frame[name].dtype == object and frame[name].notna().any()]
    cells = pd.DataFrame({name: [_holds_surrogate(v) for v in frame[name]] for name in columns},
                         index=frame.index, dtype=bool)
    bad = cells.any(axis=1) if columns else pd.Series(False, index=frame.index)
    if not bad.any():
        return frame, quarantine
    rows = []
    for index in frame.index[bad]:
        name = cells.columns[cells.loc[index].to_numpy().argmax()]
        raw = json.dumps(frame.loc[index].drop("line").to_dict(), ensure_ascii=True, default=str)  # escapes: valid
        rows.append(_quarantine_row(path, int(frame.at[index, "line"]), name, "bad_encoding",
                                    f"{name} is not valid UTF-8 text", raw))
    held = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    quarantine = pd.concat([quarantine, held], ignore_index=True) if len(quarantine) else held
    return frame[~bad], quarantine.sort_values("line", kind="stable", ignore_index=True)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs, so any left is lone


def _holds_surrogate(value) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_holds_surrogate(k) or _holds_surrogate(v) for k, v in value.items())
    if isinstance(value, (list, tuple, np.ndarray)):
        return any(_holds_surrogate(v) for v in value)
    return False


def _read_parquet(path: Path, data: bytes) -> pd.DataFrame:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise AnnotationFileError(path, f"not a Parquet table ({error})") from error
    frame = table.to_pandas()
    frame["line"] = np.arange(1, len(frame) + 1)
    return frame


def _read_csv(path: Path, data: bytes) -> pd.DataFrame:
    if b"\x00" in data[:4096]:
        raise AnnotationFileError(path, "not a CSV table (binary content)")
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=object, keep_default_na=False, na_values=[""],
                            encoding="utf-8", encoding_errors="surrogateescape")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError) as error:
        raise AnnotationFileError(path, f"not a CSV table ({error})") from error
    frame = frame.astype(object).where(frame.notna(), None)
    # A line is the header plus the 1-based row; quoted newlines inside a field shift this, rarely.
    frame["line"] = np.arange(2, len(frame) + 2)
    return frame


def _read_json_list(path: Path, data: bytes) -> pd.DataFrame:
    try:
        rows = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationFileError(path, f"not a JSON list of records ({error})") from error
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise AnnotationFileError(path, "not a JSON list of records (objects)")
    frame = pd.DataFrame(rows, dtype=object)  # no str inference: it chokes on lone surrogates
    frame["line"] = np.arange(1, len(frame) + 1)  # position in the list
    return frame


def _read_jsonl(path: Path, data: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fast path through Arrow; line by line only when the file has a bad line or mixed types."""
    numbers = _text_line_numbers(data)
    if not len(numbers):
        raise AnnotationFileError(path, "empty file: no JSON lines")
    try:
        data.decode("utf-8")  # Arrow's JSON reader lets invalid UTF-8 through into string columns
        table = pa_json.read_json(io.BytesIO(data))
        if table.num_rows == len(numbers):
            frame = table.to_pandas()
            frame["line"] = numbers
            return frame, _empty_quarantine()
    except (pa.ArrowException, UnicodeDecodeError):
        pass
    lines = data.split(b"\n")
    numbered = [(n, lines[n - 1]) for n in numbers.tolist()]
    records, line_numbers, bad = [], [], []
    for number, line in numbered:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            bad.append(_quarantine_row(path, number, "", "bad_encoding", f"invalid UTF-8 at byte {error.start}",
                                       line.decode("utf-8", "replace")))
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            bad.append(_quarantine_row(path, number, "", "malformed_json", error.msg + f" at column {error.colno}", text))
            continue
        if not isinstance(record, dict):
            bad.append(_quarantine_row(path, number, "", "malformed_json", "a line must be a JSON object", text))
            continue
        records.append(record)
        line_numbers.append(number)
    if not records and len(bad) == len(numbered) and all(row["reason"] == "malformed_json" for row in bad):
        raise AnnotationFileError(path, f"not a table: none of its {len(numbered)} lines is a JSON object")
    frame = pd.DataFrame(records, dtype=object) if records else pd.DataFrame()  # no str inference, as above
    frame["line"] = np.asarray(line_numbers, dtype="int64")
    return frame, pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)


_ASCII_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)  # what bytes.strip() strips


def _text_line_numbers(data: bytes) -> np.ndarray:
    """1-based numbers of the lines that aren't blank (`line.strip()` non-empty), found on the byte buffer."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(buffer == ord("\n")) + 1])
    ends = np.concatenate([starts[1:] - 1, [len(buffer)]])
    lines = np.flatnonzero(ends > starts)
    text = ~np.isin(buffer[starts[lines]], _ASCII_WHITESPACE)
    # A line starting with whitespace is rare (JSON lines start with "{"): those few are looked at one by one.
    for index in np.flatnonzero(~text):
        line = lines[index]
        text[index] = bool(data[starts[line]:ends[line]].strip())
    return lines[text].astype("int64") + 1


# ---------------------------------------------------------------- formats


def _to_canonical(records: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, str]:
    """Map a file's records to the canonical vote columns; TRL pairs become single-vote items."""
    columns = set(records.columns)
    frame = records.copy()
    if "vote" in columns or ({"item_id", "annotator_id"} & columns and not {"chosen", "rejected"} <= columns):
        fmt = "votes"
    elif {"chosen", "rejected"} <= columns:
        frame, fmt = _pairs_to_votes(frame, path)
    else:
        raise AnnotationFileError(
            path, "not an annotation table: expected vote columns (item_id, prompt, response_a, response_b, "
                  f"annotator_id, vote) or paired columns (chosen, rejected); found {sorted(columns - {'line'})}")
    for column in VOTE_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame["file"] = str(path)
    frame["batch"] = frame["batch"].where(frame["batch"].notna(), path.stem)
    return frame, fmt


def _pairs_to_votes(frame: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, str]:
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
        frame["item_id"] = frame["id"].astype(str) if "id" in frame.columns else (
            path.stem + ":" + frame["line"].astype(str))
    if "annotator_id" not in frame.columns:
        frame["annotator_id"] = path.stem
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


def _rows_as_json(rows: pd.DataFrame) -> pd.Series:
    """Quarantined rows as JSON text, so they can be repaired and replayed."""
    body = rows.drop(columns=["line"], errors="ignore")
    return pd.Series([json.dumps(row, ensure_ascii=False, default=str)[:RAW_TEXT_LIMIT]
                      for row in body.to_dict("records")], index=rows.index, dtype=object)


# ---------------------------------------------------------------- field checks


def _validate_fields(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into valid votes and quarantined rows, the first failing field naming the reason."""
    reason = pd.Series(None, index=frame.index, dtype=object)
    field = pd.Series(None, index=frame.index, dtype=object)
    detail = pd.Series(None, index=frame.index, dtype=object)

    def flag(mask, name, why, text):
        mask = pd.Series(mask, index=frame.index).fillna(False).astype(bool) & reason.isna()
        reason[mask], field[mask], detail[mask] = why, name, text

    for name in IDENTIFIER_FIELDS:
        values = frame[name]
        flag(_is_missing(values), name, "missing_field", f"{name} is required")
        flag(~_is_identifier(values), name, "wrong_type", f"{name} must be a string or an integer")
    flag(_is_missing(frame["prompt"]), "prompt", "missing_field", "prompt is required")
    flag(~_is_prompt(frame["prompt"]), "prompt", "wrong_type",
         "prompt must be text or a list of {role, content} messages")
    for name in TEXT_FIELDS:
        flag(frame[name].isna(), name, "missing_field", f"{name} is required")
        flag(~_is_text(frame[name]), name, "wrong_type", f"{name} must be text")
    for name in CONTEXT_FIELDS:
        present = frame[name].notna()
        if present.any():  # nothing to check in a column of JSON nulls
            flag(present & ~_is_prompt(frame[name]), name, "wrong_type", f"{name} must be text or a list of messages")
    flag(frame["vote"].isna(), "vote", "missing_field", "vote is required")
    flag(~_is_text(frame["vote"]), "vote", "wrong_type", "vote must be one of " + ", ".join(VOTE_LABELS))
    vote = _map_values(frame["vote"], lambda v: v.strip().lower() if isinstance(v, str) else v)
    flag(~vote.isin(VOTE_LABELS), "vote", "bad_vote", "vote must be one of " + ", ".join(VOTE_LABELS))
    strength = frame["strength"]
    if not (pd.api.types.is_integer_dtype(strength.dtype) or pd.api.types.is_float_dtype(strength.dtype)):
        strength = pd.to_numeric(strength.map(_number_or_nan), errors="coerce")  # text, bools, mixed JSON
    flag(frame["strength"].notna() & strength.isna(), "strength", "wrong_type", "strength must be a number")
    flag(strength < 0, "strength", "bad_value", "strength must be >= 0")
    for name in ("prompt_id", *OPTIONAL_TEXT_FIELDS):
        flag(frame[name].notna() & ~_is_identifier(frame[name]), name, "wrong_type", f"{name} must be text")

    bad = reason.notna()
    quarantine = pd.DataFrame({"file": frame["file"][bad], "line": frame["line"][bad], "field": field[bad],
                               "reason": reason[bad], "detail": detail[bad]})
    good = frame[~bad].copy()
    good["vote"] = vote[~bad]
    good["strength"] = strength[~bad].astype("float64")
    good = _canonical_types(good)
    return good[VOTE_COLUMNS], quarantine


def _canonical_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Identifiers as text, chat prompts as canonical JSON text with a `conversational` flag."""
    for name in (*IDENTIFIER_FIELDS, "prompt_id", *OPTIONAL_TEXT_FIELDS):
        frame[name] = _as_text(frame[name])
    # An Arrow string column holds no chat lists: only object columns are looked at element by element.
    if _is_string_array(frame["prompt"]):
        frame["conversational"] = False
    else:
        frame["conversational"] = frame["prompt"].map(lambda value: isinstance(value, (list, np.ndarray))).astype(bool)
    for name in ("prompt", *CONTEXT_FIELDS):
        values = frame[name]
        if not _is_string_array(values) and values.notna().any():
            values = values.map(_canonical_prompt)
        frame[name] = _as_text(values)
    for name in TEXT_FIELDS:
        frame[name] = _as_text(frame[name])
    missing_prompt_id = frame["prompt_id"].isna() | (frame["prompt_id"] == "")
    if missing_prompt_id.any():
        frame.loc[missing_prompt_id, "prompt_id"] = "prompt:" + pd.Series(
            pd.util.hash_array(frame.loc[missing_prompt_id, "prompt"].to_numpy(dtype=object)),
            index=frame.index[missing_prompt_id]).map("{:016x}".format)
    frame["line"] = frame["line"].astype("int64")
    frame["orientation_flipped"] = False
    return frame


def _canonical_prompt(value):
    if isinstance(value, (list, np.ndarray)):
        return json.dumps([dict(m) for m in value], ensure_ascii=False, sort_keys=True)
    return value


def _as_text(values: pd.Series) -> pd.Series:
    """Text, or None where missing: integer ids (an Arrow int64 column too) become their digits."""
    missing = values.isna()  # before str(): a NaN (key absent from some JSON records) must stay missing, not "nan"
    if not _is_string_array(values) and not missing.all():  # Arrow strings are text already
        values = values.astype(object).map(lambda v: v if isinstance(v, str) else str(v))
    return values.astype(object).where(~missing, None)


def _is_string_array(values: pd.Series) -> bool:
    """An Arrow-backed string column (Parquet, JSON): every value is text or missing."""
    return pd.api.types.is_string_dtype(values.dtype) and values.dtype != object


def _map_values(values: pd.Series, function) -> pd.Series:
    """`values.map(function)`; on an Arrow string column, called once per distinct value (same result)."""
    if not _is_string_array(values):
        return values.map(function)
    codes, uniques = pd.factorize(values)
    mapped = pd.array([function(value) for value in uniques], dtype="str")
    return pd.Series(mapped.take(codes, allow_fill=True), index=values.index)


def _is_missing(values: pd.Series) -> pd.Series:
    if _is_string_array(values):  # Arrow strips the same whitespace as str.strip() (checked on every code point)
        return values.isna() | values.str.strip().eq("").fillna(False).astype(bool)
    # element-wise: astype(str) would make an Arrow string that can't hold a CSV cell's undecodable bytes
    blank = values.map(lambda v: isinstance(v, str) and v.strip() == "").astype(bool)
    return values.isna() | blank


def _is_text(values: pd.Series) -> pd.Series:
    if _is_string_array(values):
        return pd.Series(True, index=values.index)
    return values.map(lambda v: v is None or isinstance(v, str)).astype(bool)


def _is_identifier(values: pd.Series) -> pd.Series:
    if _is_string_array(values) or pd.api.types.is_integer_dtype(values.dtype):
        return pd.Series(True, index=values.index)
    return values.map(lambda v: v is None or isinstance(v, str) or (isinstance(v, (int, np.integer))
                                                                    and not isinstance(v, bool))).astype(bool)


def is_message_list(value) -> bool:
    return isinstance(value, (list, np.ndarray)) and len(value) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _is_prompt(values: pd.Series) -> pd.Series:
    if _is_string_array(values):
        return pd.Series(True, index=values.index)
    return values.map(lambda v: v is None or isinstance(v, str) or is_message_list(v)).astype(bool)


def _number_or_nan(value):
    if value is None or isinstance(value, bool):
        return np.nan if value is None else "not a number"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value
    if isinstance(value, str):  # CSV cells are text: a numeric string is a number there
        try:
            return float(value)
        except ValueError:
            return "not a number"
    return "not a number"




# ---------------------------------------------------------------- item-level consistency


def _normalise_orientation(votes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Show every vote on an item in the orientation of its first vote (A/B order may be randomised).

    Votes whose prompt or candidates differ from the item's first vote are quarantined: the same
    item_id then names two different comparisons.
    """
    if votes.empty:
        return votes, _empty_quarantine()
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
    quarantine = pd.DataFrame({"file": bad["file"], "line": bad["line"], "field": field,
                               "reason": "inconsistent_item",
                               "detail": "item_id " + bad["item_id"] + " already names a different comparison",
                               "raw": _rows_as_json(bad[VOTE_COLUMNS])})
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
    quarantine = pd.DataFrame({"file": bad["file"], "line": bad["line"], "field": "annotator_id",
                               "reason": "duplicate_vote",
                               "detail": "annotator " + bad["annotator_id"] + " already voted on item " + bad["item_id"],
                               "raw": _rows_as_json(bad[VOTE_COLUMNS])})
    return votes[~repeated], quarantine


def _quarantine_row(path: Path, line: int, field: str, reason: str, detail: str, raw: str) -> dict:
    return {"file": str(path), "line": line, "field": field, "reason": reason, "detail": detail,
            "raw": raw[:RAW_TEXT_LIMIT]}


def _empty_votes() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in VOTE_COLUMNS})


def _empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in QUARANTINE_COLUMNS})
