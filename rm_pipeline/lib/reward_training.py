"""Fitting a reward model with TRL's RewardTrainer (Bradley-Terry or MSE on each pair's target preference,
ties included), and saving it safely.

Knows nothing of Dagster: the stage runs `train_reward_model` in a child process and streams its
progress through the `report` callback.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from rm_pipeline.lib.lineage import LINEAGE_FILE
from rm_pipeline.lib.markdown import markdown_table
from rm_pipeline.lib.metrics import pair_credit, peak_memory_mb
from rm_pipeline.lib.pairs import PREFERRED, tie_pairs
from rm_pipeline.lib.precision import (
    PRECISION_HELP,
    Precision,
    attention_in_fp32,
    head_in_fp32,
    head_module_name,
    native_bf16,
    uses_bf16,
)
from rm_pipeline.lib.settings import check_choices, setting
from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH, encode, load_tokenizer

Report = Callable[[str, dict], None]  # (kind: "log" | "progress", payload)
FACTS_FILE = "training_facts.json"  # run name, data version, annotation batches: saved with the model
Loss = Literal["bradley_terry", "mse"]


@dataclass(frozen=True)
class TrainingSettings:
    """How a reward model is trained: every field is also a field of the `reward_model` run config."""

    # the model
    base_model: str = setting(
        "",
        "Hugging Face id or local path; empty: the base_model resource (whose "
        "tokenizer preference_pairs counted tokens with).",
    )
    trust_remote_code: bool = setting(False, "Run code shipped with the model (set on the base_model resource).")
    max_length: int = setting(DEFAULT_MAX_LENGTH, "Longest pair in tokens (set on the base_model resource).")
    # the optimisation
    epochs: float = setting(1.0, "Passes over the train split.")
    learning_rate: float = setting(5e-5, "Peak learning rate (linear decay).")
    warmup_ratio: float = setting(0.1, "Share of steps with a linearly rising learning rate.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    batch_size: int = setting(16, "Pairs per device and step.")
    gradient_accumulation_steps: int = setting(1, "Steps whose gradients add up before an update.")
    seed: int = setting(0, "Seed of the score head's initialisation and of the data order.")
    group_by_length: bool = setting(True, "Batches of similar lengths: less padding, same result.")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory (large models only).")
    precision: Precision = setting("auto", PRECISION_HELP)
    # the loss
    loss: Loss = setting(
        "bradley_terry",
        "With d = r(chosen) - r(rejected) - margin and p the pair's target preference (1 for a preferred "
        "pair, 0.5 for a tie, whose margin is 0): bradley_terry: -p*log(sigmoid(d)) - (1-p)*log(sigmoid(-d)) "
        "(TRL's loss when p = 1; -1/2*log(sigmoid(d)) - 1/2*log(sigmoid(-d)) for a tie); mse: "
        "(sigmoid(d) - p)^2, the predicted win probability regressed on the target. Ties reach training "
        "only with the pairs stage's tie_handling: soft.",
    )
    use_margin: bool = setting(True, "Preference strength becomes TRL's margin column.")
    margin_per_strength: float = setting(0.5, "Margin per unit of strength.")
    center_rewards_coefficient: float | None = setting(None, "TRL's reward centring (e.g. 0.01).")
    # which weights train
    lora_rank: int = setting(
        0,
        "LoRA rank through peft (0: full fine-tuning); the score head is trained and "
        "saved (modules_to_save), and the adapter merged.",
    )
    lora_alpha: int = setting(16, "LoRA scaling.")
    lora_dropout: float = setting(0.05, "LoRA dropout.")
    train_last_n_layers: int | None = setting(None, "Freeze all but the last N transformer layers.")
    # evaluation, early stopping and progress
    eval_steps: int = setting(100, "Evaluate and checkpoint every N steps.")
    early_stopping_patience: int | None = setting(
        3,
        "Stop after this many evaluations without better eval accuracy; the best checkpoint is kept. "
        "None: no early stopping.",
    )
    early_stopping_eval_pairs: int = setting(
        256,
        "Eval pairs scored at each early-stopping evaluation (a fixed "
        "sample); the whole eval split is scored at the end.",
    )
    logging_steps: int = setting(10, "Progress (step, loss, accuracy, ETA) every N steps.")

    def __post_init__(self):
        check_choices(self)

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
    """TRL's pre-tokenized format (`chosen_ids`/`rejected_ids`, optional `margin`), the target `preference`
    (1 or 0.5 for a tie, which gets no margin) for `preference_loss`, and a `length` column for length-grouped
    batches. Tokenized by the same code as the max_length rule."""
    from datasets import Dataset

    chosen = encode(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
    rejected = encode(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
    columns = {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "length": [len(c) + len(r) for c, r in zip(chosen, rejected)],
        "preference": preferences(pairs).tolist(),
    }
    if settings.use_margin:
        columns["margin"] = np.where(tie_pairs(pairs), 0.0, margins(pairs, settings.margin_per_strength)).tolist()
    return Dataset.from_dict(columns)


def _within_max_length(dataset, max_length: int):
    kept = dataset.filter(lambda row: max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= max_length)
    return kept, len(dataset) - len(kept)


def margins(pairs: pd.DataFrame, per_strength: float) -> np.ndarray:
    """Preference strength as TRL's margin: 0 where no strength was given."""
    strength = pd.to_numeric(pairs.get("strength", pd.Series(np.nan, index=pairs.index)), errors="coerce")
    return (strength.fillna(0.0).to_numpy(dtype=np.float64)) * per_strength


