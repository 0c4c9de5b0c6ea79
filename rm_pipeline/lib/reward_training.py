"""Fitting a reward model with TRL's RewardTrainer (Bradley-Terry), and saving it safely.

Knows nothing of Dagster: the stage runs `train_reward_model` in a child process and streams its
progress through the `report` callback.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from rm_pipeline.lib.tokenization import encode, load_tokenizer

Report = Callable[[str, dict], None]  # (kind: "log" | "progress", payload)


@dataclass
class TrainingSettings:
    base_model: str
    trust_remote_code: bool = False
    max_length: int = 512
    epochs: float = 1.0
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    use_margin: bool = True
    margin_per_strength: float = 0.5
    center_rewards_coefficient: float | None = None
    lora_rank: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    train_last_n_layers: int | None = None
    eval_steps: int = 50
    early_stopping_patience: int | None = 3
    early_stopping_eval_pairs: int = 256
    logging_steps: int = 10
    seed: int = 0
    group_by_length: bool = True
    gradient_checkpointing: bool = False

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class TrainingResult:
    model_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- data


def pair_dataset(pairs: pd.DataFrame, tokenizer, settings: TrainingSettings):
    """TRL's pre-tokenized format (`chosen_ids`/`rejected_ids`, optional `margin`) plus a `length`
    column for length-grouped batches. Tokenized by the same code as the max_length rule."""
    from datasets import Dataset

    chosen = encode(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
    rejected = encode(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
    columns = {"chosen_ids": chosen, "rejected_ids": rejected,
               "length": [len(c) + len(r) for c, r in zip(chosen, rejected)]}
    if settings.use_margin:
        columns["margin"] = margins(pairs, settings.margin_per_strength).tolist()
    return Dataset.from_dict(columns)


def _within_max_length(dataset, max_length: int):
    kept = dataset.filter(lambda row: max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= max_length)
    return kept, len(dataset) - len(kept)


def margins(pairs: pd.DataFrame, per_strength: float) -> np.ndarray:
    """Preference strength as TRL's margin: 0 where no strength was given."""
    strength = pd.to_numeric(pairs.get("strength", pd.Series(np.nan, index=pairs.index)), errors="coerce")
    return (strength.fillna(0.0).to_numpy(dtype=np.float64)) * per_strength


# ---------------------------------------------------------------- model


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                "bf16": torch.cuda.is_bf16_supported()}
    return {"device": "cpu", "device_name": "cpu", "gpus": 0, "bf16": False, "threads": torch.get_num_threads()}


