"""Fingerprints: the content hashes that are the pipeline's data versions, and the annotation folder's.

- ``table_fingerprint``: a table's content, the data version of every table asset;
- ``split_data_version``: what training sees of the split, the version a reward model is trained on;
- ``settings_fingerprint``: a settings dataclass's values (a training run's name carries it);
- ``fingerprint_folder``: which batch files the annotation folder holds, each one's sha256 and row count,
  and what changed since the last look. A file is read (hashed) again only when its size, modification
  time or inode changed since the previous state; otherwise its sha256 and row count are carried over, so
  looking at an unchanged folder costs one `stat` per file and reads nothing.

Knows nothing of Dagster.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rm_pipeline.lib.batch_folder import folder_files
from rm_pipeline.lib.pairs import tie_pairs
from rm_pipeline.lib.table_files import SETTLE_SECONDS, UTF8_BOM, AnnotationFileError, open_regular_file

# Everything training reads from a pair: a change in any of them is new training data.
TRAINING_COLUMNS = ["pair_id", "prompt", "conversational", "chosen", "rejected", "strength", "split"]


def table_fingerprint(table: pd.DataFrame) -> str:
    """A content hash: the asset's data version, so lineage says which data a model saw."""
    try:
        hashed = pd.util.hash_pandas_object(table, index=False).to_numpy()
    except TypeError:  # cells holding lists or dicts (chat messages): hash their text
        hashed = pd.util.hash_pandas_object(table.astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes() + ",".join(table.columns).encode()).hexdigest()[:16]


def split_data_version(split: pd.DataFrame) -> str:
    """The content training sees, pair by pair and side by side: the version a reward model is trained on.
    A pair's target preference counts once there are tie pairs; without them every pair is preferred, as
    before the column existed, so the version stays that of the same pairs then."""
    columns = TRAINING_COLUMNS + (["preference"] if tie_pairs(split).any() else [])
    return table_fingerprint(split[columns].sort_values("pair_id", kind="stable"))


