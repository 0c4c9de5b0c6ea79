"""Reading table files (JSONL, JSON list, CSV, Parquet) into records, quarantining what can't be read.

Every row of a file ends up either in the records or in the quarantine (file, line, field, reason, raw
text): nothing is dropped. Annotation batches, review files, evaluation pair files and candidate files
all come through here. Knows nothing of Dagster or of what the rows mean.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from rm_pipeline.lib.row_checks import load_json, mark_written_nans, repeated_key, swallowed_lines

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
QUARANTINE_COLUMNS = ["file", "line", "field", "reason", "detail", "raw"]
RAW_TEXT_LIMIT = 4000  # enough to recognise and repair a row; the file itself stays untouched
MAX_JSON_DEPTH = 64  # deeper rows are quarantined before any parser sees them (pyarrow segfaults on 10,000)
SETTLE_SECONDS = 2.0  # a batch file modified more recently than this may still be being written
READ_ATTEMPTS = 3  # reads of a file that keeps changing under the reader before it is refused
TIMESTAMP_TICK_NS = 50_000_000  # a file timestamp's granularity on Linux: a kernel tick (<= 10 ms), with room
MAX_FILE_BYTES = 1 << 30  # a larger file is refused before it is read: a batch is read whole into memory
UTF8_BOM = b"\xef\xbb\xbf"


csv.field_size_limit(2**31 - 1)  # LLM answers can be longer than the csv module's default 128 KiB per field


class AnnotationFileError(ValueError):
    """A whole file can't be read as an annotation table."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def file_state(path: Path) -> tuple[int, int, int, int] | None:
    """Size, modification time, inode and change time: any change means the file was written or replaced."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns


def _unsettled_ns(state: tuple[int, int, int, int], now: int) -> int:
    """How long until a write at `now` would show in the file's change time, or 0 when one would already.

    Timestamps come from a coarse clock (a kernel tick, or whole seconds on some file systems), so two
    writes within one tick leave size and times alike: only a file last changed more than a tick before a
    read began is known not to change during it unseen. A change time more than SETTLE_SECONDS ahead (a
    skewed clock) can't say: the size, times and inode are compared then."""
    tick = 2 * 10**9 if state[3] % 10**9 == 0 else TIMESTAMP_TICK_NS
    return 0 if state[3] - now > SETTLE_SECONDS * 1e9 else max(0, state[3] + tick - now)


def read_batch_bytes(
    path: Path | str, attempts: int = READ_ATTEMPTS, while_reading: Callable[[Path], None] | None = None
) -> bytes:
    """A file's bytes as one consistent version: a file that changes during the read is read again.

    Only a regular file of at most MAX_FILE_BYTES is read (a FIFO or /dev/zero is refused before any read).
    `while_reading` runs between the read and the check (tests rewrite the file there).
    """
    path = Path(path)
    for _ in range(attempts):
        now, before = time.time_ns(), file_state(path)  # the clock first: `now` is no later than the stat
        if before is not None and (wait := _unsettled_ns(before, now)):
            time.sleep(wait / 1e9)  # changed within a tick: wait a tick, then it must be unchanged
            now, before = time.time_ns(), file_state(path)
            if before is None or _unsettled_ns(before, now):
                continue
        data = _read_regular_file(path)
        if while_reading is not None:
            while_reading(path)
        if before is not None and file_state(path) == before and len(data) == before[0]:
            return data
    raise AnnotationFileError(
        path,
        f"changed while being read ({attempts} tries): write a batch under a temporary "
        "name (.name.jsonl or name.jsonl.tmp) and rename it into place when complete",
    )


def _read_regular_file(path: Path) -> bytes:
    """A regular file's bytes, its kind and size checked on the open file before reading (no FIFO blocks)."""
    try:
        with open_regular_file(path) as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise AnnotationFileError(path, f"{size:,} bytes: larger than the {MAX_FILE_BYTES:,}-byte maximum")
            return file.read(MAX_FILE_BYTES + 1)  # bounded even if it grows meanwhile (then it is read again)
    except NotRegularFile as error:
        raise AnnotationFileError(path, error.strerror) from None
    except OSError as error:
        raise AnnotationFileError(path, f"can't be read: {error.strerror}") from error


class NotRegularFile(OSError):
    """A path that names a FIFO, a device, a socket or a folder where a file is to be read."""


