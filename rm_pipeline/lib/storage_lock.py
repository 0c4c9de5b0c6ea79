"""One run at a time per storage root: an exclusive lock on `<root>/.run.lock` that names its holder."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from rm_pipeline.lib.model_files import read_json_object

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


def lock_file_problem(root: str | os.PathLike) -> str | None:
    """What makes the root's lock file unusable (it is a folder, or can't be opened), None when it is fine."""
    path = Path(root).resolve() / LOCK_FILE
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return f"{path} is not a lock file (a folder or a link): remove it; no run holds the root through it"
    try:
        open(path, "rb").close() if path.exists() else None  # noqa: SIM115 (only opened to know it can be)
    except OSError as error:
        return f"{path} can't be opened: {error.strerror or error}"
    return None


def stale_content(root: str | os.PathLike) -> str | None:
    """Said when the lock file holds something that names no run (not UTF-8, not a JSON object): the next run
    takes it as stale."""
    path = Path(root).resolve() / LOCK_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as lock:
        text = lock.read().strip()
        if not text or _read(lock):
            return None
    return f"{path} names no run (not a JSON object): taken as stale"


def peek(root: str | os.PathLike) -> tuple[bool, dict]:
    """Whether another process holds the root now, and the holder its lock file names (a holder that died
    holding it is still named there). Takes nothing: the run's storage resource is what holds the root."""
    path = Path(root).resolve() / LOCK_FILE
    if not path.is_file():
        return False, {}
    with open(path, encoding="utf-8", errors="replace") as lock:  # read only: a read-only root can be peeked at
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read(lock)
        holder = _read(lock)
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False, holder


def _read(lock) -> dict:
    """The holder the lock file names; {} for anything else (not UTF-8, not JSON, not an object): a stale or
    foreign file that names no run, taken over like an empty one."""
    lock.seek(0)
    try:
        holder = json.loads(lock.read() or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return {}
    return holder if isinstance(holder, dict) else {}


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
    problem = lock_file_problem(root)
    if problem:
        raise StorageInUse(problem)
    try:
        root.mkdir(parents=True, exist_ok=True)
        # held past this block; not inherited. Undecodable bytes left by a foreign file read as no holder.
        lock = open(root / LOCK_FILE, "a+", encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as error:
        raise StorageInUse(f"storage root {root} can't be written: {error.strerror or error}") from None
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


# ---------------------------------------------------------------- which Dagster instance the root belongs to

INSTANCE_FILE = ".instance.json"


class ForeignInstance(RuntimeError):
    """The run's Dagster instance is not the one that keeps the root's history (its gate results)."""


def check_instance(root: str | os.PathLike, home: str, instance_id: Callable[[bool], str | None], throwaway: bool):
    """The root belongs to the first lasting Dagster instance that ran on it (`<root>/.instance.json` names
    its id and home): a run from any other is refused, since it can't see the gates that failed there. A
    throwaway instance (in memory, or Dagster's temporary one when DAGSTER_HOME is unset) claims nothing and
    may use only an unclaimed root. `instance_id(create)` reads the instance's id, making one if asked."""
    path = Path(root).resolve() / INSTANCE_FILE
    claim = _read_claim(path)
    if claim is None and not throwaway:
        claim = _claim(path, {"instance_id": instance_id(True), "dagster_home": str(home)})
    if claim is None or claim["instance_id"] == instance_id(False):
        return
    kind = "a throwaway Dagster instance (DAGSTER_HOME unset?)" if throwaway else f"the Dagster instance at {home}"
    if not throwaway and str(home) == claim.get("dagster_home"):
        kind = f"another Dagster instance at {home} (its storage replaced?)"
    raise ForeignInstance(
        f"storage root {Path(root).resolve()} belongs to the Dagster instance at {claim.get('dagster_home')}, this "
        f"run is in {kind}, which can't see the root's runs and gates: set DAGSTER_HOME={claim.get('dagster_home')}"
        f" (or remove {path} if this instance is now the one that keeps the root's history)"
    )


def _read_claim(path: Path) -> dict | None:
    try:
        claim = read_json_object(path, "claim")
    except ValueError as error:
        raise ForeignInstance(f"{error}: restore it, or remove it to let this run claim the root") from None
    if claim is None:
        return None
    if not isinstance(claim.get("instance_id"), str):
        raise ForeignInstance(f"{path} names no instance_id: restore it, or remove it to let this run claim the root")
    return claim


def _claim(path: Path, claim: dict) -> dict:
    """Write the claim unless another run wrote one first (then that one stands)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(claim), encoding="utf-8")
        os.link(partial, path)  # whole or not there: fails if another run's claim is there already
    except FileExistsError:
        return _read_claim(path) or claim
    except OSError as error:
        raise ForeignInstance(f"storage root {path.parent} can't be written: {error.strerror or error}") from None
    finally:
        with suppress(OSError):
            partial.unlink()
    return claim
