"""Scoring throughput: our batched, length-sorted scoring against scoring in file order, in one run.

Pairs: the bundled real annotations (`rm_pipeline/data/annotations`: HH-RLHF harmless, PandaLM, Tulu) through
ingestion, majority-vote aggregation, review queue and `build_pairs`, the way `rm-pipeline validate`
gets them (3,605 pairs). `--pairs N` takes N of them evenly spaced, kept in the order they come out of
the files: the first N alone would all be HH-RLHF (the first 2,303 are), which is shorter than the rest.
The length statistics and the padding of both orders are printed for these and for all bundled pairs.
Sequences: both sides of every pair, built exactly as `RewardScorer.score_pairs` builds them (prompts
twice, chosen then rejected; `encode` + `fit_to_length` to the model's position limit). Model: the
bundled all-MiniLM-L6-v2 with a one-unit score head (`load_model`; the head's random weights are
seeded), fp32 on the CPU.

Both paths are the production `score_ids` on the same sequences with the same batch size; they differ
only in `sort_by_length` (True: what `RewardScorer` does; False: batches in file order). Repeats are
interleaved (sorted, file order, sorted, ...) after one warm-up batch; the medians are reported.
Pairs/s = sequences/s / 2. Also checks that both orders give the same rewards, and that
`RewardScorer.score_pairs` gives the rewards `score_ids` gives on the timed sequences (16 pairs, untimed).

On a shared 2-core CPU (load ~4) one sorted pass over 150 pairs took ~28 s and one in file order ~66 s,
so the default run (150 pairs, 3 repeats of each) takes about 5 minutes; time grows linearly with
--pairs and --repeats.

    python bench/scoring_throughput.py                  # 150 pairs, batch 32, 3 repeats of each order
    python bench/scoring_throughput.py --pairs 0 --repeats 1   # all 3,605 pairs (~35 min on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pandas as pd
import torch

from rm_pipeline.lib.aggregation import aggregate_votes, review_queue
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.batch_folder import list_batch_files
from rm_pipeline.lib.pairs import build_pairs
from rm_pipeline.lib.scoring import RewardScorer, fit_to_length, position_limit, score_ids
from rm_pipeline.lib.tokenization import default_base_model, encode
from rm_pipeline.lib.training.model import load_model
from rm_pipeline.lib.training.settings import TrainingSettings


def bundled_pairs(directory: str) -> pd.DataFrame:
    """Kept pairs of the bundled data, in file order (the pipeline's own functions, default thresholds)."""
    ingested = read_annotations(list_batch_files(directory))
    comparisons = aggregate_votes(ingested.votes, "majority_vote").comparisons
    kept, _ = build_pairs(comparisons, review_queue(comparisons)["item_id"], token_lengths=None)
    return kept


def scored_sequences(scorer: RewardScorer, pairs: pd.DataFrame) -> tuple[list[list[int]], int]:
    """The ids RewardScorer.score_pairs hands to score_ids (chosen sides, then rejected), and how many
    were cut to the model's position limit."""
    prompts, conversational = list(pairs["prompt"]) * 2, list(pairs["conversational"]) * 2
    responses = [str(r) for r in list(pairs["chosen"]) + list(pairs["rejected"])]
    raw = encode(scorer.tokenizer, prompts, responses, conversational)
    return [fit_to_length(ids, scorer.max_length) for ids in raw], sum(len(ids) > scorer.max_length for ids in raw)


def padding_share(lengths: np.ndarray, batch_size: int, sort_by_length: bool) -> tuple[int, int]:
    """(real tokens, padded tokens) of the batches score_ids forms in this order."""
    order = np.argsort(lengths, kind="stable") if sort_by_length else np.arange(len(lengths))
    padded = sum(
        int(lengths[order[s : s + batch_size]].max()) * len(order[s : s + batch_size])
        for s in range(0, len(order), batch_size)
    )
    return int(lengths.sum()), padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="rm_pipeline/data/annotations")
    parser.add_argument(
        "--pairs",
        type=int,
        default=150,
        help="pairs to score, evenly spaced over the bundled ones, in file order (0: all)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each order, interleaved")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch threads (default: the CPUs this process may use)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the score head's random weights
    everything = bundled_pairs(args.data)
    picked = (
        np.unique(np.linspace(0, len(everything) - 1, args.pairs).round().astype(int))
        if 0 < args.pairs < len(everything)
        else np.arange(len(everything))
    )
    pairs = everything.iloc[picked].reset_index(drop=True)
    model, tokenizer = load_model(TrainingSettings(base_model=default_base_model()))
    scorer = RewardScorer(model, tokenizer, position_limit(model, tokenizer), args.batch_size)

    started = time.perf_counter()
    sequences, truncated = scored_sequences(scorer, pairs)
    encode_seconds = time.perf_counter() - started
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    all_lengths = np.fromiter(map(len, scored_sequences(scorer, everything)[0]), dtype=np.int64)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    print(
        f"{len(pairs)} of the {len(everything)} bundled pairs ({len(sequences)} sequences), evenly spaced, "
        f"file order; sources " + ", ".join(f"{k} {v}" for k, v in pairs["source"].value_counts(sort=False).items())
    )
    print(
        f"tokens per sequence: mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
        f"p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()} ({truncated} cut to the model's "
        f"{scorer.max_length}); all bundled pairs: mean {all_lengths.mean():.1f}, median "
        f"{np.median(all_lengths):.0f}, p90 {np.percentile(all_lengths, 90):.0f}, max {all_lengths.max()}; "
        f"tokenization {encode_seconds:.2f} s"
    )
    for label, these in (("these", lengths), ("all bundled", all_lengths)):
        for name, flag in (("sorted", True), ("file order", False)):
            real, padded = padding_share(these, args.batch_size, flag)
            print(
                f"  {label:11s} {name:10s} batches of {args.batch_size}: {padded:>9,} tokens computed for "
                f"{real:,} real ({real / padded:.1%} useful)"
            )

    score_ids(model, sequences[: args.batch_size], tokenizer.pad_token_id, args.batch_size)  # warm-up
    seconds: dict[bool, list[float]] = {True: [], False: []}
    rewards: dict[bool, np.ndarray] = {}
    for repeat in range(args.repeats):
        for flag in (True, False):
            started = time.perf_counter()
            rewards[flag] = score_ids(model, sequences, tokenizer.pad_token_id, args.batch_size, sort_by_length=flag)
            seconds[flag].append(time.perf_counter() - started)
            print(
                f"  repeat {repeat + 1} {'sorted' if flag else 'file order':10s} {seconds[flag][-1]:7.2f} s  "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )

    n = len(pairs)
    rate = {flag: n / statistics.median(times) for flag, times in seconds.items()}
    print(f"batch {args.batch_size}, {args.repeats} repeats each, median:")
    for name, flag in (("file order", False), ("length-sorted (ours)", True)):
        print(
            f"  {name:22s} {rate[flag]:8.2f} pairs/s  {2 * rate[flag]:8.2f} sequences/s  "
            f"{statistics.median(seconds[flag]):7.2f} s  (all: {', '.join(f'{s:.2f}' for s in seconds[flag])})"
        )
    ratio = rate[True] / rate[False]
    print(f"speed-up {ratio:.2f}x: {'meets' if ratio >= 2 else 'misses'} the target (>= 2x)")
    print(f"max |reward sorted - reward file order| = {np.abs(rewards[True] - rewards[False]).max():.2e}")

    # The timed sequences are the ones production scores: RewardScorer.score_pairs on a few pairs.
    few = pairs.head(16)
    production = scorer.score_pairs(few)
    timed = score_ids(model, scored_sequences(scorer, few)[0], tokenizer.pad_token_id, args.batch_size)
    both = np.concatenate([production["chosen_reward"].to_numpy(), production["rejected_reward"].to_numpy()])
    print(
        f"max |RewardScorer.score_pairs - score_ids on our sequences| = {np.abs(both - timed).max():.2e} "
        f"({len(few)} pairs)"
    )


if __name__ == "__main__":
    main()
