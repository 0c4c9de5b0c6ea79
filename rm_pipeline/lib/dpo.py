"""DPO's implicit reward next to the explicit reward model, and a DPO baseline trained on the same pairs.

A policy πθ trained by DPO from a reference πref carries a reward of its own: r(x, y) = β·log πθ(y|x)/πref(y|x),
summed over the response's tokens only. ``implicit_rewards`` scores pairs with it; ``compare`` sets its pair
accuracy beside the reward model's on the same held-out pairs, with how far the two agree, each with an
interval (``CONFIDENCE``) resampled by prompt group. ``train_dpo_policy`` trains such a policy with TRL's
``DPOTrainer``.

Prompts and responses are tokenized as TRL's DPOTrainer does: a response is what the prompt + response
tokens add after the tokens they share with the prompt alone. Knows nothing of Dagster.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import pair_credit
from rm_pipeline.lib.evaluation.statistics import bootstrap_interval, rate_interval
from rm_pipeline.lib.model_files import POLICY_FILE, read_json_object
from rm_pipeline.lib.settings import check_settings, setting
from rm_pipeline.lib.tokenization import prompt_messages, prompt_text

COMPARISON_FILE = "dpo_comparison.json"  # beside the evaluation report
DISAGREEMENTS_FILE = "dpo_disagreements.csv"


@dataclass(frozen=True)
class DpoSettings:
    beta: float = setting(
        0.1,
        "DPO's β: how hard the policy is held to its reference. The implicit reward is β·log(πθ/πref).",
        above=0,
        maximum=100,
    )
    learning_rate: float = setting(1e-6, "Learning rate of the DPO policy (TRL's default for DPO).", above=0, maximum=1)
    epochs: float = setting(1.0, "Passes over the training pairs.", above=0, maximum=1000)
    max_steps: int = setting(
        -1, "Stop after this many optimiser steps (-1: run every epoch).", minimum=1, special=(-1,)
    )
    batch_size: int = setting(8, "Pairs per optimiser step, and per forward pass when scoring.", minimum=1)
    max_length: int = setting(
        1024,
        "Prompt + response tokens of the policy's tokenizer; longer pairs are left out and counted, never cut.",
        minimum=1,
    )
    seed: int = setting(0, "Seed of the data order and initialisation.", minimum=0, maximum=2**32 - 1)

    def __post_init__(self):
        check_settings(self)


class DpoInputError(ValueError):
    """A model or a set of pairs DPO can't use; its message is one line."""