def preferences(pairs: pd.DataFrame) -> np.ndarray:
    """Each pair's target preference; 1 for a table from before ties could be kept."""
    if "preference" not in pairs:
        return np.full(len(pairs), PREFERRED)
    return pairs["preference"].to_numpy(np.float64)


# ---------------------------------------------------------------- model


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        return {
            "device": "cuda",
            "device_name": torch.cuda.get_device_name(0),
            "gpus": torch.cuda.device_count(),
            "bf16": native_bf16("cuda"),
        }
    return {
        "device": "cpu",
        "device_name": "cpu",
        "gpus": 0,
        "bf16": native_bf16("cpu"),
        "threads": torch.get_num_threads(),
    }


def load_model(settings: TrainingSettings, dtype=None):
    """A one-unit score head on the base checkpoint, computing in fp32 even under autocast; pad token known to the
    model config. fp32 unless told otherwise: transformers 5 would keep a bf16/fp16 checkpoint's dtype, and AdamW
    needs fp32 master weights."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(settings.base_model, settings.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        settings.base_model,
        num_labels=1,
        trust_remote_code=settings.trust_remote_code,
        dtype=dtype or torch.float32,
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # a pad token was added
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    head_in_fp32(model)
    return model, tokenizer


def transformer_layers(model):
    """The stack of transformer blocks, found by shape rather than by architecture name."""
    import torch.nn as nn

    count = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"can't find the {count} transformer layers of {type(model).__name__}")


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

    return LoraConfig(
        task_type="SEQ_CLS",
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules="all-linear",
        modules_to_save=[head_module_name(model)],
    )


# ---------------------------------------------------------------- training


def reward_config(settings: TrainingSettings, checkpoint_dir: Path, has_eval: bool):
    from trl import RewardConfig

    device = hardware()
    evaluate = has_eval and settings.early_stopping_patience is not None
    return RewardConfig(
        output_dir=str(checkpoint_dir),
        use_cpu=device["device"] == "cpu",
        bf16=uses_bf16(settings.precision, device["device"]),
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
            entry = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": state.epoch,
                "eta_s": round(eta, 1),
                **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
            }
            self.history.append(entry)
            report("progress", entry)

    return ProgressReport()


def preference_loss(rewards_chosen, rewards_rejected, preference, margin=None, loss: Loss = "bradley_terry"):
    """The batch's mean loss (see `TrainingSettings.loss`): with d = chosen - rejected - margin and target
    preference p, bradley_terry is the cross-entropy -p*log(sigmoid(d)) - (1-p)*log(sigmoid(-d)) (TRL's
    -log(sigmoid(d)) when every p is 1) and mse is (sigmoid(d) - p)^2."""
    import torch
    import torch.nn.functional as F

    difference = rewards_chosen - rewards_rejected
    if margin is not None:
        difference = difference - margin.to(difference.dtype)
    preference = preference.to(difference.dtype)
    if loss == "mse":
        return ((torch.sigmoid(difference) - preference) ** 2).mean()
    return F.binary_cross_entropy_with_logits(difference, preference)


def preference_collator(tokenizer, args):
    """TRL's DataCollatorForPreference, which keeps only ids and `margin`, plus each pair's `preference`."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class PreferenceCollator(DataCollatorForPreference):
        def torch_call(self, examples):
            output = super().torch_call(examples)
            output["preference"] = torch.tensor(
                [example.get("preference", PREFERRED) for example in examples], dtype=torch.float
            )
            return output

    return PreferenceCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)