def settings_fingerprint(settings) -> str:
    """A short hash of a settings dataclass's values: the same settings, the same fingerprint."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()).hexdigest()[:8]


CHUNK_BYTES = 1 << 20  # files are hashed a block at a time, never loaded whole (bar .json lists)


@dataclass
class FolderFingerprint:
    version: str  # sha256 over every batch's (name, size, sha256), sorted by name
    state: dict[str, dict]  # file name -> {size, mtime_ns, inode, sha256, rows}: the next look's `previous`
    added: list[str] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)  # {file, old_sha256, new_sha256}: a new version of a batch
    removed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # still being written: left for the next look
    hashed: list[str] = field(default_factory=list)  # files read this time (the others' hashes were carried over)
    skipped: list[dict] = field(default_factory=list)  # entries that are not batches: file, reason, detail

    @property
    def changes(self) -> dict:
        return {"added": self.added, "changed": self.changed, "removed": self.removed}


def fingerprint_folder(
    directory: Path | str,
    previous: Mapping[str, Mapping] | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    digest: Callable[[Path], tuple[str, int | None]] | None = None,
) -> FolderFingerprint:
    """The folder's batch files compared with the `previous` state (None: first look).

    Never waits: a file modified in the last `settle_seconds`, or one that changes while being hashed,
    is pending, and keeps its previous entry (if any) until a later look finds it settled. `digest`
    (default ``digest_batch_file``) gives a file's sha256 and row count.
    """
    directory = Path(directory)
    previous = dict(previous or {})
    digest = digest or digest_batch_file
    listing = folder_files(directory, settle_seconds=0)  # 0: never wait; young files are pending below
    files = listing.ready
    now = time.time_ns()
    state, pending, hashed = {}, [], []
    for path in files:
        stat, known = _stat(path), previous.get(path.name)
        if stat is None:  # deleted since it was listed
            continue
        settled = not 0 <= now - stat["mtime_ns"] < settle_seconds * 1e9  # an mtime in the future: a skewed clock
        if settled and known is not None and all(known.get(key) == stat[key] for key in stat):
            state[path.name] = dict(known)
            continue
        if settled:
            try:
                sha256, rows = digest(path)
            except FileNotFoundError:  # deleted while being read
                continue
            except OSError as error:
                raise AnnotationFileError(path, f"can't be read: {error.strerror}") from error
            if _stat(path) == stat:
                state[path.name] = {**stat, "sha256": sha256, "rows": rows}
                hashed.append(path.name)
                continue
        pending.append(path.name)  # still being written: its last version stands until it settles
        if known is not None:
            state[path.name] = dict(known)
    return FolderFingerprint(
        version=folder_version(state),
        state=state,
        added=sorted(set(state) - set(previous)),
        changed=[
            {"file": name, "old_sha256": previous[name]["sha256"], "new_sha256": state[name]["sha256"]}
            for name in sorted(set(state) & set(previous))
            if state[name]["sha256"] != previous[name]["sha256"]
        ],
        removed=sorted(set(previous) - set(state)),
        pending=sorted(pending),
        hashed=hashed,
        skipped=listing.skipped,
    )


def folder_version(state: Mapping[str, Mapping]) -> str:
    """sha256 over the sorted (name, size, sha256) of every batch: equal folders, equal versions."""
    hasher = hashlib.sha256()
    for name in sorted(state):
        hasher.update(f"{name}\0{state[name]['size']}\0{state[name]['sha256']}\n".encode())
    return hasher.hexdigest()


def _stat(path: Path) -> dict | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def digest_batch_file(path: Path | str) -> tuple[str, int | None]:
    """A batch file's sha256 and its number of records, from one streamed read.

    Rows are counted as the reader (`rm_pipeline.lib.annotations`) sees them, before validation:
    JSONL (and a .json file that isn't a list): lines that aren't blank; CSV: records of the csv
    module that aren't blank lines, minus the header; a .json list: its elements (the file is parsed
    whole, as the reader does); Parquet: `num_rows` of its footer. None when the file can't be parsed
    that far (ingestion will say why).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    hasher = hashlib.sha256()
    with open_regular_file(path) as file:  # a batch swapped for a FIFO or /dev/zero since the listing: refused
        chunks = _hashed_chunks(file, hasher)
        if suffix == ".csv":
            rows = _count_csv_records(chunks)
        elif suffix == ".json":
            rows = _count_json(b"".join(chunks))
        elif suffix == ".parquet":
            for _ in chunks:
                pass
            rows = _parquet_rows(path)
        else:
            rows = _count_text_lines(chunks)
    return hasher.hexdigest(), rows


def _hashed_chunks(file: BinaryIO, hasher) -> Iterator[bytes]:
    """The file's blocks, each fed to the hash; exhausted afterwards whatever the consumer stopped at."""
    while block := file.read(CHUNK_BYTES):
        hasher.update(block)
        yield block


def _count_text_lines(chunks: Iterator[bytes]) -> int:
    """Lines that aren't blank (`line.strip()`, as the JSONL reader counts them); a leading BOM ignored."""
    count, tail, first = 0, b"", True
    for block in chunks:
        if first:
            block, first = block.removeprefix(UTF8_BOM), False
        lines = (tail + block).split(b"\n")
        tail = lines.pop()
        count += sum(map(bool, map(bytes.strip, lines)))
    return count + bool(tail.strip())


def _count_csv_records(chunks: Iterator[bytes]) -> int | None:
    text = io.TextIOWrapper(_ChunkStream(chunks), encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        records = sum(1 for record in csv.reader(text) if record)
    except csv.Error:
        return None
    finally:
        for _ in chunks:  # the rest of the file still goes into the hash
            pass
    return max(records - 1, 0)


def _count_json(data: bytes) -> int | None:
    text = data.removeprefix(UTF8_BOM)
    if text.lstrip()[:1] != b"[":  # read as JSON lines, like the reader does
        return _count_text_lines(iter([text]))
    try:
        elements = json.loads(text.decode("utf-8", "surrogateescape"))
    except (json.JSONDecodeError, RecursionError):
        return None
    return len(elements) if isinstance(elements, list) else None


def _parquet_rows(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError):
        return None


class _ChunkStream(io.RawIOBase):
    """An iterator of byte blocks as a readable binary stream (for the csv module's text reader)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size