def load_causal_lm(name_or_path: str, device: str = "cpu"):
    """A causal language model (on ``device``) and its tokenizer from a local folder or the local Hugging Face
    cache: nothing is downloaded. fp32: the implicit reward is a difference of two large log-probabilities."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            local_files_only=True,
            use_safetensors=True,
            dtype=torch.float32,  # never a pickle
        )
    except (OSError, ValueError) as error:  # no such folder or cached id, no weights, not a causal LM
        first_line = next(iter(str(error).strip().splitlines()), type(error).__name__)
        raise DpoInputError(
            f"{name_or_path}: can't be loaded as a local causal language model ({first_line})"
        ) from None
    return model.to(device), tokenizer


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def trl_example(tokenizer, prompt: str, response: str, conversational: bool) -> dict:
    """One side of a pair in TRL's format: chat messages when the tokenizer has a chat template, else the
    prompt text and a blank line (the layout ``tokenization.encode`` gives decoders without a template)."""
    if _uses_chat_template(tokenizer):
        return {
            "prompt": prompt_messages(prompt, conversational),
            "completion": [{"role": "assistant", "content": response}],
        }
    return {"prompt": f"{prompt_text(prompt, conversational)}\n\n", "completion": response}


def _tokens(tokenizer, text_or_messages, **chat) -> list[int]:
    if isinstance(text_or_messages, list):
        return list(
            tokenizer.apply_chat_template(text_or_messages, tokenize=True, return_dict=True, **chat)["input_ids"]
        )
    return list(tokenizer(text_or_messages)["input_ids"])


def _prompt_and_full_ids(tokenizer, prompt: str, response: str, conversational: bool) -> tuple[list[int], list[int]]:
    """The tokenized prompt alone and the tokenized prompt + response, as TRL tokenizes them (a response
    without a chat template ends in EOS, as TRL adds it)."""
    example = trl_example(tokenizer, prompt, response, conversational)
    if isinstance(example["prompt"], list):
        prompt_ids = _tokens(tokenizer, example["prompt"], add_generation_prompt=True)
        return prompt_ids, _tokens(tokenizer, example["prompt"] + example["completion"])
    completion = example["completion"]
    if not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    return _tokens(tokenizer, example["prompt"]), _tokens(tokenizer, example["prompt"] + completion)


def _shared_length(ids: list[int], other: list[int]) -> int:
    shared = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        shared += 1
    return shared


def pair_ids(
    tokenizer, prompt: str, chosen: str, rejected: str, conversational: bool
) -> tuple[list[int], list[int], list[int]]:
    """The prompt's token ids, the chosen response's and the rejected one's, as DPOTrainer splits them: the
    responses start where the tokenized prompt alone and either tokenized prompt + response first differ
    (some chat templates render a prompt differently alone)."""
    prompt_ids, with_chosen = _prompt_and_full_ids(tokenizer, prompt, chosen, conversational)
    _, with_rejected = _prompt_and_full_ids(tokenizer, prompt, rejected, conversational)
    shared = min(_shared_length(prompt_ids, with_chosen), _shared_length(prompt_ids, with_rejected))
    return prompt_ids[:shared], with_chosen[shared:], with_rejected[shared:]


def response_logprobs(
    model, sequences: list[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int
) -> np.ndarray:
    """Σ log π(response token | everything before it) per (prompt ids, response ids): the prompt's own tokens
    are context, never counted."""
    import torch

    from rm_pipeline.lib.scoring import pad_right  # scoring imports torch: not at the Dagster definitions' load

    model.eval()
    device = next(model.parameters()).device
    totals = np.empty(len(sequences), dtype=np.float64)
    order = np.argsort([len(p) + len(r) for p, r in sequences], kind="stable")  # little padding per batch
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = pad_right([sequences[i][0] + sequences[i][1] for i in chunk], pad_token_id)
            response_mask = torch.zeros_like(attention_mask)
            for row, i in enumerate(chunk):
                prompt_length, response_length = len(sequences[i][0]), len(sequences[i][1])
                response_mask[row, prompt_length : prompt_length + response_length] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
            # position t predicts token t + 1
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            picked = logprobs.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            totals[chunk] = (picked * response_mask[:, 1:].to(device)).sum(-1).double().cpu().numpy()
    return totals


def implicit_rewards(policy, reference, tokenizer, pairs: pd.DataFrame, beta: float, batch_size: int) -> pd.DataFrame:
    """``chosen_reward`` and ``rejected_reward`` of each pair (prompt, chosen, rejected, conversational) under
    DPO's implicit reward β·(log πθ − log πref) of the response tokens."""
    tokenized = [
        pair_ids(tokenizer, prompt, chosen, rejected, bool(conversational))
        for prompt, chosen, rejected, conversational in zip(
            pairs["prompt"], pairs["chosen"], pairs["rejected"], pairs["conversational"]
        )
    ]
    sequences = [(p, c) for p, c, _ in tokenized] + [(p, r) for p, _, r in tokenized]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ratio = response_logprobs(policy, sequences, pad, batch_size) - response_logprobs(
        reference, sequences, pad, batch_size
    )
    n = len(pairs)
    return pd.DataFrame({"chosen_reward": beta * ratio[:n], "rejected_reward": beta * ratio[n:]}, index=pairs.index)


def margin_spearman(explicit_margin: np.ndarray, implicit_margin: np.ndarray):
    """A statistic over pair indices (for ``bootstrap_interval``): Spearman's ρ of the two models' margins on
    those pairs. Margins, not rewards: both rewards are defined only up to a constant per prompt (DPO's
    log Z(x)), so the margin is what each model commits to."""
    from scipy.stats import spearmanr

    def statistic(indices: np.ndarray) -> float:
        explicit, implicit = explicit_margin[indices.astype(int)], implicit_margin[indices.astype(int)]
        if np.ptp(explicit) == 0 or np.ptp(implicit) == 0:  # a resample of constant margins: no rank order
            return 0.0
        return float(spearmanr(explicit, implicit).statistic)

    return statistic


