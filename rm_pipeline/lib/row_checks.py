"""What the table readers must not let through silently, whatever the format: a number written as NaN or an
infinity (told apart from a missing value, and read by ``numbers``), a key given twice in one JSON object,
CSV rows swallowed by an unbalanced quote. Used by ``table_files`` and ``annotations``; knows nothing of
what the rows mean.
"""

from __future__ import annotations

import csv
import json
import math
import re
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class NonFiniteNumber(float):
    """A NaN or an infinity written in a file (JSON's `NaN`, `Infinity`; an Arrow NaN), not a missing value.

    pandas shows both as NaN; this type keeps them apart until a number check calls it `bad_value`."""


class RepeatedKeys(dict):
    """A JSON object that gave a key more than once (the last value is kept, as json.loads does)."""

    repeated: str = ""


def load_json(text: str | bytes) -> tuple[object, bool]:
    """json.loads, and whether an object in the document repeats a key: such an object is a
    ``RepeatedKeys`` (see ``repeated_key``). A written NaN or infinity is a ``NonFiniteNumber``.

    Costs no more than json.loads: the hook builds the dict json.loads builds."""
    repeats = []

    def object_from(pairs: list[tuple[str, object]]) -> dict:
        record = dict(pairs)
        if len(record) == len(pairs):
            return record
        seen: set[str] = set()
        repeated = RepeatedKeys(record)
        repeated.repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        repeats.append(repeated)
        return repeated

    value = json.loads(text, object_pairs_hook=object_from, parse_constant=NonFiniteNumber)
    return value, bool(repeats)


def repeated_key(record: dict) -> tuple[str, str] | None:
    """(field, detail) when a row's object, or an object inside one of its fields, repeats a key."""
    if isinstance(record, RepeatedKeys):
        return record.repeated, f'"{record.repeated}" is given twice'
    for field, value in record.items():
        inner = _first_repeated(value)
        if inner is not None:
            return str(field), f'{field} holds an object that gives "{inner}" twice'
    return None


def _first_repeated(value) -> str | None:
    if isinstance(value, RepeatedKeys):
        return value.repeated
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((found for found in map(_first_repeated, children) if found is not None), None)


def mark_written_nans(table: pa.Table, frame: pd.DataFrame) -> pd.DataFrame:
    """Floating-point columns of an Arrow table that hold a NaN (not a null): the NaNs become
    ``NonFiniteNumber`` and the nulls None in an object column, since to_pandas makes both NaN."""
    for name, column in zip(table.column_names, table.columns):
        if not pa.types.is_floating(column.type) or column.null_count == len(column):
            continue
        nan = pc.fill_null(pc.is_nan(column), False).to_numpy(zero_copy_only=False)
        if not nan.any():
            continue
        values = frame[name].astype(object)
        values[column.is_null().to_numpy(zero_copy_only=False)] = None
        values[nan] = NonFiniteNumber("nan")
        frame[name] = values
    return frame


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def swallowed_lines(lines: list[str], record: list[str], width: int) -> list[int]:
    """Which lines of a CSV record (0 = the line it starts on) are rows swallowed by an unbalanced quote.

    Only a record over several lines can hold them: its quoted field ran on over rows of the file. They
    are the later lines that read, alone, as rows of the header's `width`, when the record shows a
    quoting fault: its quotes don't parse strictly (a quote closing a field must end it), it has the
    wrong number of fields, or, read with its quotes as plain characters, every line of it is a row (a
    stray quote closed by a later quote at a field's end). A well-quoted multi-line cell is kept."""
    if width < 2:  # every line of a one-column table reads as a row: nothing to tell
        return []
    rows = [n for n in range(1, len(lines)) if lines[n].count(",") >= width - 1 and _reads_as_row(lines[n], width)]
    if not rows:  # the usual multi-line answer: no line of it reads as a row
        return []
    if len(record) != width or not _parses_strictly(lines):
        return rows
    return rows if len(rows) == len(lines) - 1 and _reads_as_row(lines[0], width, csv.QUOTE_NONE) else []


def _reads_as_row(line: str, width: int, quoting: int = csv.QUOTE_MINIMAL) -> bool:
    records = list(csv.reader([_LINE_BREAK.sub("", line)], quoting=quoting))
    return len(records) == 1 and len(records[0]) == width


def _parses_strictly(lines: list[str]) -> bool:
    try:
        list(csv.reader(lines, strict=True))
    except csv.Error:
        return False
    return True


def numbers(values: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """A column as float64 (NaN where missing or no number), which values are not numbers at all, and
    which are NaN or infinite as written (missing values, None or pandas' NaN for an absent key, are not).

    One rule for every format: a JSON or Arrow number, a decimal (Parquet's decimal128) or a CSV cell's
    text that reads as a number (`1.5`, `nan`, `-inf`) is a number; bools and other text are not."""
    if pd.api.types.is_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype):
        numbers = values.astype("float64")  # a NaN here is an Arrow null: written NaNs come as NonFiniteNumber
        return numbers, np.zeros(len(values), dtype=bool), np.isinf(numbers.to_numpy())
    parsed = [read_number(value) for value in values]
    not_a_number = np.fromiter((value is NOT_A_NUMBER for value in parsed), dtype=bool, count=len(parsed))
    numbers = np.fromiter((value if isinstance(value, float) else math.nan for value in parsed), "float64", len(parsed))
    written = np.fromiter((isinstance(value, float) for value in parsed), dtype=bool, count=len(parsed))
    return pd.Series(numbers, index=values.index), not_a_number, written & ~np.isfinite(numbers)


NOT_A_NUMBER = object()


def read_number(value):
    """A float (NaN or infinite when written so), None when missing, or NOT_A_NUMBER."""
    if isinstance(value, NonFiniteNumber):
        return float(value)
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None  # pandas' NaN for a key absent from a JSON row; written NaNs are NonFiniteNumber
    if isinstance(value, (bool, np.bool_)):
        return NOT_A_NUMBER
    if isinstance(value, (int, float, np.integer, np.floating, Decimal, str)):  # a CSV cell is text
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            return math.inf
        except ValueError:  # text that is no number; a signalling decimal NaN
            return math.nan if isinstance(value, Decimal) else NOT_A_NUMBER
    return NOT_A_NUMBER
