"""`rm-pipeline dpo-baseline`: train the DPO policy whose implicit reward the evaluation sets beside the
reward model's."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rm_pipeline.cli.common import (
    InputError,
    home_options,
    print_quarantine,
    settings_from_args,
    settings_options,
    storage_root,
)
from rm_pipeline.lib.environment import DPO_POLICY

DPO_OPTIONS = ("beta", "learning_rate", "epochs", "max_steps", "batch_size", "max_length")


def add_command(commands) -> None:
    from rm_pipeline.lib.dpo import DpoSettings

    dpo = commands.add_parser(
        "dpo-baseline",
        parents=[home_options()],
        help="train a DPO policy on the split's training pairs (or a pair file): the baseline whose implicit "
        "reward the evaluation sets beside the reward model's",
    )
    dpo.add_argument(
        "--base-model", required=True, help="local causal language model (or a locally cached id); also the reference"
    )
    dpo.add_argument("--pairs", type=Path, help="a pair file to train on instead of the split's training pairs")
    dpo.add_argument(
        "--output",
        type=Path,
        help="policy folder (default: <storage root>/dpo-policies/dpo-<time>; models/ holds reward models)",
    )
    settings_options(dpo, DpoSettings, DPO_OPTIONS)  # each number within the range DpoSettings declares
    dpo.set_defaults(handler=train_dpo_baseline)


def train_dpo_baseline(args: argparse.Namespace) -> int:
    from rm_pipeline.lib.dpo import DpoSettings, train_dpo_policy

    settings = settings_from_args(DpoSettings, args, DPO_OPTIONS)
    root = storage_root(args.home)
    pairs, source = training_pairs(args.pairs, root)
    output = args.output or root / "dpo-policies" / time.strftime("dpo-%Y%m%d-%H%M%S", time.gmtime())
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InputError(f"{output}: exists and is not an empty folder; give another --output")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the base model is local: nothing is downloaded
    record = train_dpo_policy(pairs, args.base_model, output, settings, source)
    print(json.dumps({"policy": str(output), **record}, indent=2, default=str))
    print(f"\ncompare it with the reward model: {DPO_POLICY.name}={output} rm-pipeline run", file=sys.stderr)
    return 0


def training_pairs(pair_file: Path | None, root: Path):
    """The pairs to train on (the pair file's, else the split's training pairs) and where they came from."""
    import pandas as pd

    from rm_pipeline.lib.evaluation.pair_files import read_pair_file

    if pair_file is not None:
        pairs, quarantine = read_pair_file(pair_file)
        print_quarantine(quarantine, "; not trained on")
        source = {"pairs_file": str(pair_file.resolve())}
    else:
        split_file = root / "tables" / "preference_split.parquet"
        if not split_file.is_file():
            raise InputError(
                f"{split_file}: no published split under this storage root; run `rm-pipeline run` or give --pairs FILE"
            )
        split = pd.read_parquet(split_file)
        pairs = split[split["split"] == "train"]
        source = {"split_file": str(split_file)}
    if pairs.empty:
        raise InputError(f"{next(iter(source.values()))}: no training pairs")
    return pairs, source
