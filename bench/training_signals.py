"""Training signals: tie handling (drop | soft) and loss (bradley_terry | mse), measured against today's
default (drop + bradley_terry) on the same split, seed and budget.

Builds the bundled data's split once with the pipeline's pure steps (read_annotations -> aggregate_votes ->
review_queue -> build_pairs -> split_by_group, all at their defaults; pairs counted with the base model's
tokenizer), then trains each variant with `train_reward_model` (default TrainingSettings: the bundled
MiniLM, 1 epoch, early stopping) and scores it with `RewardScorer`:

- held-out accuracy over the eval side's preferred pairs (ties never count), with its 95% interval
  (`rate_interval` over prompt groups), and its difference from the baseline pair by pair
  (`paired_difference`, same pairs, so what they have in common cancels out);
- ECE of sigmoid(margin) on those pairs (10 bins, symmetric, as the evaluation report);
- accuracy on the bundled benchmark file(s) rm_pipeline/data/eval/*.jsonl, with its interval;
- under soft ties: how near zero the held-out tie pairs' margins are (`tie_pair_margins`).

The split is built once with tie pairs kept; the drop variants use it without them, so every variant
trains on the same preferred pairs and is measured on the same held-out pairs.

    nice python bench/training_signals.py --out /tmp/signals            # all four variants, ~4 min each
    python bench/training_signals.py --variants drop+bradley_terry soft+bradley_terry
    python bench/training_signals.py --out /tmp/signals --table-only    # the table from saved results
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.aggregation import aggregate_votes, review_queue
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.batch_folder import list_batch_files
from rm_pipeline.lib.evaluation.accuracy import pair_credit, pair_margins, tie_pair_margins
from rm_pipeline.lib.evaluation.calibration import calibration
from rm_pipeline.lib.evaluation.inputs import EvaluationFolder
from rm_pipeline.lib.evaluation.pair_files import read_pair_file
from rm_pipeline.lib.evaluation.statistics import paired_difference, rate_interval
from rm_pipeline.lib.pairs import build_pairs, tie_pairs
from rm_pipeline.lib.scoring import RewardScorer
from rm_pipeline.lib.split import split_by_group
from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH, default_base_model, load_tokenizer, token_lengths
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings

REPO = Path(__file__).resolve().parents[1]
BASELINE = "drop+bradley_terry"
VARIANTS = (BASELINE, "soft+bradley_terry", "drop+mse", "soft+mse")


def splits(annotations: Path, base_model: str) -> dict[str, pd.DataFrame]:
    """The split once, with tie pairs (tie_handling soft); drop is the same split without them. (A pipeline
    run under drop could put a handful of groups on the other side: domain stratification sees no tie-only
    groups. Here every variant trains and is measured on the same preferred pairs.)"""
    votes = read_annotations(list_batch_files(annotations)).votes
    comparisons = aggregate_votes(votes).comparisons
    queue = review_queue(comparisons)
    tokenizer = load_tokenizer(base_model)

    def lengths(prompts, responses, conversational):
        return token_lengths(tokenizer, prompts, responses, conversational)

    kept, rejected = build_pairs(comparisons, queue["item_id"], lengths, DEFAULT_MAX_LENGTH, tie_handling="soft")
    split = split_by_group(kept)
    ties = tie_pairs(split)
    print(
        f"{len(comparisons)} comparisons -> {len(kept)} pairs ({int(ties.sum())} ties), {len(rejected)} rejected; "
        f"split {split['split'].value_counts().to_dict()}",
        flush=True,
    )
    return {"soft": split, "drop": split[~ties]}


def subsample_train(split: pd.DataFrame, preferred_pairs: int, seed: int) -> pd.DataFrame:
    """The eval side whole, and the train side's prompt groups in a seeded order until they hold
    `preferred_pairs` preferred pairs: the same groups, so the same preferred pairs, under drop and soft."""
    train = split[split["split"] == "train"]
    groups = np.sort(train["prompt_group"].astype(str).unique())
    order = np.random.default_rng(seed).permutation(groups)
    preferred = train[~tie_pairs(train)].groupby(train["prompt_group"].astype(str)).size()
    counts = preferred.reindex(order, fill_value=0).cumsum()
    chosen = set(counts.index[: int(np.searchsorted(counts.to_numpy(), preferred_pairs)) + 1])
    return split[(split["split"] == "eval") | split["prompt_group"].astype(str).isin(chosen)]


def measure(model_dir: Path, held_out: pd.DataFrame, benchmark: pd.DataFrame, baseline_credit) -> dict:
    scorer = RewardScorer.load(model_dir)
    scored = scorer.score_pairs(held_out)
    ties = tie_pairs(scored)
    preferred = scored[~ties].sort_values("pair_id", kind="stable")
    margins = pair_margins(preferred)
    credit = pair_credit(margins)
    groups = preferred["prompt_group"].astype(str).to_numpy()
    bench_scored = scorer.score_pairs(benchmark)
    bench_credit = pair_credit(pair_margins(bench_scored))
    result = {
        "held_out_pairs": len(preferred),
        "held_out_accuracy": rate_interval(credit, groups).as_dict(),
        "ece": calibration(margins)["ece"],
        "mean_abs_margin": float(np.abs(margins).mean()),
        "benchmark_pairs": len(bench_scored),
        "benchmark_accuracy": rate_interval(bench_credit, bench_scored["prompt"].astype(str).to_numpy()).as_dict(),
        "held_out_ties": tie_pair_margins(scored[ties]),
        "credit": credit.tolist(),
        "pair_ids": preferred["pair_id"].astype(str).tolist(),
    }
    if baseline_credit is not None:
        result["difference"] = paired_difference(credit, baseline_credit, groups).as_dict()
    return result


def _interval(value: dict) -> str:
    return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def table(results: dict[str, dict]) -> str:
    lines = [
        "| variant | train pairs (ties) | steps | held-out accuracy [95%] | Δ vs drop+BT [95%] | ECE | benchmark "
        "accuracy [95%] | held-out ties: mean abs margin (preferred) | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        ties = r["held_out_ties"]
        tie_text = (
            f"{ties['mean_abs_margin']:.3f} ({r['mean_abs_margin']:.3f}), n={ties['n']}"
            if ties["n"]
            else (f"– ({r['mean_abs_margin']:.3f})")
        )
        difference = _interval(r["difference"]) if "difference" in r else "–"
        lines.append(
            f"| {name} | {r['train_pairs']} ({r['train_ties']}) | {r['steps']} | {_interval(r['held_out_accuracy'])} "
            f"(n={r['held_out_pairs']}) | {difference} | {r['ece']:.3f} | {_interval(r['benchmark_accuracy'])} "
            f"(n={r['benchmark_pairs']}) | {tie_text} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=Path, default=REPO / "rm_pipeline/data/annotations")
    parser.add_argument("--benchmarks", type=Path, default=REPO / "rm_pipeline/data/eval")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "training_signals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-pairs",
        type=int,
        default=None,
        help="train on the prompt groups (seeded sample) holding about this many preferred pairs, their ties with "
        "them; default: the whole train side",
    )
    parser.add_argument("--table-only", action="store_true", help="print the table of the results saved in --out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [BASELINE] + [v for v in args.variants if v != BASELINE]

    if not args.table_only:
        base_model = default_base_model()
        split = splits(args.annotations, base_model)
        if args.train_pairs:
            soft = subsample_train(split["soft"], args.train_pairs, args.seed)
            split = {"soft": soft, "drop": soft[~tie_pairs(soft)]}
        files = EvaluationFolder(args.benchmarks, args.benchmarks / "alpaca-eval").benchmark_files()
        benchmark = pd.concat([read_pair_file(path)[0] for path in files], ignore_index=True)
        baseline_credit = None
        for name in variants:
            saved = args.out / f"{name}.json"
            if saved.exists():
                print(f"{name}: saved in {saved}", flush=True)
                baseline_credit = baseline_credit or (json.loads(saved.read_text())["credit"])
                continue
            ties, loss = name.split("+")
            pairs = split[ties]
            settings = TrainingSettings(base_model=default_base_model(), loss=loss, seed=args.seed)
            started = time.monotonic()
            training = train_reward_model(
                pairs[pairs["split"] == "train"], pairs[pairs["split"] == "eval"], settings, args.out / "models", name
            )
            result = measure(training.model_dir, pairs[pairs["split"] == "eval"], benchmark, baseline_credit)
            result.update(
                variant=name,
                train_pairs=int(training.metrics["train_pairs"]),
                train_ties=int(tie_pairs(pairs[pairs["split"] == "train"]).sum()),
                steps=int(training.metrics["steps"]),
                train_seconds=float(training.metrics["train_seconds"]),
                wall_seconds=round(time.monotonic() - started, 1),
                model_dir=str(training.model_dir),
                settings={"tie_handling": ties, "loss": loss, "seed": args.seed},
            )
            saved.write_text(json.dumps(result, indent=2))
            if name == BASELINE:
                baseline_credit = result["credit"]
            print(f"{name}: {_interval(result['held_out_accuracy'])} in {result['wall_seconds']} s", flush=True)

    results = {}
    for name in variants:
        saved = args.out / f"{name}.json"
        if saved.exists():
            results[name] = json.loads(saved.read_text())
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