def pair_credit_trainer_class(loss: Loss = "bradley_terry"):
    """TRL's RewardTrainer with two changes at its `compute_loss` hook, everything else (checkpointing,
    resume, logging, metrics) TRL's own:

    - the loss is `preference_loss` on each pair's target preference (a tie is 0.5), as `loss` says;
    - `accuracy` is the evaluation's pair credit (a tie is half right) over preferred pairs only, so the
      training curves, the model card and the evaluation report count the same pairs the same way."""
    import torch
    from trl import RewardTrainer

    class PairCreditRewardTrainer(RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            preference = inputs.pop("preference")
            _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            signal = preference_loss(chosen, rejected, preference, inputs.get("margin"), loss)
            if self.args.center_rewards_coefficient is not None:  # as TRL adds it
                signal = signal + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)

            preferred = preference == PREFERRED  # a tie has no right answer: not in accuracy
            difference = (chosen - rejected).detach().float()[preferred].cpu().numpy()
            totals = torch.tensor([pair_credit(difference).sum(), difference.size], device=chosen.device)
            credit, count = self.accelerator.gather(totals).reshape(-1, 2).sum(dim=0).tolist()
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["accuracy"][-1] = credit / count if count else math.nan  # NaN: ties only
            return (signal, outputs) if return_outputs else signal

        def log(self, logs, start_time=None):
            for metrics in self._metrics.values():  # batches of ties only have no accuracy
                batches = metrics.get("accuracy")
                if batches:
                    batches[:] = [value for value in batches if not math.isnan(value)] or [math.nan]
            super().log(logs, start_time)

    return PairCreditRewardTrainer


@dataclass
class TrainingData:
    train: object  # datasets.Dataset, pre-tokenized for TRL
    evaluation: object | None  # the whole eval split, scored at the end
    early_stopping: object | None  # a fixed sample of it, scored at each evaluation
    train_over_max_length: int


def prepare_model(settings: TrainingSettings):
    """The base model with a new score head, frozen as asked, and the LoRA config (or None)."""
    from transformers import set_seed

    set_seed(settings.seed)  # a new score head is initialised at load: the same seed, the same model
    model, tokenizer = load_model(settings)  # fp32 master weights; bf16 on GPU is autocast by the Trainer
    if settings.train_last_n_layers is not None and not settings.lora_rank:
        freeze_all_but_last(model, settings.train_last_n_layers)
    if hardware()["device"] == "cpu" and uses_bf16(settings.precision, "cpu"):
        attention_in_fp32(model)
    return model, tokenizer, lora_config(model, settings) if settings.lora_rank else None


