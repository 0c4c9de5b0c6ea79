"""`rm-pipeline`: run the asset graph headless, check annotation files, evaluate and use a reward model, open the UI."""

from __future__ import annotations

import argparse
import os
import sys

from rm_pipeline.cli import dpo, models, run, scoring, ui, validate
from rm_pipeline.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_GATE_FAILED,
    EXIT_NOT_READY,
    InputError,
    input_errors,
)
from rm_pipeline.cli.ui import UI_STOP_SECONDS

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BROKEN_PIPE",
    "EXIT_GATE_FAILED",
    "EXIT_NOT_READY",
    "UI_STOP_SECONDS",
    "InputError",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: one sub-command per command group's module, each setting its `handler`."""
    parser = argparse.ArgumentParser(prog="rm-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run.add_command(commands)
    scoring.add_commands(commands)  # evaluate, score
    validate.add_command(commands)
    models.add_commands(commands)  # models, lineage
    dpo.add_command(commands)
    ui.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run_command(argv)
        finally:
            sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return EXIT_BROKEN_PIPE


def _run_command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except input_errors() as error:
        print(f"rm-pipeline {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
