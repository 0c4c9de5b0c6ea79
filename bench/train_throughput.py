"""Training throughput: our reward_model training path against plain TRL RewardTrainer, in one run.

Both train the same base model on the same pairs (the bundled data's split, or a slice of it) with the
same batch size, epochs and max_length, then score the same eval pairs. Plain TRL keeps its defaults
except what CPU needs (bf16 off, use_cpu); it gets pre-tokenized ids because its EOS step fails on
BERT tokenizers. Prints pairs/s, tokens/s and eval accuracy of each (ties half right, as in the
evaluation report), and the speed ratio.

    python bench/train_throughput.py --split .rm_pipeline_home/tables/preference_split.parquet \
        --train-pairs 640 --eval-pairs 651
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import pair_credit
from rm_pipeline.lib.scoring import score_ids
from rm_pipeline.lib.tokenization import default_base_model
from rm_pipeline.lib.training.data import pair_dataset
from rm_pipeline.lib.training.model import load_model
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings


def plain_trl(train: pd.DataFrame, evaluation: pd.DataFrame, settings: TrainingSettings, workdir: Path) -> dict:
    from trl import RewardConfig, RewardTrainer

    model, tokenizer = load_model(settings)
    data = pair_dataset(train, tokenizer, settings).remove_columns(["length"])
    args = RewardConfig(
        output_dir=str(workdir / "plain"),
        use_cpu=True,
        bf16=False,
        max_length=settings.max_length,
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "accuracy": _accuracy(trainer.model, evaluation, tokenizer, settings),
        "tokens": int(sum(len(c) + len(r) for c, r in zip(data["chosen_ids"], data["rejected_ids"]))),
    }


def ours(train: pd.DataFrame, evaluation: pd.DataFrame, settings: TrainingSettings, workdir: Path) -> dict:
    started = time.perf_counter()
    result = train_reward_model(train, evaluation, settings, workdir / "models", "bench")
    seconds = result.metrics["train_seconds"]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    _, tokenizer = load_model(settings)
    return {
        "seconds": seconds,
        "accuracy": _accuracy(model, evaluation, tokenizer, settings),
        "wall_seconds": time.perf_counter() - started,
        "tokens": int(sum(pair_dataset(train, tokenizer, settings)["length"])),
    }


def _accuracy(model, evaluation: pd.DataFrame, tokenizer, settings: TrainingSettings) -> float:
    data = pair_dataset(evaluation, tokenizer, settings)
    rewards = score_ids(model, list(data["chosen_ids"]) + list(data["rejected_ids"]), tokenizer.pad_token_id, 64)
    half = len(rewards) // 2
    return float(pair_credit(rewards[:half] - rewards[half:]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=Path(".rm_pipeline_home/tables/preference_split.parquet"))
    parser.add_argument("--train-pairs", type=int, default=320)
    parser.add_argument("--eval-pairs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()

    split = pd.read_parquet(args.split)
    fits = split[(split["chosen_tokens"] <= args.max_length) & (split["rejected_tokens"] <= args.max_length)]
    train = fits[fits["split"] == "train"].sample(frac=1.0, random_state=0).head(args.train_pairs)
    evaluation = fits[fits["split"] == "eval"].sample(frac=1.0, random_state=0).head(args.eval_pairs)
    settings = TrainingSettings(
        base_model=default_base_model(),
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        use_margin=False,
        early_stopping_patience=None,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        eval_steps=10_000,
    )  # TRL's defaults
    with tempfile.TemporaryDirectory() as workdir:
        baseline = plain_trl(train, evaluation, settings, Path(workdir))
        candidate = ours(train, evaluation, settings, Path(workdir))
    print(
        f"pairs: train {len(train)}, eval {len(evaluation)}; batch {args.batch_size}; max_length {args.max_length}; "
        f"epochs {args.epochs}"
    )
    for name, figures in (("plain TRL RewardTrainer", baseline), ("rm-pipeline reward_model", candidate)):
        print(
            f"{name:26s} {len(train) * args.epochs / figures['seconds']:7.2f} pairs/s "
            f"{figures['tokens'] * args.epochs / figures['seconds']:9.1f} tokens/s  "
            f"train {figures['seconds']:7.1f} s  eval accuracy {figures['accuracy']:.3f}"
        )
    ratio = baseline["seconds"] / candidate["seconds"]
    verdict = "meets" if ratio >= 1.5 and candidate["accuracy"] >= baseline["accuracy"] else "misses"
    print(
        f"speed-up {ratio:.2f}x; accuracy {candidate['accuracy']:.3f} vs {baseline['accuracy']:.3f}: "
        f"{verdict} the target (>= 1.5x, accuracy equal or better)"
    )


if __name__ == "__main__":
    main()
