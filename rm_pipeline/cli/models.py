"""`rm-pipeline models` and `rm-pipeline lineage`: what the storage root holds, and where a model came from."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rm_pipeline.cli.common import EXIT_BAD_INPUT, InputError, home_options, model_dir, storage_root, use_home
from rm_pipeline.lib.environment import DAGSTER_HOME


def add_commands(commands) -> None:
    models = commands.add_parser(
        "models",
        parents=[home_options()],
        help="list every trained model: status, data version, accuracy, verdict",
    )
    models.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    models.set_defaults(handler=list_trained_models)

    lineage = commands.add_parser(
        "lineage",
        parents=[home_options()],
        help="the stages and batch files a model came from; flags batch files changed on disk since",
    )
    lineage.add_argument("model", nargs="?", type=Path, help="a model directory (default: <root>/models/current)")
    lineage.add_argument("--json", action="store_true", help="print one JSON object")
    lineage.set_defaults(handler=show_lineage)


def list_trained_models(args: argparse.Namespace) -> int:
    """The models listed; a link under `models/` that leads nowhere is named on stderr after them (exit 3)."""
    from rm_pipeline.lib.model_registry import broken_links, format_models, list_models

    root = storage_root(args.home)
    rows = list_models(root / "models", root / "reports")
    print(json.dumps(rows, indent=2) if args.json else format_models(rows))
    broken = broken_links(root / "models")
    for problem in broken:
        print(f"rm-pipeline models: {problem}", file=sys.stderr)
    return EXIT_BAD_INPUT if broken else 0


def show_lineage(args: argparse.Namespace) -> int:
    """Read from the instance under the storage root, not a run's: nothing is materialised, nothing created."""
    root = use_home(args.home, create=False)
    import dagster as dg

    from rm_pipeline.lib.lineage import lineage_report, render
    from rm_pipeline.lineage_reader import LineageNotFoundError, model_lineage

    model = model_dir(args)
    if not model.is_dir():
        raise InputError(f"{model}: no such model directory")
    card = read_card(model)
    if not Path(DAGSTER_HOME.get()).is_dir():
        raise InputError(f"{DAGSTER_HOME.get()}: no Dagster instance there (${DAGSTER_HOME.name}); nothing has run")
    try:
        with dg.DagsterInstance.get() as instance:
            facts = model_lineage(instance, model, root)
    except LineageNotFoundError as error:
        raise InputError(f"{error} (instance {DAGSTER_HOME.get()})") from None
    except (OSError, sqlalchemy_errors()) as error:  # e.g. a read-only root: its instance can't be opened
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"the Dagster instance of storage root {root} can't be read: {first_line}") from None
    report = lineage_report(facts, card)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


def read_card(model: Path) -> dict | None:
    """The model's lineage.json (what training saw), None when it has none; one that isn't a JSON object is named."""
    from rm_pipeline.lib.model_files import LINEAGE_FILE, read_json_object

    return read_json_object(model / LINEAGE_FILE, "lineage file", InputError)


def sqlalchemy_errors() -> type[Exception]:
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError
