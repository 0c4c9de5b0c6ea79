"""`rm-pipeline validate`: ingest, aggregate and validate annotation files without touching the storage root."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rm_pipeline.cli.common import InputError, positive_int, print_quarantine


def add_command(commands) -> None:
    from typing import get_args

    from rm_pipeline.lib.aggregation import AggregationMethod, AggregationSettings
    from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH

    validate = commands.add_parser("validate", help="ingest, aggregate and validate files; print counts as JSON")
    validate.add_argument("files", nargs="+", type=Path)
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
    ingested = read_annotations(args.files)
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
            },
            indent=2,
        )
    )
    return 0
