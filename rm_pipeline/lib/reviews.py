"""Reviewers' decisions on comparisons, read back from the files they return. Knows nothing of Dagster.

A review file is the exported `review/review_queue.csv` with `review_decision` filled in (`a`, `b`,
`tie` or `drop`, case-insensitive; optional `reviewer_id` and `note`), or a JSONL file (also a JSON
list or Parquet) with the same columns; only `item_id` and `review_decision` are required. The rules:

- A row with an empty `review_decision` is undecided: counted as `blank`, nothing else.
- CSV cells are read back through ``restore_formulas``: the export's formula quote is undone exactly.
- `a` and `b` name the sides as the row shows them. Each of `response_a` and `response_b` the row carries
  (the export carries both; an empty one counts as not carried) must be the comparison's response on that
  side: with the sides swapped the decision is swapped with them; otherwise the comparison changed since it
  was reviewed (`changed_item`).
- A row is quarantined (file, line — for CSV the physical line it starts on —, field, reason, detail,
  raw) for: `bad_decision` (not a/b/tie/drop), `unknown_item` (not a current comparison),
  `changed_item`, `contradictory_review` (reviews of one item disagree: every review of that item is
  quarantined, so no file's order decides), and for what makes any row unreadable (`malformed_csv`,
  `malformed_json`, `bad_encoding`, as in annotation batches).
- Reviews of one item that agree are applied once; `adjudicated_by` lists their reviewers.
- Per file and in all: rows read = applied + quarantined + blank.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.aggregation import restore_formulas
from rm_pipeline.lib.annotations import identifier
from rm_pipeline.lib.batch_folder import FolderFiles, folder_files
from rm_pipeline.lib.pairs import Rejections
from rm_pipeline.lib.table_files import QUARANTINE_COLUMNS, AnnotationFileError, read_records, rows_as_json

REVIEW_DECISIONS = ("a", "b", "tie", "drop")
REQUIRED_COLUMNS = ("item_id", "review_decision")
UNKNOWN_REVIEWER = "unknown"
DECISION_COLUMNS = ["item_id", "review_decision", "adjudicated_by", "review_note"]
# a decided review row, as read: the sides it shows, and the row itself for the quarantine
DECIDED_COLUMNS = [
    "file",
    "line",
    "item_id",
    "review_decision",
    "reviewer_id",
    "note",
    "response_a",
    "response_b",
    "raw",
]
FILE_COLUMNS = ["file", "sha256", "bytes", "rows_read", "applied", "quarantined", "blank"]


@dataclass
class ReviewResult:
    decisions: pd.DataFrame  # one row per adjudicated item: DECISION_COLUMNS
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS
    files: pd.DataFrame  # one row per review file: FILE_COLUMNS

    def counts(self) -> dict[str, int]:
        """rows_read = applied + quarantined + blank, and the items adjudicated."""
        totals = {name: int(self.files[name].sum()) for name in ("rows_read", "applied", "quarantined", "blank")}
        return {**totals, "items_adjudicated": len(self.decisions)}


def review_files(directory: Path | str) -> FolderFiles:
    """Review files ready to read, ones still being written and every entry skipped, by the annotation
    folder's rules."""
    if not Path(directory).is_dir():
        raise AnnotationFileError(directory, "reviews folder does not exist")
    return folder_files(directory)


def read_reviews(paths: list[Path | str], comparisons: pd.DataFrame) -> ReviewResult:
    """Every decided row of the review files, checked against the current ``comparisons``."""
    rows, quarantines, files = [], [], []
    for path in map(Path, paths):
        records, unreadable, data = read_records(path)
        missing = [name for name in REQUIRED_COLUMNS if name not in records.columns]
        if missing:
            raise AnnotationFileError(path, f"not a review file: no {', '.join(missing)} column")
        decided, blank = _decided_rows(path, records)
        rows.append(decided)
        quarantines.append(unreadable)
        files.append(
            {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "blank": blank}
        )
        files[-1]["rows_read"] = len(records) + len(unreadable)
    decided = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=DECIDED_COLUMNS)
    applied, rejected = _check(decided, comparisons)
    quarantine = pd.concat([*quarantines, rejected], ignore_index=True)
    quarantine = quarantine.reindex(columns=QUARANTINE_COLUMNS).astype({"line": "int64"})
    summary = pd.DataFrame(files, columns=FILE_COLUMNS)
    summary["applied"] = summary["file"].map(applied.groupby("file").size()).fillna(0).astype("int64")
    summary["quarantined"] = summary["file"].map(quarantine.groupby("file").size()).fillna(0).astype("int64")
    if not (summary["rows_read"] == summary["applied"] + summary["quarantined"] + summary["blank"]).all():
        raise AssertionError(f"review rows lost: {summary.to_dict('records')}")
    return ReviewResult(_per_item(applied), quarantine.reset_index(drop=True), summary)


