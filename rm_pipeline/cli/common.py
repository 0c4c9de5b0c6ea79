"""What the commands share: exit statuses, the options every command group declares once (parent parsers),
the options generated from a settings dataclass, and where the storage root and its current model are."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from rm_pipeline.lib.environment import DAGSTER_HOME, HOME

EXIT_GATE_FAILED = 2
EXIT_BAD_INPUT = 3
EXIT_NOT_READY = 4
# No telemetry calls (the pipeline runs without a network); no "join the community" modal over the first visit
INSTANCE_SETTINGS = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
EXIT_BROKEN_PIPE = 128 + 13  # as a tool killed by SIGPIPE: its reader went away

Settings = TypeVar("Settings")


class InputError(Exception):
    """A path, model or option the command can't use; printed as one line, exit status 3."""


def positive_int(text: str) -> int:
    value = int(text) if text.strip().lstrip("+").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def home_options() -> argparse.ArgumentParser:
    """`--home`, declared once for every command that reads or writes a storage root."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--home", help=f"storage root (default: ${HOME.name}, else ./{HOME.default})")
    return parent


def model_options() -> argparse.ArgumentParser:
    """`--model` (and `--home`, whose current model is the default), for the commands that use a reward model."""
    parent = argparse.ArgumentParser(add_help=False, parents=[home_options()])
    parent.add_argument(
        "--model", type=Path, help="a trained reward model directory (default: <storage root>/models/current)"
    )
    return parent


def settings_options(
    command: argparse.ArgumentParser,
    settings_type: type,
    names: Iterable[str],
    types: Mapping[str, Callable[[str], Any]] | None = None,
) -> None:
    """One `--option` per named field of a settings dataclass, its help text, default and range as the field
    declares them, its choices from a `Literal` type; a number outside its range is a bad option (status 2, one
    line naming the option and the range). `types` overrides the parser of a value (e.g. `positive_int`).
    Unset options stay None: the dataclass's default applies (`settings_from_args`)."""
    from rm_pipeline.lib.settings import allowed

    fields = {field.name: field for field in dataclasses.fields(settings_type)}
    hints = typing.get_type_hints(settings_type)
    for name in names:
        field, hint = fields[name], hints[name]
        help_text = f"{field.metadata.get('help', '')} ({allowed(settings_type, name)}; default: {field.default})"
        help_text = help_text.replace("%", "%%")
        if typing.get_origin(hint) is typing.Literal:
            command.add_argument(f"--{name.replace('_', '-')}", choices=typing.get_args(hint), help=help_text)
        else:
            kind = (types or {}).get(name) or (_within_range(settings_type, name) if hint in (int, float) else hint)
            command.add_argument(f"--{name.replace('_', '-')}", type=kind, help=help_text)


def _within_range(settings_type: type, name: str) -> Callable[[str], Any]:
    """An option's parser: the number, within the range its setting declares; else argparse's one-line error."""
    from rm_pipeline.lib.settings import SettingError, parse_setting

    def parse(text: str) -> Any:
        try:
            return parse_setting(settings_type, name, text, "")
        except SettingError as error:
            raise argparse.ArgumentTypeError(str(error).strip()) from None

    parse.__name__ = typing.get_type_hints(settings_type)[name].__name__  # argparse names the type in its errors
    return parse


def settings_from_args(settings_type: type[Settings], args: argparse.Namespace, names: Iterable[str]) -> Settings:
    """The settings dataclass with the options given on the command line, its defaults for the others."""
    return settings_type(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})


def storage_root(home: str | None) -> Path:
    """--home, else $RM_PIPELINE_HOME, else ./.rm_pipeline_home; a path that is there but not a folder is named."""
    from rm_pipeline.lib.locations import default_home

    root = Path(home).resolve() if home else default_home()
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: not a folder, so not a storage root (--home, ${HOME.name})")
    return root


def check_environment() -> None:
    """Every environment variable the code location reads, checked as it checks them when it loads: the first
    bad one is a SettingError, one line naming it, its value and what it may be."""
    from rm_pipeline.automation import check_cron
    from rm_pipeline.lib.automation import AutomationSettings, FolderWatchSettings
    from rm_pipeline.lib.environment import check_environment as check_declared

    check_declared()
    FolderWatchSettings.from_environment()
    check_cron(AutomationSettings.from_environment().retrain_cron)


def use_home(home: str | None, create: bool = True) -> Path:
    """Pin the storage root and the Dagster instance beneath it, so the UI sees headless runs. First, every
    environment variable is checked (a bad one is one line, exit 3, before anything starts). `create`: make
    them (a command that writes); else a root that isn't there is named, nothing created (a command that reads)."""
    from rm_pipeline.lib.storage_lock import lock_file_problem, stale_content

    check_environment()
    root = storage_root(home)
    os.environ[HOME.name] = str(root)
    dagster_home = Path(DAGSTER_HOME.get() or root / "dagster")
    os.environ[DAGSTER_HOME.name] = str(dagster_home)
    if not create:
        if not root.is_dir():
            raise InputError(f"{root}: no storage root there (nothing has run on it); check --home, ${HOME.name}")
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)  # DAGSTER_HOME may lie elsewhere
        dagster_home.mkdir(parents=True, exist_ok=True)
        settings = dagster_home / "dagster.yaml"
        if not settings.exists():
            settings.write_text(INSTANCE_SETTINGS)
        tempfile.TemporaryFile(dir=root).close()  # a run writes under the root: find out now, not mid-run
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        raise InputError(f"storage root {root} can't be written: {where}{error.strerror or error}") from None
    problem = lock_file_problem(root)
    if problem:
        raise InputError(problem)
    stale = stale_content(root)
    if stale:
        print(f"rm-pipeline: {stale}", file=sys.stderr)
    return root


def model_dir(args: argparse.Namespace) -> Path:
    """--model, else the storage root's current model (the last one promoted)."""
    from rm_pipeline.lib.model_registry import CURRENT, broken_link

    if args.model is not None:
        return args.model
    current = storage_root(args.home) / "models" / CURRENT
    broken = broken_link(current)
    if broken:
        raise InputError(f"{broken}; give --model DIR")
    if not current.is_dir():
        raise InputError(
            f"{current}: no current model (none promoted yet under this storage root); "
            "run `rm-pipeline run` or give --model DIR"
        )
    return current


def input_errors() -> tuple[type[Exception], ...]:
    """What bad input raises: exit status 3 with its message, never a traceback."""
    from rm_pipeline.lib.dpo import DpoInputError
    from rm_pipeline.lib.scoring import CandidateFileError
    from rm_pipeline.lib.settings import SettingError
    from rm_pipeline.lib.table_files import AnnotationFileError

    return InputError, AnnotationFileError, CandidateFileError, DpoInputError, SettingError


def print_quarantine(quarantine, suffix: str = "") -> None:
    """Each quarantined row on stderr as ``file:line: field: reason (detail)`` (no field: the whole line)."""
    for row in quarantine.itertuples():
        field = f"{row.field}: " if row.field else ""
        print(f"{row.file}:{row.line}: {field}{row.reason} ({row.detail}){suffix}", file=sys.stderr)


def progress(total: int, description: str):
    """A progress bar on stderr, so stdout stays machine-readable."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="seq", file=sys.stderr, mininterval=1.0)
