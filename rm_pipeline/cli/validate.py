"""`rm-pipeline validate`: ingest, aggregate and validate annotation files without touching the storage root."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rm_pipeline.cli.common import InputError, positive_int, print_quarantine


def add_command(commands) -> None:
    from typing import get_args

    from rm_pipeline.lib.aggregation import AggregationMethod, AggregationSettings
    from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH

    validate = commands.add_parser("validate", help="ingest, aggregate and validate files; print counts as JSON")
    validate.add_argument("files", nargs="+", type=Path, help="batch files, or folders read as the annotation folder")
    # checked by the command, not by argparse: an unknown method is bad input (status 3), not bad usage
    validate.add_argument(
        "--method",
        help=f"aggregation method: {' or '.join(get_args(AggregationMethod))} (default: {AggregationSettings.method})",
    )
    validate.add_argument(
        "--max-length",
        type=positive_int,
        help=f"token limit of a pair under the base model's tokenizer (default: {DEFAULT_MAX_LENGTH})",
    )
    validate.set_defaults(handler=validate_files)


def validate_files(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace
    from functools import partial
    from typing import get_args

    from rm_pipeline.lib.aggregation import (
        AggregationMethod,
        AggregationSettings,
        ReviewThresholds,
        aggregate_votes,
        review_queue,
    )
    from rm_pipeline.lib.annotations import read_annotations
    from rm_pipeline.lib.locations import default_base_model_name
    from rm_pipeline.lib.pairs import PairSettings, build_pairs, rejection_counts
    from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH, load_tokenizer, token_lengths

    aggregation = AggregationSettings()
    if args.method and args.method not in get_args(AggregationMethod):
        raise InputError(f"--method {args.method!r}: use one of {', '.join(get_args(AggregationMethod))}")
    listing = files_to_read(args.files)
    for row in listing.skipped:
        print(f"rm-pipeline validate: {row['file']}: skipped: {row['reason']} ({row['detail']})", file=sys.stderr)
    if not listing.ready:
        raise InputError(f"no file to read: all {len(listing.skipped)} skipped")
    ingested = read_annotations(listing.ready)
    print_quarantine(ingested.quarantine)
    comparisons = aggregate_votes(
        ingested.votes, **asdict(replace(aggregation, method=args.method or aggregation.method))
    ).comparisons
    queue = review_queue(comparisons, **asdict(ReviewThresholds()))
    count_tokens = partial(token_lengths, load_tokenizer(default_base_model_name()))
    kept, rejected = build_pairs(
        comparisons,
        queue["item_id"],
        count_tokens,
        args.max_length or DEFAULT_MAX_LENGTH,
        PairSettings().include_disputed,
    )
    print(
        json.dumps(
            {
                "rows_read": ingested.rows_read,  # = votes + quarantined
                "votes": len(ingested.votes),
                "quarantined": {k: int(v) for k, v in ingested.quarantine["reason"].value_counts().items()},
                "comparisons": len(comparisons),
                "pairs_kept": len(kept),
                "pairs_rejected": rejection_counts(rejected),
                "review_queue": len(queue),
                "skipped": listing.skipped,  # not read: file, reason, detail
            },
            indent=2,
        )
    )
    return 0


def files_to_read(paths: list[Path]):
    """The files named, and each folder's files by the annotation folder's rules, once settled (as the sensor
    waits for them); lock files (a shell glob picks them up) and files still being written are skipped."""
    from rm_pipeline.lib.batch_folder import folder_files, settle, skip_reason

    files, skipped = [], []  # in the order given
    for path in paths:
        if path.is_dir():
            listing = folder_files(path, settle_seconds=0)
            files, skipped = files + listing.ready, skipped + listing.skipped
        elif reason := skip_reason(path):
            skipped.append({"file": str(path), "reason": reason[0], "detail": reason[1]})
        else:
            files.append(path)
    listing = settle([path for path in files if path.exists()], skipped)  # a missing one: the reader names it
    listing.ready = [path for path in files if path not in listing.busy]
    return listing