def apply_reviews(comparisons: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """Comparisons with the reviewers' decisions: `winner` becomes the decision (a, b, tie); a dropped one
    keeps its aggregated winner and is rejected from the pairs as `dropped_by_reviewer`."""
    result = comparisons.copy()
    decided = decisions.set_index("item_id")
    at = result["item_id"].map(pd.Series(np.arange(len(decided)), index=decided.index))
    hit = at.notna().to_numpy()
    if not hit.any():
        return result
    chosen = decided.iloc[at[hit].astype(int).to_numpy()]
    for column in ("review_decision", "adjudicated_by", "review_note"):
        result.loc[hit, column] = chosen[column].to_numpy()
    result.loc[hit, "adjudicated"] = True
    relabel = hit & (result["review_decision"] != "drop").to_numpy()
    result.loc[relabel, "winner"] = result.loc[relabel, "review_decision"]
    return result


def _decided_rows(path: Path, records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows with a decision (lower-cased and stripped; CSV cells unquoted), and how many had none."""
    frame = records.copy()
    if path.suffix.lower() == ".csv":
        frame = frame.map(restore_formulas)
    for column in ("reviewer_id", "note", "response_a", "response_b"):
        if column not in frame.columns:
            frame[column] = None
    decision = frame["review_decision"].map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    blank = decision.isna() | (decision == "")
    raw = rows_as_json(records[~blank]) if len(records) else pd.Series(dtype=object)
    decided = pd.DataFrame(
        {
            "file": pd.Series(str(path), index=frame.index[~blank], dtype=object),
            "line": frame.loc[~blank, "line"].astype("int64"),
            "item_id": frame.loc[~blank, "item_id"],
            "review_decision": decision[~blank],
            "reviewer_id": frame.loc[~blank, "reviewer_id"],
            "note": frame.loc[~blank, "note"],
            "response_a": frame.loc[~blank, "response_a"],
            "response_b": frame.loc[~blank, "response_b"],
            "raw": raw,
        }
    )
    return decided.reset_index(drop=True), int(blank.sum())


def _check(rows: pd.DataFrame, comparisons: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows that apply (decisions in the comparison's own orientation), and the quarantined ones."""
    rejections = Rejections(rows.index)
    reason, quarantine = rejections.reason, rejections.reject
    known = rows["review_decision"].isin(REVIEW_DECISIONS)
    shown = rows["review_decision"].astype(str)
    quarantine(~known, "bad_decision", "'" + shown + "' is not one of a, b, tie, drop", "review_decision")
    current = comparisons.set_index(comparisons["item_id"].astype(str))[["response_a", "response_b"]]
    item = rows["item_id"].map(lambda v: None if pd.isna(v) else identifier(str(v)))  # ingestion's rule for ids
    exists = item.isin(current.index)
    quarantine(~exists, "unknown_item", "no current comparison has item_id " + item.fillna("(empty)"), "item_id")

    # a and b name the sides as the reviewer saw them: check each side the row shows is still the comparison's
    now_a = item.map(current["response_a"]) if exists.any() else pd.Series(None, index=rows.index)
    now_b = item.map(current["response_b"]) if exists.any() else pd.Series(None, index=rows.index)
    has_a, has_b = _shown(rows["response_a"]), _shown(rows["response_b"])
    shows_sides = has_a | has_b
    same = (~has_a | (rows["response_a"] == now_a)) & (~has_b | (rows["response_b"] == now_b))
    swapped = (~has_a | (rows["response_a"] == now_b)) & (~has_b | (rows["response_b"] == now_a)) & ~same
    changed = exists & shows_sides & ~same & ~swapped
    side_a_known = ~has_a | (rows["response_a"] == now_a) | (rows["response_a"] == now_b)
    quarantine(
        changed,
        "changed_item",
        "the comparison's responses are no longer the reviewed ones (its batch changed): review it again",
        pd.Series(np.where(side_a_known, "response_b", "response_a"), index=rows.index),
    )
    rows = rows.copy()
    flip = swapped & shows_sides & reason.isna()
    rows.loc[flip, "review_decision"] = (
        rows.loc[flip, "review_decision"].map({"a": "b", "b": "a"}).fillna(rows.loc[flip, "review_decision"])
    )

    valid = reason.isna()
    disagree = rows[valid].groupby(item[valid])["review_decision"].transform("nunique") > 1
    disagree = disagree.reindex(rows.index, fill_value=False)
    if disagree.any():
        where = rows["file"] + ":" + rows["line"].astype(str) + " says " + rows["review_decision"]
        listed = where[disagree].groupby(item[disagree]).transform(lambda s: "; ".join(s))
        quarantine(disagree, "contradictory_review", "reviews of this item disagree: " + listed, "review_decision")

    bad = reason.notna()
    rejected = rows[bad].assign(reason=reason[bad], field=rejections.field[bad], detail=rejections.detail[bad])[
        QUARANTINE_COLUMNS
    ]
    return rows[~bad].assign(item_id=item[~bad]), rejected


def _shown(side: pd.Series) -> pd.Series:
    """Whether a row shows this side: a value that isn't missing or empty."""
    return side.map(lambda v: isinstance(v, (list, dict, np.ndarray)) or not (pd.isna(v) or v == "")).astype(bool)


def _per_item(rows: pd.DataFrame) -> pd.DataFrame:
    """One decision per item (its reviews agree); every reviewer named, every note kept."""
    if rows.empty:
        return pd.DataFrame({column: pd.Series(dtype=object) for column in DECISION_COLUMNS})
    reviewer = rows["reviewer_id"].map(lambda v: UNKNOWN_REVIEWER if pd.isna(v) or not str(v).strip() else str(v))
    note = rows["note"].map(lambda v: None if pd.isna(v) or not str(v).strip() else str(v))
    grouped = rows.assign(reviewer=reviewer, note=note).groupby("item_id", sort=False)
    return pd.DataFrame(
        {
            "review_decision": grouped["review_decision"].first(),
            "adjudicated_by": grouped["reviewer"].agg(lambda s: ",".join(sorted(set(s)))),
            "review_note": grouped["note"].agg(lambda s: " | ".join(s.dropna()) or None),
        }
    ).reset_index()[DECISION_COLUMNS]
