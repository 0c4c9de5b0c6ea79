"""How a reward model is trained (the `reward_model` run config) and what a training run returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rm_pipeline.lib.fingerprints import settings_fingerprint
from rm_pipeline.lib.precision import (
    PRECISION_HELP,
    Precision,
)
from rm_pipeline.lib.settings import check_settings, setting
from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH

Report = Callable[[str, dict], None]  # (kind: "log" | "progress", payload)
Loss = Literal["bradley_terry", "mse"]
Lever = Literal["auto", "on", "off"]
Attention = Literal["auto", "sdpa", "eager", "flex_attention", "flash_attention_2"]


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
    max_length: int = setting(DEFAULT_MAX_LENGTH, "Longest pair in tokens (set on the base_model resource).", minimum=1)
    # the optimisation
    epochs: float = setting(1.0, "Passes over the train split.", above=0, maximum=1000)
    learning_rate: float = setting(5e-5, "Peak learning rate (linear decay).", above=0, maximum=1)
    warmup_ratio: float = setting(0.1, "Share of steps with a linearly rising learning rate.", minimum=0, maximum=1)
    weight_decay: float = setting(0.0, "AdamW weight decay.", minimum=0, maximum=1)
    batch_size: int = setting(16, "Pairs per device and step.", minimum=1)
    gradient_accumulation_steps: int = setting(1, "Steps whose gradients add up before an update.", minimum=1)
    seed: int = setting(
        0,
        "Seed of the score head's initialisation, the data order and the augmented pairs.",
        minimum=0,
        maximum=2**32 - 1,
    )
    group_by_length: bool = setting(True, "Batches of similar lengths: less padding, same result.")
    gradient_checkpointing: bool = setting(False, "Trade compute for memory (large models only).")
    precision: Precision = setting("auto", PRECISION_HELP)
    # batches on the hardware: decoders only (docs/assets-and-settings.md, "Training a decoder fast")
    padding_free: Lever = setting(
        "auto",
        "Decoders: batches packed with restarting positions, no padding; the reward is read at each sequence's "
        "last token. auto: on for a decoder on a GPU (one row, flex_attention), off on a CPU, where attention "
        "needs a dense mask: on a tiny decoder (bench/train_gpu_mfu.py --tiny, a busy 2-core CPU) one step ran "
        "at 0.69-0.94x padded speed packed, 1.22-1.34x with shared_prompt (64-token prompts), and whole runs "
        "were no faster. on: a decoder anywhere; an encoder keeps padded batches (on refuses one).",
    )
    shared_prompt: Lever = setting(
        "auto",
        "Decoders, with padding_free: a pair's common prefix (its prompt) is computed once, the rejected "
        "response continuing its positions and never seeing the chosen one. auto: on wherever padding_free is "
        "and the attention isn't flash_attention_2 (which can't express the mask).",
    )
    max_tokens_per_batch: int = setting(
        0,
        "0: batch_size pairs per batch. Otherwise pairs of similar lengths are batched up to this many tokens "
        "(real tokens when packed, padded tokens otherwise): fewer, larger batches for short pairs.",
        minimum=0,
    )
    attention: Attention = setting(
        "auto",
        "The attention kernel. auto: flex_attention for packed batches on a GPU (skips the blocks the mask "
        "hides), the model's default otherwise (sdpa); flash_attention_2 needs the flash-attn package.",
    )
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
    margin_per_strength: float = setting(0.5, "Margin per unit of strength.", minimum=0)
    center_rewards_coefficient: float | None = setting(None, "TRL's reward centring (e.g. 0.01).", minimum=0)
    # which weights train
    lora_rank: int = setting(
        0,
        "LoRA rank through peft (0: full fine-tuning); the score head is trained and "
        "saved (modules_to_save), and the adapter merged.",
        minimum=0,
    )
    lora_alpha: int = setting(16, "LoRA scaling.", minimum=1)
    lora_dropout: float = setting(0.05, "LoRA dropout.", minimum=0, below=1)
    train_last_n_layers: int | None = setting(None, "Freeze all but the last N transformer layers.", minimum=0)
    # augmented pairs against shortcuts (rm_pipeline.lib.augmentation): rows of their own, from the train side only
    non_contextual_pairs: float = setting(
        0.0,
        "Causal augmentation (RRM): extra pairs per annotated train pair in which an answer written for the prompt "
        "beats an answer written for another prompt group (preference 1), so that no answer scores well without "
        "reading the prompt. 0: none; 1: as many as the annotated train pairs.",
        minimum=0,
        maximum=10,
    )
    style_neutral_pairs: float = setting(
        0.0,
        "Style-neutral pairs: extra tie pairs (preference 0.5) per annotated train pair, an answer against itself "
        "with a flattering opener, Markdown headings and bullets, filler padding or a restated question, so that "
        "style alone earns nothing (wordings of their own, never the shortcut probes'). 0: none.",
        minimum=0,
        maximum=10,
    )
    # a length head against the length shortcut (rm_pipeline.lib.training.length_head)
    length_head: bool = setting(
        False,
        "ODIN (Chen et al. 2024, 'ODIN: Disentangled Reward Mitigates Hacking in RLHF'): train a second, length head "
        "beside the reward head on the same features; the loss (as `loss` says) sees their sum, a correlation "
        "penalty moves response length into the length head and out of the reward head, and only the reward "
        "(quality) head is published: a one-unit model like any other.",
    )
    length_correlation_weight: float = setting(
        1.0,
        "With length_head, λ_L of ODIN's |ρ(r_Q, L)| - ρ(r_L, L): Pearson's correlation over each batch's responses "
        "(chosen and rejected) of the quality and the length head's rewards with the response's length in tokens.",
        minimum=0,
    )
    head_orthogonality_weight: float = setting(
        0.0,
        "With length_head, λ_O of ODIN's |w_Q·w_L|, the two head rows centred and normalised (their cosine), so that "
        "the heads read different features. 0 (off) as in RLHFlow's ODIN re-implementation: at 1, one seed in "
        "three left the quality head reading length backwards (docs/evaluation.md).",
        minimum=0,
    )
    # evaluation, early stopping and progress
    eval_steps: int = setting(100, "Evaluate and checkpoint every N steps.", minimum=1)
    early_stopping_patience: int | None = setting(
        3,
        "Stop after this many evaluations without better eval accuracy; the best checkpoint is kept. "
        "None: no early stopping.",
        minimum=1,
    )
    early_stopping_eval_pairs: int = setting(
        256,
        "Eval pairs scored at each early-stopping evaluation (a fixed "
        "sample); the whole eval split is scored at the end.",
        minimum=1,
    )
    logging_steps: int = setting(10, "Progress (step, loss, accuracy, ETA) every N steps.", minimum=1)
    # ensembles (rm_pipeline.lib.training.ensemble): K members published as one model directory
    ensemble_members: int = setting(
        1, "Members of an ensemble (Coste et al. 2024); 1: one model.", minimum=1, maximum=32
    )
    ensemble_member_data: Literal["seeds", "bootstrap"] = setting(
        "seeds", "What differs between members: seeds (seed + k) or bootstrap (also a resample of the train pairs)."
    )
    ensemble_lambda: float = setting(1.0, "λ of the conservative score mean - λ·std of the members.", minimum=0)

    def __post_init__(self):
        check_settings(self)

    def fingerprint(self) -> str:
        return settings_fingerprint(self)


@dataclass
class TrainingResult:
    model_dir: Path
    metrics: dict
    history: list[dict] = field(default_factory=list)
