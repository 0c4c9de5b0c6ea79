"""`rm-pipeline models` and `rm-pipeline lineage`: what the storage root holds, and where a model came from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rm_pipeline.cli.common import InputError, home_options, model_dir, storage_root, use_home
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
    from rm_pipeline.lib.model_registry import format_models, list_models

    root = storage_root(args.home)
    rows = list_models(root / "models", root / "reports")
    print(json.dumps(rows, indent=2) if args.json else format_models(rows))
    return 0


def show_lineage(args: argparse.Namespace) -> int:
    """Read from the instance under the storage root, not a run's: nothing is materialised."""
    use_home(args.home)
    import dagster as dg

    from rm_pipeline.lib.lineage import lineage_report, render
    from rm_pipeline.lib.model_files import LINEAGE_FILE
    from rm_pipeline.lineage_reader import LineageNotFoundError, model_lineage

    model = model_dir(args)
    if not model.is_dir():
        raise InputError(f"{model}: no such model directory")
    with dg.DagsterInstance.get() as instance:
        try:
            facts = model_lineage(instance, model)
        except LineageNotFoundError as error:
            raise InputError(f"{error} (instance {DAGSTER_HOME.get()})") from None
    card_file, card = model / LINEAGE_FILE, None
    if card_file.is_file():
        try:
            card = json.loads(card_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{card_file}: not a readable lineage file ({error})") from None
    report = lineage_report(facts, card)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0
