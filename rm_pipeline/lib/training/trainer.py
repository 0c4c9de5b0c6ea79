"""The one module that touches TRL: the RewardTrainer subclass with our loss, rewards of packed batches and
statistics kept on the device, its config, collators and progress callback, and the run's metrics read from it."""

from __future__ import annotations

import math
import time
from pathlib import Path

from rm_pipeline.lib.evaluation.accuracy import TIE_TOLERANCE
from rm_pipeline.lib.hardware import hardware, peak_memory_mb
from rm_pipeline.lib.pairs import PREFERRED
from rm_pipeline.lib.precision import (
    uses_bf16,
)
from rm_pipeline.lib.training.data import TrainingData
from rm_pipeline.lib.training.length_head import QUALITY, odin_terms, output_layer
from rm_pipeline.lib.training.packing import (
    Batching,
    TokenBudgetSampler,
    packed_collator,
    packed_length,
    packed_rewards,
    resolve_batching,
    response_lengths,
)
from rm_pipeline.lib.training.settings import Loss, Report, TrainingSettings


def reward_config(settings: TrainingSettings, checkpoint_dir: Path, has_eval: bool):
    from trl import RewardConfig

    device = hardware()
    evaluate = has_eval and settings.early_stopping_patience is not None
    return RewardConfig(
        output_dir=str(checkpoint_dir),
        use_cpu=device["device"] == "cpu",
        bf16=uses_bf16(settings.precision, device["device"]),
        optim="adamw_torch_fused",  # one kernel per step for all parameters, on CUDA and on CPU (torch >= 2.4)
        logging_nan_inf_filter=False,  # its check reads every step's loss on the host: a NaN is logged as NaN
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


def progress_callback(report: Report):
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
            output.update(response_lengths(examples))
            return output

    return PreferenceCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)


def pair_credit(difference):
    """`evaluation.accuracy.pair_credit` on a tensor, on its device: 1 right, 0 wrong, 0.5 a tie."""
    import torch

    return torch.where(difference.abs() <= TIE_TOLERANCE, 0.5, (difference > 0).to(difference.dtype))


class DeviceStatistics:
    """Accuracy (pair credit over preferred pairs), margins, rewards and tokens of the batches since the last log
    line, summed on the device per mode: read (one host sync, gathered over processes) at each log. `extras`
    (per-batch scalars, the same names in every batch) are read as their mean over those batches."""

    def __init__(self):
        self.pending: dict = {}
        self.extra_names: dict = {}  # per mode, the names of the extras summed after the fixed statistics
        self.tokens_seen = 0.0

    def add(self, mode: str, chosen, rejected, preference, tokens, extras: dict | None = None) -> None:
        import torch

        chosen, rejected = chosen.detach().float(), rejected.detach().float()
        names = tuple(extras or {})
        # the extras, then the count of batches that averages them
        per_batch = (
            [*(extras[n].detach().float().reshape(()) for n in names), torch.ones_like(chosen[0])] if names else []
        )
        difference, rewards = chosen - rejected, torch.cat([chosen, rejected])
        preferred = (preference == PREFERRED).float()
        sums = torch.stack(
            [
                (pair_credit(difference) * preferred).sum(),
                preferred.sum(),
                difference.sum(),
                torch.ones_like(difference).sum(),  # the pair count, made on the device: no copy from the host
                rewards.sum(),
                torch.as_tensor(tokens, device=rewards.device).float(),
                *per_batch,
            ]
        )
        extremes = torch.stack([-rewards.min(), rewards.max()])  # both maxima: one reduction
        if mode in self.pending:
            sums, extremes = self.pending[mode][0] + sums, torch.maximum(self.pending[mode][1], extremes)
        self.pending[mode], self.extra_names[mode] = (sums, extremes), names

    def read(self, mode: str, accelerator) -> dict[str, float]:
        import torch

        if mode not in self.pending:
            return {}
        (sums, extremes), names = self.pending.pop(mode), self.extra_names.get(mode, ())
        gathered = accelerator.gather(torch.cat([sums, extremes])[None]).reshape(-1, len(sums) + 2)
        credit, preferred, margin, pairs, reward, tokens, *extras = gathered[:, :-2].sum(dim=0).tolist()
        lowest, highest = gathered[:, -2:].max(dim=0).values.tolist()
        if mode == "train":
            self.tokens_seen += tokens
        return {
            "accuracy": credit / preferred if preferred else math.nan,  # NaN: ties only
            "margin": margin / pairs,
            "mean_reward": reward / (2 * pairs),
            "min_reward": -lowest,
            "max_reward": highest,
            "num_tokens": self.tokens_seen if mode == "train" else tokens,
            **{name: value / extras[-1] for name, value in zip(names, extras)},  # extras[-1]: the batches
        }


