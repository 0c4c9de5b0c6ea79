"""Padding-free and shared-prompt batches for decoders, and batches sized by a token budget.

A packed batch is one row: for each pair, its shared prompt (the longest common prefix of the chosen and rejected
token ids, so exact under any tokenizer or chat template), then the rest of the chosen sequence, then the rest of
the rejected one, whose positions continue from the prompt's end. Without a shared prompt the prefix is empty, and
the row holds the chosen and rejected sequences whole. One rule masks both layouts: a query sees a key of the same
pair, at or before it, in the prompt or in its own response; so a rejected token never sees the chosen response.
With causal attention each sequence's hidden states are then those of its padded computation, and the reward is the
score head's output at its last token (never a padded position). Knows nothing of Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from rm_pipeline.lib.pairs import PREFERRED
from rm_pipeline.lib.precision import head_module_name
from rm_pipeline.lib.settings import SettingError
from rm_pipeline.lib.training.settings import TrainingSettings

PROMPT, CHOSEN, REJECTED = 0, 1, 2  # the parts of a packed pair
# implementations that find sequence boundaries in restarting position_ids themselves (varlen kernels)
VARLEN = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def is_decoder(model) -> bool:
    """A causal decoder, by its config: its type has a causal-LM class and no masked-LM class (BERT-likes have both)
    and it doesn't turn causality off. Models of remote code are not in the mappings: they keep padded batches."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    config = model.config
    return (
        type(config) in MODEL_FOR_CAUSAL_LM_MAPPING
        and type(config) not in MODEL_FOR_MASKED_LM_MAPPING
        and not getattr(config, "is_encoder_decoder", False)
        and getattr(config, "is_causal", True) is not False
    )


@dataclass(frozen=True)
class Batching:
    """How a run's batches are laid out, resolved from the settings for its model and device."""

    packed: bool = False
    shared_prompt: bool = False
    max_tokens: int = 0  # 0: a fixed number of pairs per batch


def resolve_batching(settings: TrainingSettings, model, device: str) -> Batching:
    """The levers' auto values for this model and device; a lever the model can't take is refused in one line."""
    decoder = is_decoder(model)
    if settings.padding_free == "on" and not decoder:
        raise SettingError(
            f"padding_free is on, but {type(model).__name__} is not a causal decoder (an encoder attends both ways): "
            "its batches stay padded; set padding_free to auto or off"
        )
    packed = decoder and (settings.padding_free == "on" or (settings.padding_free == "auto" and device == "cuda"))
    if settings.shared_prompt == "on" and not packed:
        raise SettingError("shared_prompt is on, but batches are padded: it needs padding_free (on, or auto on a GPU)")
    if settings.shared_prompt == "on" and settings.attention in VARLEN:
        raise SettingError(f"shared_prompt is on, but {settings.attention} can't mask the other response: use auto")
    shared = packed and (
        settings.shared_prompt == "on" or (settings.shared_prompt == "auto" and settings.attention not in VARLEN)
    )
    return Batching(packed, shared, settings.max_tokens_per_batch)


def attention_implementation(settings: TrainingSettings, batching: Batching, device: str) -> str | None:
    """The attention to set on the model, None to keep its default."""
    if settings.attention != "auto":
        return settings.attention
    return "flex_attention" if batching.packed and device == "cuda" else None


def shared_prefix_length(chosen, rejected) -> int:
    """Tokens the chosen and rejected sequences share at their start, leaving each at least its last token."""
    limit = min(len(chosen), len(rejected)) - 1
    if limit <= 0:
        return 0
    differs = np.flatnonzero(np.asarray(chosen[:limit]) != np.asarray(rejected[:limit]))
    return int(differs[0]) if differs.size else limit


def packed_length(chosen, rejected, shared_prompt: bool) -> int:
    return len(chosen) + len(rejected) - (shared_prefix_length(chosen, rejected) if shared_prompt else 0)


def packed_collator(shared_prompt: bool) -> Callable[[list[dict]], dict]:
    """Pairs (`chosen_ids`, `rejected_ids`, optional `margin`, `preference`) into one packed row: `input_ids`,
    `position_ids`, each token's `pair` and `part` (for the mask), and `last_index`, the row index of each chosen
    then each rejected sequence's last token."""
    import torch

    def collate(examples: list[dict]) -> dict:
        ids, positions, pairs, parts, chosen_last, rejected_last = [], [], [], [], [], []
        offset = 0
        for number, example in enumerate(examples):
            chosen, rejected = list(example["chosen_ids"]), list(example["rejected_ids"])
            shared = shared_prefix_length(chosen, rejected) if shared_prompt else 0
            ids += chosen + rejected[shared:]
            positions += [*range(len(chosen)), *range(shared, len(rejected))]
            parts += [PROMPT] * shared + [CHOSEN] * (len(chosen) - shared) + [REJECTED] * (len(rejected) - shared)
            pairs += [number] * (len(chosen) + len(rejected) - shared)
            chosen_last.append(offset + len(chosen) - 1)
            offset += len(chosen) + len(rejected) - shared
            rejected_last.append(offset - 1)
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "pair": torch.tensor(pairs, dtype=torch.int32),
            "part": torch.tensor(parts, dtype=torch.int8),
            "last_index": torch.tensor(chosen_last + rejected_last, dtype=torch.long),
            "preference": torch.tensor([e.get("preference", PREFERRED) for e in examples], dtype=torch.float),
        }
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
        return batch

    return collate


