"""One run at a time per storage root: an exclusive lock on `<root>/.run.lock` that names its holder."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

LOCK_FILE = ".run.lock"
_held: dict[Path, object] = {}  # roots this process holds, with their open lock file
Abandoned = TypeVar("Abandoned")


class StorageInUse(RuntimeError):
    """Another process holds the storage root."""


def describe(holder: dict) -> str:
    who = f"run {holder['run_id']}" if holder.get("run_id") else "another run"
    pid = f" (pid {holder['pid']})" if holder.get("pid") else ""
    since = f" since {holder['since']}" if holder.get("since") else ""
    return who + pid + since


def in_use(root: Path, holder: dict) -> str:
    return (
        f"storage root {root} is in use by {describe(holder)}; wait for it to finish, or use another storage root "
        f"(--home, $RM_PIPELINE_HOME)"
    )


def peek(root: str | os.PathLike) -> tuple[bool, dict]:
    """Whether another process holds the root now, and the holder its lock file names (a holder that died
    holding it is still named there). Takes nothing: the run's storage resource is what holds the root."""
    path = Path(root).resolve() / LOCK_FILE
    if not path.exists():
        return False, {}
    with open(path, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read(lock)
        holder = _read(lock)
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False, holder


def _read(lock) -> dict:
    lock.seek(0)
    try:
        return json.loads(lock.read() or "{}")
    except json.JSONDecodeError:
        return {}


def _write(lock, holder: dict) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps(holder))
    lock.flush()


@contextmanager
def hold_storage(root: str | os.PathLike, **holder):
    """Hold the root while the block runs, or raise StorageInUse at once naming the holder. Yields what a
    previous holder left behind: empty unless it died holding the root (its run never finished).

    Re-entrant within a process (the run inside `rm-pipeline run` holds what the command took): the inner
    holder only adds its details (e.g. its run id) to the lock file."""
    root = Path(root).resolve()
    holder = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **holder}
    if root in _held:
        lock = _held[root]
        _write(lock, {**_read(lock), **{k: v for k, v in holder.items() if k != "since"}})
        yield {}
        return
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held past this block; not inherited)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        current = _read(lock)
        lock.close()
        raise StorageInUse(in_use(root, current)) from None
    previous = _read(lock)
    _write(lock, holder)
    _held[root] = lock
    try:
        yield previous
    finally:
        del _held[root]
        _write(lock, {})  # a clean release leaves nothing behind
        lock.close()  # closing releases the lock; the kernel releases it too if the process dies


@contextmanager
def hold_for_run(root: str | os.PathLike, run_id: str, fail_abandoned: Callable[[dict], Abandoned | None]):
    """Hold the root for run `run_id`: the one place the pipeline takes it (the storage resource). A previous
    holder that died holding the root is handed to `fail_abandoned` (which reports its run failed); the block gets
    what that returns, None when there was none. A run resumed after its own process died finds its own id: it
    goes on, not failed."""
    with hold_storage(root, run_id=run_id) as previous:
        abandoned = previous.get("run_id") not in (None, run_id)
        yield fail_abandoned(previous) if abandoned else None