PADDED = Batching()


def pair_credit_trainer_class(
    loss: Loss = "bradley_terry", batching: Batching = PADDED, length_head: tuple[float, float] | None = None
):
    """TRL's RewardTrainer (checkpointing, resume, evaluation, logging) with its `compute_loss` replaced:

    - the rewards of padded batches from the model's output, of packed ones (`batching`) by `packed_rewards`;
    - the loss is `preference_loss` on each pair's target preference (a tie is 0.5), as `loss` says;
    - with `length_head` (λ_L, λ_O), ODIN: the loss on the sum of the quality and length heads' rewards plus
      `length_head.odin_terms`; accuracy, rewards and the logits returned are the quality head's, as published;
    - no host sync in the step: accuracy (the evaluation's pair credit over preferred pairs, so the curves, the
      model card and the evaluation report count the same pairs the same way), margins and reward statistics are
      summed on the device and read at each log line;
    - with a token budget, batches of pairs grouped by length up to that many tokens."""
    import torch
    from torch.utils.data import DataLoader
    from trl import RewardTrainer

    class PairCreditRewardTrainer(RewardTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.statistics = DeviceStatistics()

        def rewards(self, model, inputs):
            """(chosen, rejected, tokens): rewards per sequence, (sequences, 2) with a length head."""
            if "last_index" in inputs:
                implementation = self.accelerator.unwrap_model(model).config._attn_implementation
                chosen, rejected = packed_rewards(model, inputs, implementation)
                return chosen, rejected, (inputs["pair"] >= 0).sum()  # padding of a row per pair has no pair
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
            return chosen, rejected, inputs["attention_mask"].sum()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            preference, margin = inputs.pop("preference"), inputs.pop("margin", None)
            lengths = inputs.pop("response_tokens", None)
            chosen, rejected, tokens = self.rewards(model, inputs)
            penalty, extras = 0.0, None
            if length_head is not None:
                both = torch.cat([chosen, rejected])
                penalty, extras = odin_terms(both, lengths, output_layer(model).weight, *length_head)
                (chosen, rejected), quality = both.sum(dim=-1).chunk(2), both[:, QUALITY].chunk(2)
            signal = preference_loss(chosen, rejected, preference, margin, loss) + penalty
            if self.args.center_rewards_coefficient is not None:  # as TRL adds it
                signal = signal + self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
            if length_head is not None:  # measured and returned: the quality head, the model published
                chosen, rejected = quality
            mode = "train" if self.model.training else "eval"
            self.statistics.add(mode, chosen, rejected, preference, tokens, extras)
            return (signal, {"logits": torch.cat([chosen, rejected])[:, None]}) if return_outputs else signal

        def log(self, logs, start_time=None):
            mode = "train" if self.model.training else "eval"
            prefix = "eval_" if mode == "eval" else ""
            logs.update({prefix + key: value for key, value in self.statistics.read(mode, self.accelerator).items()})
            super().log(logs, start_time)

        def get_train_dataloader(self):
            if not batching.max_tokens:
                return super().get_train_dataloader()
            dataset = self._remove_unused_columns(self.train_dataset, description="Training")
            sampler = TokenBudgetSampler(
                budget_lengths(dataset, batching), batching.max_tokens, not batching.packed, self.args.seed
            )
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
            return self.accelerator.prepare(loader)

    return PairCreditRewardTrainer


def budget_lengths(dataset, batching: Batching) -> list[int]:
    """Each pair's tokens as its batch counts them: packed, or padded (twice its longer sequence)."""
    chosen, rejected = dataset["chosen_ids"], dataset["rejected_ids"]
    if batching.packed:
        return [packed_length(c, r, batching.shared_prompt) for c, r in zip(chosen, rejected)]
    return [2 * max(len(c), len(r)) for c, r in zip(chosen, rejected)]


def build_trainer(
    model, tokenizer, peft_config, data: TrainingData, settings: TrainingSettings, checkpoint_dir: Path, progress
):
    from transformers import EarlyStoppingCallback, PrinterCallback

    callbacks = [progress]
    if data.evaluation is not None and settings.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    args = reward_config(settings, checkpoint_dir, data.evaluation is not None)
    batching = resolve_batching(settings, model, hardware()["device"])
    collator = (
        packed_collator(batching.shared_prompt, batching.row_per_pair)
        if batching.packed
        else preference_collator(tokenizer, args)
    )
    odin = (settings.length_correlation_weight, settings.head_orthogonality_weight) if settings.length_head else None
    trainer = pair_credit_trainer_class(settings.loss, batching, odin)(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=data.train,
        eval_dataset=data.early_stopping,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # every log dict on stdout: `progress` reports them, readably
    return trainer


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