def training_data(
    train: pd.DataFrame, evaluation: pd.DataFrame, tokenizer, settings: TrainingSettings, report: Report
) -> TrainingData:
    train_data, over_length = _within_max_length(pair_dataset(train, tokenizer, settings), settings.max_length)
    if over_length:  # only when the base model differs from the one preference_pairs counted with
        report(
            "log",
            {
                "message": f"{over_length} train pairs exceed max_length {settings.max_length} under "
                f"{settings.base_model}'s tokenizer: dropped, not truncated"
            },
        )
    eval_data = pair_dataset(evaluation, tokenizer, settings) if len(evaluation) else None
    # Early stopping evaluates often: a fixed sample keeps that cheap, sorted by length so that its batches carry
    # little padding (Trainer evaluates in order); the full split is scored at the end.
    stopping = (
        eval_data.shuffle(seed=settings.seed)
        .select(range(min(settings.early_stopping_eval_pairs, len(eval_data))))
        .sort("length")
        if eval_data is not None
        else None
    )
    return TrainingData(train_data, eval_data, stopping, over_length)


def build_trainer(
    model, tokenizer, peft_config, data: TrainingData, settings: TrainingSettings, checkpoint_dir: Path, progress
):
    from transformers import EarlyStoppingCallback

    callbacks = [progress]
    if data.evaluation is not None and settings.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    args = reward_config(settings, checkpoint_dir, data.evaluation is not None)
    return pair_credit_trainer_class(settings.loss)(
        model=model,
        args=args,
        data_collator=preference_collator(tokenizer, args),
        train_dataset=data.train,
        eval_dataset=data.early_stopping,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def last_complete_checkpoint(checkpoint_dir: Path, report: Report) -> str | None:
    """The newest checkpoint written to the end, or None. Trainer writes a checkpoint's files in place and
    trainer_state.json last, so a process killed while saving leaves a newer folder without that file (or with
    it cut short), which transformers' `get_last_checkpoint` would pick and fail to resume from. Such folders
    are removed, each with a log line."""
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    steps = {
        folder: int(match[1])
        for folder in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if folder.is_dir() and (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", folder.name))
    }
    for folder in sorted(steps, key=steps.get, reverse=True):
        try:
            json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
            return str(folder)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            report(
                "log", {"message": f"{folder}: cut short while being saved (no complete {TRAINER_STATE_NAME}), removed"}
            )
            shutil.rmtree(folder)
    return None


def fit(trainer, checkpoint_dir: Path, report: Report):
    """Train, resuming from the last complete checkpoint in `checkpoint_dir` if there is one; returns
    (TRL's train output, seconds spent, the checkpoint resumed from)."""
    import torch

    resume_from = last_complete_checkpoint(checkpoint_dir, report)
    if resume_from:
        report("log", {"message": f"resuming from {resume_from}"})
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=resume_from)
    return output, time.monotonic() - started, resume_from


def final_model(trainer, merge_lora: bool):
    """The model to publish: the best checkpoint when evaluating (load_best_model_at_end), LoRA merged."""
    # without accelerate's autocast wrapper: statistics are those of the weights as saved (bf16 on a GPU otherwise)
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if merge_lora:
        model = model.merge_and_unload()  # a plain checkpoint: loads without peft
    model.eval()
    return model


def training_metrics(
    trainer, output, train_seconds: float, resumed_from, data: TrainingData, first_step: int, settings: TrainingSettings
) -> dict:
    """Throughput, loss and memory of the run, as stored in the model card and the run's metadata."""
    device = hardware()
    tokens = int(sum(data.train["length"]))
    # resumed or stopped early: only the share of the schedule run in this call counts, as for pairs/s
    share_run = (output.global_step - first_step) / max(trainer.state.max_steps, 1)
    runtime = max(output.metrics.get("train_runtime", 1e-9), 1e-9)
    return {
        **device,
        "train_pairs": len(data.train),
        "train_pairs_over_max_length": data.train_over_max_length,
        "eval_pairs": len(data.evaluation) if data.evaluation is not None else 0,
        "steps": int(output.global_step),
        "epochs": float(output.metrics.get("epoch", settings.epochs)),
        "train_loss": float(output.training_loss),
        "train_seconds": round(train_seconds, 1),
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        # our own count, not Trainer's train_samples_per_second: before transformers 5.2x that counted a resumed
        # run's skipped steps too
        "pairs_per_second": round(len(data.train) * settings.epochs * share_run / runtime, 2),
        "tokens_per_second": round(tokens * settings.epochs * share_run / runtime, 1),
        "resumed_from": resumed_from,
        "peak_memory_mb": peak_memory_mb(device["device"]),
    }


def reward_statistics(scored: pd.DataFrame) -> dict:
    """Mean and std of rewards on the eval split (stored in the config so users can normalise), and the
    accuracy of the model as saved, by the evaluation's pair credit over preferred pairs (ties left out), from
    `RewardScorer.score_pairs` of the split."""
    rewards = np.concatenate([scored["chosen_reward"].to_numpy(), scored["rejected_reward"].to_numpy()])
    difference = (scored["chosen_reward"] - scored["rejected_reward"]).to_numpy()
    preferred = preferences(scored) == PREFERRED
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "eval_accuracy": float(pair_credit(difference[preferred]).mean()) if preferred.any() else None,
    }


