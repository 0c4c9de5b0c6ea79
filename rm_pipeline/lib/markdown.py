"""Markdown for people: numbers, tables and inline images, shared by the report files and the Dagster UI's
metadata. Light imports only: the training child process uses it too."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import pandas as pd


def format_number(value, digits: int = 3) -> str:
    """Floats to ``digits`` significant digits; None and NaN as ``n/a``; anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as a Markdown table of ``columns`` (default: every key, in first-seen order), cells through
    ``format_number``; ``_none_`` when there are no rows."""
    if not rows:
        return "_none_\n"
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    cells = pd.DataFrame([[format_number(row.get(column)) for column in columns] for row in rows], columns=columns)
    return cells.to_markdown(index=False, disable_numparse=True) + "\n"


def inline_png(path: Path, title: str) -> str:
    """The image itself as Markdown, so the UI shows it without access to the storage root."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def shown(result: dict, key: str) -> str:
    """``result[key]`` with its interval (``result[key + '_interval']``): ``0.812 [0.75, 0.86]``."""
    interval = result.get(f"{key}_interval")
    value = format_number(result.get(key))
    return f"{value} [{format_number(interval['low'])}, {format_number(interval['high'])}]" if interval else value


def with_intervals(rows: list[dict], keys: tuple[str, ...] = ("accuracy",)) -> list[dict]:
    """Table rows with each of ``keys`` shown with its interval, for ``markdown_table``."""
    return [{**row, **{key: shown(row, key) for key in keys if key in row}} for row in rows]