def load_model(settings: TrainingSettings, dtype=None):
    """A one-unit score head on the base checkpoint; pad token known to the model config."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(settings.base_model, settings.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        settings.base_model, num_labels=1, trust_remote_code=settings.trust_remote_code,
        **({"dtype": dtype} if dtype is not None else {}))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # a pad token was added
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def transformer_layers(model):
    """The stack of transformer blocks, found by shape rather than by architecture name."""
    import torch.nn as nn

    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"can't find the {count} transformer layers of {type(model).__name__}")


def head_module_name(model) -> str:
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return name
    raise ValueError(f"{type(model).__name__} has no `score` or `classifier` head")


def freeze_all_but_last(model, n_layers: int) -> None:
    """Embeddings and all but the last `n_layers` blocks frozen; later norms, pooler and head train."""
    layers = transformer_layers(model)
    frozen = {id(p) for layer in list(layers)[: max(len(layers) - n_layers, 0)] for p in layer.parameters()}
    frozen |= {id(p) for p in model.get_input_embeddings().parameters()}
    for name, module in model.named_modules():
        if name.endswith("embeddings") or name.endswith("embed_tokens") or name.endswith("wpe"):
            frozen |= {id(p) for p in module.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad = id(parameter) not in frozen


def lora_config(model, settings: TrainingSettings):
    from peft import LoraConfig

    return LoraConfig(task_type="SEQ_CLS", r=settings.lora_rank, lora_alpha=settings.lora_alpha,
                      lora_dropout=settings.lora_dropout, target_modules="all-linear",
                      modules_to_save=[head_module_name(model)])


# ---------------------------------------------------------------- training


def reward_config(settings: TrainingSettings, checkpoint_dir: Path, has_eval: bool):
    from trl import RewardConfig

    device = hardware()
    evaluate = has_eval and settings.early_stopping_patience is not None
    return RewardConfig(
        output_dir=str(checkpoint_dir),
        use_cpu=device["device"] == "cpu",
        bf16=device["bf16"],
        max_length=None,  # the pair stage already dropped (and counted) longer pairs
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size * 2,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay,
        center_rewards_coefficient=settings.center_rewards_coefficient,
        gradient_checkpointing=settings.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        length_column_name="length",
        remove_unused_columns=False,  # keep `length` for the sampler; the collator ignores it
        logging_steps=settings.logging_steps,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=evaluate,
        metric_for_best_model="eval_accuracy" if evaluate else None,
        greater_is_better=True,
        seed=settings.seed,
        report_to=[],
        disable_tqdm=True,
        save_only_model=False,
    )


def _progress_callback(report: Report):
    from transformers import TrainerCallback

    class ProgressReport(TrainerCallback):
        """Step, loss, accuracy and ETA into the run's logs at every logging step."""

        def __init__(self):
            self.started = time.monotonic()
            self.first_step = None
            self.history: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step = state.global_step  # > 0 when resuming

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            done = state.global_step - (self.first_step or 0)
            elapsed = time.monotonic() - self.started
            eta = elapsed / done * (state.max_steps - state.global_step) if done else float("nan")
            entry = {"step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch,
                     "eta_s": round(eta, 1), **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            self.history.append(entry)
            report("progress", entry)

    return ProgressReport()


def train_reward_model(train: pd.DataFrame, evaluation: pd.DataFrame, settings: TrainingSettings,
                       models_dir: Path, run_name: str, report: Report = lambda kind, payload: None,
                       card_facts: dict | None = None) -> TrainingResult:
    """Train, resuming from the last checkpoint of the same run name if one exists, then publish the
    model directory atomically as `models_dir/run_name` and point `models_dir/current` at it."""
    import torch
    from transformers import EarlyStoppingCallback
    from transformers.trainer_utils import get_last_checkpoint
    from trl import RewardTrainer

    from transformers import set_seed

    started = time.monotonic()
    device = hardware()
    set_seed(settings.seed)  # a new score head is initialised at load: the same seed, the same model
    model, tokenizer = load_model(settings)  # fp32 master weights; bf16 on GPU is autocast by the Trainer
    if settings.train_last_n_layers is not None and not settings.lora_rank:
        freeze_all_but_last(model, settings.train_last_n_layers)
    peft_config = lora_config(model, settings) if settings.lora_rank else None

    train_data, over_length = _within_max_length(pair_dataset(train, tokenizer, settings), settings.max_length)
    if over_length:  # only when the base model differs from the one preference_pairs counted with
        report("log", {"message": f"{over_length} train pairs exceed max_length {settings.max_length} under "
                                  f"{settings.base_model}'s tokenizer: dropped, not truncated"})
    eval_data = pair_dataset(evaluation, tokenizer, settings) if len(evaluation) else None
    # Early stopping evaluates often: a fixed sample keeps that cheap; the full split is scored at the end.
    stopping_data = eval_data.shuffle(seed=settings.seed).select(
        range(min(settings.early_stopping_eval_pairs, len(eval_data)))) if eval_data is not None else None
    checkpoint_dir = models_dir / ".checkpoints" / run_name
    progress = _progress_callback(report)
    callbacks = [progress]
    if eval_data is not None and settings.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    trainer = RewardTrainer(model=model, args=reward_config(settings, checkpoint_dir, eval_data is not None),
                            train_dataset=train_data, eval_dataset=stopping_data, processing_class=tokenizer,
                            peft_config=peft_config, callbacks=callbacks)
    resume_from = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    if resume_from:
        report("log", {"message": f"resuming from {resume_from}"})
    if device["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    training_started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.monotonic() - training_started
    if not trainer.is_world_process_zero():  # under DDP, one process scores and publishes
        return TrainingResult(models_dir / "current", {}, progress.history)

    model = trainer.model  # the best checkpoint when evaluating: load_best_model_at_end
    if peft_config is not None:
        model = model.merge_and_unload()  # a plain checkpoint: loads without peft
    model.eval()
    tokens = int(sum(train_data["length"]))
    # resumed or stopped early: only the share of the schedule run in this call counts, as for pairs/s
    share_run = (output.global_step - (progress.first_step or 0)) / max(trainer.state.max_steps, 1)
    metrics = {
        **device,
        "train_pairs": len(train_data), "train_pairs_over_max_length": over_length, "eval_pairs": len(evaluation),
        "steps": int(output.global_step), "epochs": float(output.metrics.get("epoch", settings.epochs)),
        "train_loss": float(output.training_loss),
        "train_seconds": round(train_seconds, 1),
        "pairs_per_second": round(output.metrics.get("train_samples_per_second", 0.0), 2),
        "tokens_per_second": round(tokens * settings.epochs * share_run
                                   / max(output.metrics.get("train_runtime", 1e-9), 1e-9), 1),
        "resumed_from": resume_from,
        "peak_memory_mb": _peak_memory_mb(device),
    }
    reward_stats = _reward_statistics(model, eval_data if eval_data is not None else train_data, tokenizer)
    metrics.update(reward_stats)
    model.config.reward_mean = reward_stats["reward_mean"]
    model.config.reward_std = reward_stats["reward_std"]

    metrics["duration_seconds"] = round(time.monotonic() - started, 1)

    # Every training publishes a new directory: retraining the same data keeps the earlier model.
    published = f"{run_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    facts = {"run_name": published, **(card_facts or {})}
    target = publish(models_dir, published, lambda tmp: _save(tmp, model, tokenizer, settings, metrics,
                                                               progress.history, facts))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if not any(checkpoint_dir.parent.iterdir()):
        checkpoint_dir.parent.rmdir()
    return TrainingResult(target, metrics, progress.history)


def _reward_statistics(model, dataset, tokenizer) -> dict:
    """Mean and std of rewards on the eval split (stored in the config so users can normalise), and
    the accuracy of the model as saved."""
    from rm_pipeline.lib.scoring import score_ids

    sequences = list(dataset["chosen_ids"]) + list(dataset["rejected_ids"])
    rewards = score_ids(model, sequences, tokenizer.pad_token_id, batch_size=64)
    half = len(rewards) // 2
    return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "eval_accuracy": float((rewards[:half] > rewards[half:]).mean()) if half else None}


def _peak_memory_mb(device: dict) -> float:
    import resource

    import torch

    if device["device"] == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------- artifact


def publish(models_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write into a temporary directory, rename it into place, then switch `current` atomically.

    A crash at any point leaves either the previous model or the new one as `current`, never a
    partial directory; earlier models stay beside it.
    """
    if (models_dir / name).exists():
        raise FileExistsError(f"{models_dir / name} is already published")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".staging-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a half-written model is never left lying about
        raise
    target = models_dir / name
    staging.rename(target)  # fails if `name` exists: a published model is never overwritten
    link = models_dir / f".current-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(name)  # relative: the storage root can move
    os.replace(link, models_dir / "current")
    return target


def _save(directory: Path, model, tokenizer, settings: TrainingSettings, metrics: dict, history: list[dict],
          facts: dict) -> None:
    directory.mkdir(parents=True)
    (directory / "README.md").write_text(model_card(settings, metrics, facts))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "training_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (directory / "training_history.json").write_text(json.dumps(history, indent=2, default=str))
    (directory / "training_settings.json").write_text(json.dumps(asdict(settings), indent=2))
    plot_training_curves(history, directory / "training_curves.png")


def model_card(settings: TrainingSettings, metrics: dict, facts: dict) -> str:
    rows = lambda values: "\n".join(f"| {k} | {v} |" for k, v in values.items())  # noqa: E731
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, trl, rm-pipeline]
base_model: {settings.base_model}
---
# Reward model {facts.get("run_name", "")}

A Bradley-Terry reward model: `{settings.base_model}` with a one-unit score head, trained by TRL's
`RewardTrainer` through rm-pipeline. Higher scores mean more preferred.

- data version of the split: `{facts.get("data_version", "?")}`
- annotation batches: {", ".join(facts.get("annotation_batches", [])) or "?"}
- reward on the eval split: mean {metrics["reward_mean"]:.4f}, std {metrics["reward_std"]:.4f}
  (in `config.json` as `reward_mean` / `reward_std`: subtract and divide to normalise)

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH)
tokenizer = AutoTokenizer.from_pretrained(PATH)
```
Encoders read (prompt, response) as a text pair; decoders read the chat template ending in EOS.

## Hyper-parameters
| setting | value |
|---|---|
{rows(asdict(settings))}

## Metrics
| metric | value |
|---|---|
{rows(metrics)}

Whether this model is approved for optimisation is decided by the readiness gate, recorded beside it.
"""


def plot_training_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_accuracy" in h]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_axis.plot([h["step"] for h in train], [h["loss"] for h in train], label="train")
    loss_axis.plot([h["step"] for h in evals], [h.get("eval_loss", math.nan) for h in evals], label="eval")
    loss_axis.set(title="Bradley-Terry loss", xlabel="step")
    accuracy_axis.plot([h["step"] for h in train], [h.get("accuracy", math.nan) for h in train], label="train")
    accuracy_axis.plot([h["step"] for h in evals], [h["eval_accuracy"] for h in evals], label="eval")
    accuracy_axis.set(title="pair accuracy", xlabel="step", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