def open_regular_file(path: Path | str) -> BinaryIO:
    """`path` opened for reading, if it is a regular file: checked on the open file, so a FIFO neither blocks
    the open nor is read, and a file swapped for a device after a listing is still refused (NotRegularFile)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = {**FILE_KINDS, stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "a socket")
            raise NotRegularFile(errno.EINVAL, f"not a regular file ({kind}): only regular files are read", str(path))
        return open(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_records(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, bytes]:
    """Rows of a file as a DataFrame with a 1-based `line` column, rows that aren't records at all, and
    the bytes read. Text formats may start with a UTF-8 byte order mark."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise AnnotationFileError(path, f"unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    data = read_batch_bytes(path)
    text = data.removeprefix(UTF8_BOM)
    if suffix == ".parquet":
        records, quarantine = _read_parquet(path, data), empty_quarantine()
    elif suffix == ".csv":
        records, quarantine = _read_csv(path, text)
    elif suffix == ".json" and text.lstrip()[:1] == b"[":
        records, quarantine = _read_json_list(path, text)
    else:
        records, quarantine = _read_jsonl(path, text)
    if suffix != ".parquet" and not _may_hold_bad_text(text):
        return records, quarantine, data
    return *_split_bad_text(path, records, quarantine), data


_BAD_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")  # JSON's \u0000, and \ud800-\udfff (surrogate halves)


def _may_hold_bad_text(text: bytes) -> bool:
    """Whether a text file's cells can hold a NUL or a lone surrogate: most files, valid UTF-8 with no NUL
    byte and no such escape, are cleared by a few passes over the bytes instead of a look at every cell."""
    if b"\x00" in text or _BAD_ESCAPE.search(text):
        return True
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _split_bad_text(path: Path, frame: pd.DataFrame, quarantine: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine rows holding text that isn't valid Unicode, or a NUL character, as bad_encoding.

    CSV bytes that aren't UTF-8 survive decoding as lone surrogates (surrogateescape), and so do
    `\\udcXX` escapes in JSON; no Arrow string, Parquet file or UTF-8 JSON can hold them. A NUL can
    be anywhere (a `\\u0000` escape, a Parquet string): it must never reach a tokenizer.
    """
    cells = {}
    for name in frame.columns:
        values = frame[name]
        if name == "line":
            continue
        if is_string_array(values):  # valid UTF-8: only a NUL to look for, vectorised
            cells[name] = values.str.contains("\x00", regex=False).fillna(False).astype(bool).to_numpy()
        elif only_text(values) and not _BAD_CHAR.search("".join(values.dropna())):
            continue  # the usual text column (CSV's, say): one search over all of it, not one per cell
        elif values.dtype == object and values.notna().any():  # not a column of JSON nulls
            cells[name] = np.fromiter((bad_char(v) is not None for v in values), dtype=bool, count=len(values))
    cells = pd.DataFrame(cells, index=frame.index, dtype=bool)
    bad = cells.any(axis=1) if len(cells.columns) else pd.Series(False, index=frame.index)
    if not bad.any():
        return frame, quarantine
    rows = []
    for index in frame.index[bad]:
        name = cells.columns[cells.loc[index].to_numpy().argmax()]
        problem = text_problem(frame.at[index, name])
        raw = json.dumps(frame.loc[index].drop("line").to_dict(), ensure_ascii=True, default=str)  # escapes: valid
        rows.append(_quarantine_row(path, int(frame.at[index, "line"]), name, "bad_encoding", f"{name} {problem}", raw))
    held = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    quarantine = pd.concat([quarantine, held], ignore_index=True) if len(quarantine) else held
    return frame[~bad], quarantine.sort_values("line", kind="stable", ignore_index=True)


_BAD_CHAR = re.compile("[\ud800-\udfff\x00]")  # json.loads joins valid surrogate pairs, so any left is lone


def bad_char(value) -> str | None:
    """The first lone surrogate or NUL in a value (text, or messages nested in lists and dicts)."""
    if isinstance(value, str):
        found = _BAD_CHAR.search(value)
        return found.group() if found else None
    if isinstance(value, dict):
        return next((c for item in value.items() for c in map(bad_char, item) if c is not None), None)
    if isinstance(value, (list, tuple, np.ndarray)):
        return next((c for c in map(bad_char, value) if c is not None), None)
    return None


def text_problem(value) -> str | None:
    """What is wrong with a value's text, as a message's end, or None: a NUL, or a lone surrogate (valid JSON,
    or non-UTF-8 bytes decoded with surrogateescape, but text no tokenizer takes)."""
    char = bad_char(value)
    if char is None:
        return None
    return "holds a NUL character" if char == "\x00" else "is not valid UTF-8 text"


def _read_parquet(path: Path, data: bytes) -> pd.DataFrame:
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as error:
        raise AnnotationFileError(path, f"not a Parquet table ({error})") from error
    frame = mark_written_nans(table, table.to_pandas())
    frame["line"] = np.arange(1, len(frame) + 1)
    return frame


def _read_csv(path: Path, data: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells as text (empty: None), each row numbered by the physical line it starts on (answers hold
    newlines); a row with more or fewer fields than the header is quarantined as malformed_csv, and so
    are rows swallowed by an unbalanced quote, each on its own line (see ``swallowed_lines``)."""
    physical = io.StringIO(data.decode("utf-8", "surrogateescape"), newline="").readlines()  # as csv splits them
    reader = csv.reader(physical)
    header, records, lines, bad, end = None, [], [], [], 0
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record:  # a blank line
                continue
            if header is None:
                header = record
                continue
            swallowed = swallowed_lines(physical[start - 1 : end], record, len(header)) if end > start else []
            if swallowed:
                bad.extend(_swallowing_record(path, start, record, physical[start - 1 : end], swallowed))
            elif len(record) == len(header):
                records.append(record)
                lines.append(start)
            else:
                problem = f"{len(record)} fields where the header has {len(header)}"
                bad.append(_quarantine_row(path, start, "", "malformed_csv", problem, _csv_raw(record)))
    except csv.Error as error:
        raise AnnotationFileError(path, f"not a CSV table (line {reader.line_num}: {error})") from error
    if header is None:
        raise AnnotationFileError(path, "not a CSV table (empty file)")
    if any(bad_char(name) for name in header):
        raise AnnotationFileError(path, "not a CSV table (its header is not UTF-8 text)")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise AnnotationFileError(path, f"not a CSV table (duplicate column {', '.join(map(repr, repeated))})")
    columns = zip(*records) if records else [()] * len(header)
    frame = pd.DataFrame({name: _csv_cells(cells) for name, cells in zip(header, columns)}, dtype=object)
    frame["line"] = np.asarray(lines, dtype="int64")
    return frame, pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)


