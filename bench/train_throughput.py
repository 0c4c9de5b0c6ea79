"""Training throughput: our reward_model training path against plain TRL RewardTrainer, in one run.

All three train the same base model on the same pairs (the bundled data's split, or a slice of it) with the
same batch size, epochs, learning rate and max_length, then score the same eval pairs:

- TRL as this bench ran it before: TRL's defaults (gradient checkpointing on) but fp32 (`bf16=False`; TRL's
  own default is bf16 even where the hardware emulates it);
- TRL at its best for this machine: bf16 autocast where the hardware multiplies bf16 natively (a CUDA GPU with
  bf16, a CPU with AMX or AVX-512 BF16: `lib.hardware.native_bf16`, as our `precision: auto`), no gradient
  checkpointing (a memory lever, not needed here), batches grouped by length with its own padding (its
  collator pads to the batch's longest pair), the same attention implementation as ours (the same loader);
- rm-pipeline's `train_reward_model` with its `TrainingSettings` defaults (whatever levers they turn on).

Both TRL runs get pre-tokenized ids because TRL's EOS step fails on BERT tokenizers. Prints pairs/s, tokens/s
and eval accuracy of each (ties half right, as in the evaluation report) and our speed-up over each. Runs on
a CUDA GPU unchanged (TRL then trains there too).

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
from rm_pipeline.lib.hardware import hardware, native_bf16
from rm_pipeline.lib.scoring import score_ids
from rm_pipeline.lib.tokenization import default_base_model
from rm_pipeline.lib.training.data import pair_dataset
from rm_pipeline.lib.training.model import load_model
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings


def trl_config(settings: TrainingSettings, output_dir: Path, best: bool):
    """TRL's RewardConfig: its defaults in fp32 (`best` False), or at its best for this machine."""
    from trl import RewardConfig

    device = hardware()["device"]
    tuned = (
        {
            "bf16": native_bf16(device),
            "gradient_checkpointing": False,
            "train_sampling_strategy": "group_by_length",
            "length_column_name": "length",
            "remove_unused_columns": False,  # keep `length` for the sampler; TRL's collator ignores it
        }
        if best
        else {"bf16": False}
    )
    return RewardConfig(
        output_dir=str(output_dir),
        use_cpu=device == "cpu",
        max_length=settings.max_length,
        per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        **tuned,
    )


def plain_trl(
    train: pd.DataFrame, evaluation: pd.DataFrame, settings: TrainingSettings, workdir: Path, best: bool
) -> dict:
    from trl import RewardTrainer

    model, tokenizer = load_model(settings)
    data = pair_dataset(train, tokenizer, settings)
    if not best:
        data = data.remove_columns(["length"])
    args = trl_config(settings, workdir / ("trl-best" if best else "trl-default"), best)
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "accuracy": _accuracy(trainer.model, evaluation, tokenizer, settings),
        "tokens": int(sum(len(c) + len(r) for c, r in zip(data["chosen_ids"], data["rejected_ids"]))),
        "precision": "bf16" if args.bf16 else "fp32",
        "attention": model.config._attn_implementation,
    }


def ours(train: pd.DataFrame, evaluation: pd.DataFrame, settings: TrainingSettings, workdir: Path) -> dict:
    started = time.perf_counter()
    result = train_reward_model(train, evaluation, settings, workdir / "models", "bench")
    seconds = result.metrics["train_seconds"]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir).to(hardware()["device"])
    _, tokenizer = load_model(settings)
    return {
        "seconds": seconds,
        "accuracy": _accuracy(model, evaluation, tokenizer, settings),
        "wall_seconds": time.perf_counter() - started,
        "tokens": int(sum(pair_dataset(train, tokenizer, settings)["length"])),
        "precision": result.metrics["precision"],
        "attention": model.config._attn_implementation,
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
        runs = {
            "plain TRL, fp32 (as before)": plain_trl(train, evaluation, settings, Path(workdir), best=False),
            "plain TRL, best settings": plain_trl(train, evaluation, settings, Path(workdir), best=True),
            "rm-pipeline reward_model": ours(train, evaluation, settings, Path(workdir)),
        }
    device = hardware()
    print(
        f"{device.get('device_name', device['device'])}; pairs: train {len(train)}, eval {len(evaluation)}; "
        f"batch {args.batch_size}; max_length {args.max_length}; epochs {args.epochs}"
    )
    for name, figures in runs.items():
        print(
            f"{name:28s} {len(train) * args.epochs / figures['seconds']:7.2f} pairs/s "
            f"{figures['tokens'] * args.epochs / figures['seconds']:9.1f} tokens/s  "
            f"train {figures['seconds']:7.1f} s  eval accuracy {figures['accuracy']:.3f}  "
            f"({figures['precision']}, attention {figures['attention']})"
        )
    candidate = runs["rm-pipeline reward_model"]
    for name, baseline in list(runs.items())[:2]:
        print(
            f"speed-up over {name}: {baseline['seconds'] / candidate['seconds']:.2f}x; "
            f"accuracy {candidate['accuracy']:.3f} vs {baseline['accuracy']:.3f}"
        )


if __name__ == "__main__":
    main()