def compare(pairs: pd.DataFrame, groups) -> tuple[dict, pd.DataFrame]:
    """The explicit and implicit reward on the same pairs (``explicit_chosen``, ``explicit_rejected``,
    ``implicit_chosen``, ``implicit_rejected``): each one's pair accuracy, their agreement (the share of pairs
    where both pick the same answer; a tie against a pick counts half) and Spearman's ρ of their margins,
    each with an interval (``CONFIDENCE``) resampled by ``groups``; and the pairs where they disagree."""
    if len(pairs) == 0:
        raise ValueError("no pairs to compare the explicit and implicit rewards on")
    groups = np.asarray(groups, dtype=object)
    explicit = (pairs["explicit_chosen"] - pairs["explicit_rejected"]).to_numpy(dtype=float)
    implicit = (pairs["implicit_chosen"] - pairs["implicit_rejected"]).to_numpy(dtype=float)
    explicit_credit, implicit_credit = pair_credit(explicit), pair_credit(implicit)
    agreement = 1.0 - np.abs(explicit_credit - implicit_credit)
    spearman = bootstrap_interval(np.arange(len(pairs)), groups, statistic=margin_spearman(explicit, implicit))
    summary = {
        "n": len(pairs),
        "groups": len(set(map(str, groups))),
        "explicit_accuracy": rate_interval(explicit_credit, groups).as_dict(),
        "implicit_accuracy": rate_interval(implicit_credit, groups).as_dict(),
        "agreement": rate_interval(agreement, groups).as_dict(),
        "margin_spearman": spearman.as_dict(),
        "disagreements": int((agreement < 1).sum()),
    }
    disagreements = pairs.assign(
        explicit_margin=explicit,
        implicit_margin=implicit,
        explicit_picks=np.where(explicit_credit == 1, "chosen", np.where(explicit_credit == 0, "rejected", "tie")),
        implicit_picks=np.where(implicit_credit == 1, "chosen", np.where(implicit_credit == 0, "rejected", "tie")),
    )[agreement < 1]
    return summary, disagreements.sort_values("explicit_margin", key=np.abs, ascending=False)


def read_policy_record(policy: Path) -> dict:
    """What dpo-baseline recorded beside a policy (its reference and β), or {} for a policy trained elsewhere."""
    return read_json_object(Path(policy) / POLICY_FILE, "policy record", DpoInputError) or {}


def train_dpo_policy(
    pairs: pd.DataFrame, base_model: str, output_dir: Path, settings: DpoSettings, facts: dict
) -> dict:
    """Train a policy from ``base_model`` (also its reference) with TRL's DPOTrainer on ``pairs``; save it as
    safetensors in ``output_dir`` with its tokenizer and ``dpo_policy.json`` (reference, β, pairs used).
    Pairs longer than ``max_length`` tokens are left out and counted."""
    import tempfile

    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_causal_lm(base_model)
    reference, _ = load_causal_lm(base_model)
    rows, too_long = [], 0
    for prompt, chosen, rejected, conversational in zip(
        pairs["prompt"], pairs["chosen"], pairs["rejected"], pairs["conversational"]
    ):
        prompt_ids, chosen_ids, rejected_ids = pair_ids(tokenizer, prompt, chosen, rejected, bool(conversational))
        if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > settings.max_length:
            too_long += 1
            continue
        chosen_side = trl_example(tokenizer, prompt, chosen, bool(conversational))
        rows.append(
            {
                "prompt": chosen_side["prompt"],
                "chosen": chosen_side["completion"],
                "rejected": trl_example(tokenizer, prompt, rejected, bool(conversational))["completion"],
            }
        )
    if not rows:
        raise DpoInputError(
            f"none of the {len(pairs)} pairs fits in {settings.max_length} tokens of {base_model}'s tokenizer"
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpo-checkpoints-") as checkpoints:
        config = DPOConfig(
            output_dir=checkpoints,
            beta=settings.beta,
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size,
            max_length=None,  # longer pairs were left out above
            seed=settings.seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            save_strategy="no",
            logging_steps=1,
            report_to=[],
            disable_tqdm=True,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        result = trainer.train()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    last = next((log for log in reversed(trainer.state.log_history) if "loss" in log), {})
    record = {
        "reference": str(Path(base_model).resolve()) if Path(base_model).exists() else base_model,
        "beta": settings.beta,
        "train_pairs": len(rows),
        "pairs_too_long": too_long,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "last_logged": last,
        "seconds": round(time.perf_counter() - started, 1),
        "settings": asdict(settings),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **facts,
    }
    (output_dir / POLICY_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return record
