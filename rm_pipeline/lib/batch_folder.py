"""Which entries of a folder are batches to read: regular files with a table suffix, inside the folder, not
being written; every other entry is skipped with its reason, so the counts add up. Annotation, review and
evaluation folders, the folder sensor and `rm-pipeline validate` all list folders through here. Knows nothing
of Dagster.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from rm_pipeline.lib.table_files import (
    FILE_KINDS,
    SETTLE_SECONDS,
    SUPPORTED_SUFFIXES,
    AnnotationFileError,
    file_state,
)

SKIPPED_COLUMNS = ["file", "reason", "detail"]


@dataclass
class FolderFiles:
    """A folder's files: the batches ready to read, the ones still being written, and every entry left out
    (``SKIPPED_COLUMNS``: file, reason, detail; the ones still being written among them)."""

    ready: list[Path]
    busy: list[Path]
    skipped: list[dict]


def list_batch_files(directory: Path | str, settle_seconds: float = SETTLE_SECONDS) -> list[Path]:
    """Annotation batch files in a folder that are ready to read, sorted by name (see ``folder_files``)."""
    return folder_files(directory, settle_seconds).ready


def batch_files(directory: Path | str, settle_seconds: float = SETTLE_SECONDS) -> tuple[list[Path], list[Path]]:
    """Batch files ready to read, and batch files still being written (see ``folder_files``)."""
    listing = folder_files(directory, settle_seconds)
    return listing.ready, listing.busy


def folder_files(
    directory: Path | str, settle_seconds: float = SETTLE_SECONDS, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES
) -> FolderFiles:
    """The regular files of a folder with a table suffix, sorted by name; every other entry is skipped with
    its reason (``skip_reason``). A link may be read if it stays inside the folder.

    A file modified in the last `settle_seconds` is waited for (once, at most that long); if it changes
    meanwhile it is still being written (busy, and skipped as `still_being_written`). 0: no wait.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AnnotationFileError(directory, "annotation folder does not exist")
    inside, files, skipped = os.path.realpath(directory), [], []
    for path in sorted(directory.iterdir()):
        reason = skip_reason(path, inside, suffixes)
        if reason:
            skipped.append({"file": str(path), "reason": reason[0], "detail": reason[1]})
        else:
            files.append(path)
    return settle(files, skipped, settle_seconds)


def settle(files: list[Path], skipped: list[dict], settle_seconds: float = SETTLE_SECONDS) -> FolderFiles:
    """The files to read once settled (``settled_files``); those still being written join `skipped`."""
    ready, busy = settled_files(files, settle_seconds)
    skipped = skipped + [{"file": str(path), "reason": BUSY, "detail": _BUSY_DETAIL} for path in busy]
    return FolderFiles(ready, busy, sorted(skipped, key=lambda row: row["file"]))


BUSY = "still_being_written"
_BUSY_DETAIL = f"modified in the last {SETTLE_SECONDS:g} s and still changing: left for the next run"
_LOCK_FILE = re.compile(r"~\$.*|\.~lock\..*#")  # Office's, LibreOffice's: written while a file is open
_TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial")
_NOTE_FOR_PEOPLE = re.compile(r"(README|LICEN[CS]E|NOTICE)(\..*)?|.*\.(md|txt|rst)", re.IGNORECASE)
NOTE_FOR_PEOPLE = "documentation"  # a skip reason that is routine, not a problem (logged quietly)


def skip_reason(path: Path, inside: str | None = None, suffixes=SUPPORTED_SUFFIXES) -> tuple[str, str] | None:
    """Why a folder entry is not a batch to read (reason, detail), or None. `inside`: the folder's real path,
    which a link must not leave; None for a file named on the command line (links followed, any suffix)."""
    name = path.name
    if _LOCK_FILE.fullmatch(name):
        return "lock_file", "an editor's lock file, written while the file is open"
    if inside is None:
        return None
    if name.startswith(".") or path.suffix.lower() in _TEMPORARY_SUFFIXES:
        return "temporary_name", "a hidden or temporary name (.name, .tmp, .part, .partial): rename it into place"
    target = os.path.realpath(path)
    if path.is_symlink() and os.path.commonpath([inside, target]) != inside:
        return "link_outside_folder", f"a link to {target}, outside the folder: copy the file in instead"
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return "broken_link", f"can't be opened: {error.strerror}"
    if stat.S_ISDIR(mode):
        return "folder", "sub-folders are not read"
    if not stat.S_ISREG(mode):
        return "not_regular_file", f"{FILE_KINDS.get(stat.S_IFMT(mode), 'a socket')}, not a regular file"
    if path.suffix.lower() not in suffixes and _NOTE_FOR_PEOPLE.fullmatch(name):
        return NOTE_FOR_PEOPLE, "a note for people (README, LICENSE, .md, .txt), not a batch"
    if path.suffix.lower() not in suffixes:
        return "unsupported_type", f"{''.join(path.suffixes) or 'no suffix'}: read are {', '.join(suffixes)}"
    return None


def settled_files(files: list[Path], settle_seconds: float = SETTLE_SECONDS) -> tuple[list[Path], list[Path]]:
    """The files that are not being written, and those still changing after one wait of `settle_seconds`."""
    states = {path: file_state(path) for path in files}
    now = time.time_ns()
    young = [path for path, state in states.items() if state is None or now - state[1] < settle_seconds * 1e9]
    if not young:
        return files, []
    newest = max((states[path][1] for path in young if states[path]), default=now)
    time.sleep(min(settle_seconds, max(0.0, settle_seconds - (now - newest) / 1e9)))
    busy = [path for path in young if states[path] is None or file_state(path) != states[path]]
    return [path for path in files if path not in busy], busy