def mask_rule(pair, part, query, key):
    """True where `query` attends to `key` (tensors of row indices, broadcast): the packed layout's one rule."""
    key_part = part[key]
    return (pair[query] == pair[key]) & (key <= query) & ((key_part == PROMPT) | (key_part == part[query]))


def dense_mask(pair, part, eager: bool = False):
    """The rule as a 4D mask for sdpa (bool, True attends) or eager attention (additive float)."""
    import torch

    index = torch.arange(pair.shape[0], device=pair.device)
    allowed = mask_rule(pair, part, index[:, None], index[None, :])[None, None]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, device=pair.device).masked_fill_(~allowed, torch.finfo(torch.float32).min)


def block_mask(pair, part):
    """The rule as flex_attention's BlockMask: blocks nobody attends to are skipped, not computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, query, key):
        return mask_rule(pair, part, query, key)

    length = pair.shape[0]
    return create_block_mask(mask_mod, B=1, H=None, Q_LEN=length, KV_LEN=length, device=pair.device)


def attention_mask_for(implementation: str, pair, part):
    """What the model's attention takes for a packed row: nothing for a varlen kernel (position_ids say where
    sequences start; the padding-free layout only), a BlockMask for flex_attention, a dense 4D mask otherwise."""
    if implementation in VARLEN:
        return None
    if implementation == "flex_attention":
        return block_mask(pair, part)
    return dense_mask(pair, part, eager=implementation == "eager")


def score_head(model):
    """The one-unit score head of a (PEFT-wrapped, DDP-wrapped) sequence-classification model."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT
    return getattr(inner, head_module_name(inner))


@contextmanager
def head_outputs(model):
    """The score head's outputs during a forward pass, kept in a list: its reward at every position."""
    outputs: list = []
    handle = score_head(model).register_forward_hook(lambda module, inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def packed_rewards(model, batch: dict, implementation: str):
    """(chosen, rejected) rewards of a packed batch: the model's forward (through its wrappers, so DDP and PEFT
    see it), the head's reward at each sequence's last token gathered from its per-position output."""
    mask = attention_mask_for(implementation, batch["pair"], batch["part"])
    with head_outputs(model) as outputs:
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask, use_cache=False)
    per_position = outputs[-1]
    if per_position.dim() != 3 or per_position.shape[1] != batch["input_ids"].shape[1]:
        raise ValueError(
            f"{type(model).__name__}'s score head doesn't read every position: padding_free needs a decoder's head"
        )
    return per_position[0, batch["last_index"], 0].chunk(2)


def token_budget_batches(lengths, budget: int, padded: bool, seed: int, epoch: int) -> list[list[int]]:
    """Batches of pair indices within `budget` tokens (real tokens, or padded ones: pairs times the longest), grouped
    by length: shuffled, cut into megabatches of ~50 batches sorted by length, filled greedily, batches shuffled. A
    pair longer than the budget is a batch of its own."""
    rng = np.random.default_rng([seed, epoch])
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    mean = max(float(lengths.mean()) if len(lengths) else 1.0, 1.0)
    megabatch = max(int(50 * budget / mean), 1)
    batches: list[list[int]] = []
    for start in range(0, len(order), megabatch):
        chunk = order[start : start + megabatch]
        current: list[int] = []
        longest = total = 0
        for index in chunk[np.argsort(-lengths[chunk], kind="stable")].tolist():
            length = int(lengths[index])
            cost = max(longest, length) * (len(current) + 1) if padded else total + length
            if current and cost > budget:
                batches.append(current)
                current, longest, total = [], 0, 0
            current.append(index)
            longest, total = max(longest, length), total + length
        if current:
            batches.append(current)
    return [batches[i] for i in rng.permutation(len(batches))]


class TokenBudgetSampler:
    """A batch sampler over `token_budget_batches`, a new order each epoch (set by the Trainer)."""

    def __init__(self, lengths, budget: int, padded: bool, seed: int):
        self.lengths, self.budget, self.padded, self.seed, self.epoch = lengths, budget, padded, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        return token_budget_batches(self.lengths, self.budget, self.padded, self.seed, self.epoch)

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