def _csv_raw(record: list[str]) -> str:
    return json.dumps(record, ensure_ascii=True)  # escapes: undecodable bytes stay storable


def _swallowing_record(path: Path, start: int, record: list, lines: list[str], swallowed: list[int]) -> list[dict]:
    """The record whose quoted field ran on over rows, and each of those rows on its own line."""
    first, last = start + swallowed[0], start + swallowed[-1]
    where = f"line {first}" if first == last else f"lines {first} to {last}"
    held = [
        _quarantine_row(
            path,
            start,
            "",
            "malformed_csv",
            f"unbalanced quote on line {start}: its field runs on to line {start + len(lines) - 1}, "
            f"swallowing {len(swallowed)} rows ({where}), quarantined on their own lines",
            _csv_raw(record),
        )
    ]
    for number in swallowed:
        row = next(csv.reader([lines[number]]))
        problem = f"swallowed by the unbalanced quote on line {start}"
        held.append(_quarantine_row(path, start + number, "", "malformed_csv", problem, _csv_raw(row)))
    return held


def _csv_cells(cells: tuple) -> np.ndarray:
    values = np.array(cells, dtype=object)
    values[values == ""] = None
    return values


def _read_json_list(path: Path, data: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Elements numbered by position in the list. Bytes that aren't UTF-8 become lone surrogates (as in
    CSV) and cost only their element; an element nested too deep is quarantined before parsing, and one
    that repeats a key after it."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        if not json_depth_exceeds(data, MAX_JSON_DEPTH + 1):  # the list itself is one level
            (rows, repeats), positions, bad = load_json(text), None, []
        else:
            rows, positions, bad, repeats = [], [], [], False
            for position, element in enumerate(_json_list_elements(text), start=1):
                if json_depth_exceeds(element.encode("utf-8", "surrogateescape")):
                    bad.append(_quarantine_row(path, position, "", "malformed_json", _TOO_DEEP, element))
                else:
                    row, repeated = load_json(element)
                    rows.append(row)
                    positions.append(position)
                    repeats = repeats or repeated
    except json.JSONDecodeError as error:
        raise AnnotationFileError(path, f"not a JSON list of records ({error})") from error
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise AnnotationFileError(path, "not a JSON list of records (objects)")
    positions = list(range(1, len(rows) + 1)) if positions is None else positions
    if repeats:  # rare: only then is every row looked at
        rows, positions, bad = _without_repeated_keys(path, rows, positions, bad, text)
    frame = pd.DataFrame(rows, dtype=object)  # no str inference: it chokes on lone surrogates
    frame["line"] = np.asarray(positions, dtype="int64")
    return frame, pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)