def remove_checkpoints(checkpoint_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if checkpoint_dir.parent.is_dir() and not any(checkpoint_dir.parent.iterdir()):
        checkpoint_dir.parent.rmdir()


def train_reward_model(
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    settings: TrainingSettings,
    models_dir: Path,
    run_name: str,
    report: Report = lambda kind, payload: None,
    card_facts: dict | None = None,
) -> TrainingResult:
    """Train, resuming from the last checkpoint of the same run name if one exists, then publish the
    model directory atomically as `models_dir/<run_name>-<UTC time>`: a candidate, which evaluation may
    promote to `models_dir/current`."""
    started = time.monotonic()
    model, tokenizer, peft_config = prepare_model(settings)
    data = training_data(train, evaluation, tokenizer, settings, report)
    checkpoint_dir = models_dir / ".checkpoints" / run_name
    progress = _progress_callback(report)
    trainer = build_trainer(model, tokenizer, peft_config, data, settings, checkpoint_dir, progress)
    output, train_seconds, resumed_from = fit(trainer, checkpoint_dir, report)
    if not trainer.is_world_process_zero():  # under DDP, one process scores and publishes
        return TrainingResult(models_dir, {}, progress.history)

    from rm_pipeline.lib.scoring import SCORED_FILE, RewardScorer

    model = final_model(trainer, merge_lora=peft_config is not None)
    metrics = training_metrics(trainer, output, train_seconds, resumed_from, data, progress.first_step or 0, settings)
    scorer = RewardScorer.of(model, tokenizer)  # in the precision the evaluation stage scores in by default
    metrics.update(reward_statistics(scorer.score_pairs(evaluation if len(evaluation) else train)))
    model.config.reward_mean, model.config.reward_std = metrics["reward_mean"], metrics["reward_std"]
    metrics["duration_seconds"] = round(time.monotonic() - started, 1)

    # Every training publishes a new directory: retraining the same data keeps the earlier model.
    published = f"{run_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    facts = {"run_name": published, **(card_facts or {})}

    def save(directory: Path) -> None:
        _save(directory, model, tokenizer, settings, metrics, progress.history, facts)
        scorer.remember(directory / SCORED_FILE)

    target = publish(models_dir, published, save)
    remove_checkpoints(checkpoint_dir)
    return TrainingResult(target, metrics, progress.history)


# ---------------------------------------------------------------- artifact


def publish(models_dir: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Write into a temporary directory and rename it into place (`current` is not touched: evaluation
    promotes a model, `model_registry.switch_current`).

    A crash at any point leaves no partial directory; earlier models stay beside it.
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
    return target


def _save(
    directory: Path, model, tokenizer, settings: TrainingSettings, metrics: dict, history: list[dict], facts: dict
) -> None:
    directory.mkdir(parents=True)
    (directory / "README.md").write_text(model_card(settings, metrics, facts))
    (directory / LINEAGE_FILE).write_text(json.dumps(facts, indent=2, default=str))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "training_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (directory / "training_history.json").write_text(json.dumps(history, indent=2, default=str))
    (directory / "training_settings.json").write_text(json.dumps(asdict(settings), indent=2))
    (directory / FACTS_FILE).write_text(json.dumps(facts, indent=2, default=str))
    plot_training_curves(history, directory / "training_curves.png")


def model_card(settings: TrainingSettings, metrics: dict, facts: dict) -> str:
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, trl, rm-pipeline]
base_model: {settings.base_model}
---
# Reward model {facts.get("run_name", "")}

A reward model: `{settings.base_model}` with a one-unit score head, trained by TRL's `RewardTrainer`
through rm-pipeline with the `{settings.loss}` loss (Hyper-parameters). Higher scores mean more preferred.

- data version of the split: `{facts.get("data_version", "?")}`
- annotation batches: {", ".join(facts.get("annotation_batches", [])) or "?"} (files and stages under Lineage)
- reward on the eval split: mean {metrics["reward_mean"]:.4f}, std {metrics["reward_std"]:.4f}
  (in `config.json` as `reward_mean` / `reward_std`: subtract and divide to normalise)

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH)
tokenizer = AutoTokenizer.from_pretrained(PATH)
```
Encoders read (prompt, response) as a text pair; decoders read the chat template ending in EOS.

## Hyper-parameters
{markdown_table([{"setting": k, "value": v} for k, v in asdict(settings).items()])}

## Metrics
{markdown_table([{"metric": k, "value": v} for k, v in metrics.items()])}

## Lineage
Also in `{LINEAGE_FILE}`; `rm-pipeline lineage <this directory>` checks the files against the disk.

{_lineage_section(facts)}

Whether this model is approved for optimisation is decided by the readiness gate, recorded beside it.
"""


def _lineage_section(facts: dict) -> str:
    """The stages the split came from, the batch files (sha256, votes kept) and review files, the code versions."""
    stages = [
        {k: stage.get(k) for k in ("asset", "run_id", "data_version", "code_version")}
        for stage in facts.get("stages", [])
    ]
    batches = [{k: batch.get(k) for k in ("file", "sha256", "votes")} for batch in facts.get("batches", [])]
    reviews = [{k: review.get(k) for k in ("file", "sha256", "applied")} for review in facts.get("review_files", [])]
    versions = [{"asset": k, "code_version": v} for k, v in facts.get("code_versions", {}).items()]
    return "\n\n".join(
        f"### {title}\n{markdown_table(rows)}"
        for title, rows in (
            ("Stages", stages),
            ("Annotation batches", batches),
            ("Review files", reviews),
            ("Code versions", versions),
        )
    )


def plot_training_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_accuracy" in h]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_axis.plot([h["step"] for h in train], [h["loss"] for h in train], label="train")
    loss_axis.plot([h["step"] for h in evals], [h.get("eval_loss", math.nan) for h in evals], label="eval")
    loss_axis.set(title="training loss", xlabel="step")
    accuracy_axis.plot([h["step"] for h in train], [h.get("accuracy", math.nan) for h in train], label="train")
    accuracy_axis.plot([h["step"] for h in evals], [h["eval_accuracy"] for h in evals], label="eval")
    accuracy_axis.set(title="pair accuracy", xlabel="step", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