def _without_repeated_keys(path: Path, rows: list, positions: list, bad: list, text: str) -> tuple[list, list, list]:
    """The rows that give no key twice; the others quarantined as duplicate_key, with their element's text."""
    elements = _json_list_elements(text)
    kept_rows, kept_positions = [], []
    for row, position in zip(rows, positions):
        repeat = repeated_key(row)
        if repeat is None:
            kept_rows.append(row)
            kept_positions.append(position)
        else:
            bad.append(_quarantine_row(path, position, repeat[0], "duplicate_key", repeat[1], elements[position - 1]))
    return kept_rows, kept_positions, sorted(bad, key=lambda held: held["line"])


_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]', re.DOTALL)


def _json_list_elements(text: str) -> list[str]:
    """The text of each element of a JSON list, split at its top-level commas without parsing."""
    depth, start, elements = 0, 0, []
    for token in _JSON_TOKEN.finditer(text):
        mark = token.group()
        if mark in ("[", "{"):
            depth += 1
            start = token.end() if depth == 1 else start
        elif mark in ("]", "}"):
            depth -= 1
            if depth == 0:
                elements.append(text[start : token.start()])
                break
        elif mark == "," and depth == 1:
            elements.append(text[start : token.start()])
            start = token.end()
    return elements if [e for e in elements if e.strip()] else []


_TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth_exceeds(document: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON document nests arrays and objects deeper than `limit`, found on its bytes without
    parsing (parsers recurse: pyarrow's segfaults and Python's raises RecursionError on deep input).
    Brackets inside strings don't count; an unclosed document counts the brackets it opened."""
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else bytes(document)
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    folded = np.frombuffer(_JSON_STRING.sub(b"", data), dtype=np.uint8) | 0x20  # [ ] become { }
    step = (folded == ord("{")).astype(np.int32) - (folded == ord("}"))
    return bool(np.cumsum(step).max() > limit)


def _read_jsonl(path: Path, data: bytes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fast path through Arrow; line by line only when the file has a bad line or mixed types.

    Lines nested too deep are found first, on the bytes: no parser ever sees them."""
    numbers, starts, ends = _text_lines(data)
    if not len(numbers):
        raise AnnotationFileError(path, "empty file: no JSON lines")
    too_deep = _nested_too_deep(data, numbers, starts, ends)
    try:
        if too_deep.any():
            raise UnicodeDecodeError("utf-8", b"", 0, 0, "nested too deep for Arrow")  # to the line-by-line path
        data.decode("utf-8")  # Arrow's JSON reader lets invalid UTF-8 through into string columns
        table = pa_json.read_json(io.BytesIO(data))
        if table.num_rows == len(numbers):
            frame = mark_written_nans(table, table.to_pandas())  # a written NaN is no missing value
            frame["line"] = numbers
            return frame, empty_quarantine()
    except (pa.ArrowException, UnicodeDecodeError):
        pass
    records, line_numbers, bad = [], [], []
    for number, start, end, deep in zip(numbers.tolist(), starts.tolist(), ends.tolist(), too_deep.tolist()):
        line = data[start:end]
        if deep:
            bad.append(_quarantine_row(path, number, "", "malformed_json", _TOO_DEEP, line.decode("utf-8", "replace")))
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            bad.append(
                _quarantine_row(
                    path,
                    number,
                    "",
                    "bad_encoding",
                    f"invalid UTF-8 at byte {error.start}",
                    line.decode("utf-8", "replace"),
                )
            )
            continue
        try:
            record, repeats = load_json(text)
        except json.JSONDecodeError as error:
            bad.append(
                _quarantine_row(path, number, "", "malformed_json", error.msg + f" at column {error.colno}", text)
            )
            continue
        if not isinstance(record, dict):
            bad.append(_quarantine_row(path, number, "", "malformed_json", "a line must be a JSON object", text))
            continue
        repeat = repeated_key(record) if repeats else None  # Arrow refuses such a file: only here
        if repeat is not None:
            bad.append(_quarantine_row(path, number, repeat[0], "duplicate_key", repeat[1], text))
            continue
        records.append(record)
        line_numbers.append(number)
    if not records and len(bad) == len(numbers) and all(row["reason"] == "malformed_json" for row in bad):
        raise AnnotationFileError(path, f"not a table: none of its {len(numbers)} lines is a JSON object")
    frame = pd.DataFrame(records, dtype=object) if records else pd.DataFrame()  # no str inference, as above
    frame["line"] = np.asarray(line_numbers, dtype="int64")
    return frame, pd.DataFrame(bad, columns=QUARANTINE_COLUMNS)


_ASCII_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)  # what bytes.strip() strips


def _text_lines(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lines that aren't blank (`line.strip()` non-empty): 1-based numbers, start and end offsets,
    found on the byte buffer."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(buffer == ord("\n")) + 1])
    ends = np.concatenate([starts[1:] - 1, [len(buffer)]])
    lines = np.flatnonzero(ends > starts)
    text = ~np.isin(buffer[starts[lines]], _ASCII_WHITESPACE)
    # A line starting with whitespace is rare (JSON lines start with "{"): those few are looked at one by one.
    for index in np.flatnonzero(~text):
        line = lines[index]
        text[index] = bool(data[starts[line] : ends[line]].strip())
    lines = lines[text]
    return lines.astype("int64") + 1, starts[lines], ends[lines]


_NOT_OPENING_OR_NEWLINE = bytes(sorted(set(range(256)) - set(b"[{\n")))


def _nested_too_deep(data: bytes, numbers: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which lines nest deeper than MAX_JSON_DEPTH. A line with no more `[`/`{` than that can't (the
    usual case, counted in one C pass that keeps only those bytes and newlines); the few others are
    measured by ``json_depth_exceeds``."""
    kept = np.frombuffer(data.translate(None, _NOT_OPENING_OR_NEWLINE), dtype=np.uint8)
    newlines = np.flatnonzero(kept == ord("\n"))
    openings_per_line = np.diff(np.concatenate([[-1], newlines, [len(kept)]])) - 1
    counts = openings_per_line[numbers - 1]
    deep = np.zeros(len(starts), dtype=bool)
    for index in np.flatnonzero(counts > MAX_JSON_DEPTH):
        deep[index] = json_depth_exceeds(data[starts[index] : ends[index]])
    return deep


def rows_as_json(rows: pd.DataFrame) -> pd.Series:
    """Quarantined rows as JSON text, so they can be repaired and replayed."""
    body = rows.drop(columns=["line"], errors="ignore")
    return pd.Series(
        [json.dumps(row, ensure_ascii=False, default=str)[:RAW_TEXT_LIMIT] for row in body.to_dict("records")],
        index=rows.index,
        dtype=object,
    )


def is_string_array(values: pd.Series) -> bool:
    """An Arrow-backed string column (Parquet, JSON): every value is text or missing."""
    return pd.api.types.is_string_dtype(values.dtype) and values.dtype != object


def only_text(values: pd.Series) -> bool:
    """Every value text or missing (an Arrow string column, or an object column of str: CSV's)."""
    return is_string_array(values) or pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty")


def _quarantine_row(path: Path, line: int, field: str, reason: str, detail: str, raw: str) -> dict:
    return {
        "file": str(path),
        "line": line,
        "field": field,
        "reason": reason,
        "detail": detail,
        "raw": raw[:RAW_TEXT_LIMIT],
    }


def empty_quarantine() -> pd.DataFrame:
    return _EMPTY_QUARANTINE.copy()  # a copy of one built once: building it costs a millisecond, a file


_EMPTY_QUARANTINE = pd.DataFrame({column: pd.Series(dtype=object) for column in QUARANTINE_COLUMNS})
