"""Padding-free and shared-prompt batches for decoders, and batches sized by a token budget.

A packed batch is one row (a row per pair where attention takes a dense mask): for each pair, its shared prompt
(the longest common prefix of the chosen and rejected token ids, so exact under any tokenizer or chat template),
then the rest of the chosen sequence, then the rest of the rejected one, whose positions continue from the prompt's
end. Without a shared prompt the prefix is empty, and the row holds the chosen and rejected sequences whole. One
rule masks both layouts: a query sees a key of the same pair, at or before it, in the prompt or in its own response;
so a rejected token never sees the chosen response.
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
    row_per_pair: bool = False  # for attention through a dense mask
    attention: str | None = None  # the implementation to set on the model; None: its default


def resolve_batching(settings: TrainingSettings, model, device: str) -> Batching:
    """The levers' auto values for this model and device; a lever the model can't take is refused in one line."""
    decoder = is_decoder(model)
    if settings.padding_free == "on" and not decoder:
        raise SettingError(
            f"padding_free is on, but {type(model).__name__} is not a causal decoder (an encoder attends both ways): "
            "its batches stay padded; set padding_free to auto or off"
        )
    packed = decoder and (settings.padding_free == "on" or (settings.padding_free == "auto" and device == "cuda"))
    if settings.attention == "flex_attention" and device != "cuda":
        raise SettingError(
            "attention is flex_attention, which has no backward on a CPU in torch: use auto, sdpa or eager"
        )
    if settings.shared_prompt == "on" and not packed:
        raise SettingError("shared_prompt is on, but batches are padded: it needs padding_free (on, or auto on a GPU)")
    if settings.shared_prompt == "on" and settings.attention in VARLEN:
        raise SettingError(f"shared_prompt is on, but {settings.attention} can't mask the other response: use auto")
    shared = packed and (
        settings.shared_prompt == "on" or (settings.shared_prompt == "auto" and settings.attention not in VARLEN)
    )
    attention = settings.attention if settings.attention != "auto" else None
    if attention is None and packed and device == "cuda":
        attention = "flex_attention"
    dense = attention not in ("flex_attention", *VARLEN)
    return Batching(packed, shared, settings.max_tokens_per_batch, packed and dense, attention)


def shared_prefix_length(chosen, rejected) -> int:
    """Tokens the chosen and rejected sequences share at their start, leaving each at least its last token."""
    limit = min(len(chosen), len(rejected)) - 1
    if limit <= 0:
        return 0
    differs = np.flatnonzero(np.asarray(chosen[:limit]) != np.asarray(rejected[:limit]))
    return int(differs[0]) if differs.size else limit


def packed_length(chosen, rejected, shared_prompt: bool) -> int:
    return len(chosen) + len(rejected) - (shared_prefix_length(chosen, rejected) if shared_prompt else 0)


def packed_collator(shared_prompt: bool, row_per_pair: bool = False) -> Callable[[list[dict]], dict]:
    """Pairs (`chosen_ids`, `rejected_ids`, optional `margin`, `preference`) packed: `input_ids`, `position_ids`,
    each token's `pair` and `part` (for the mask), and `last_index`, the flat index of each chosen then each rejected
    sequence's last token. One row for the batch, or (`row_per_pair`, for dense masks, whose cost grows with the
    square of a row) a row per pair, right-padded with tokens that attend only to padding."""
    import torch

    def collate(examples: list[dict]) -> dict:
        rows = [_packed_pair(example, number, shared_prompt) for number, example in enumerate(examples)]
        if not row_per_pair:
            rows = [tuple(sum((row[field] for row in rows), []) for field in range(4))]
        width = max(len(row[0]) for row in rows)
        filled = [[row[field] + [fill] * (width - len(row[0])) for row in rows] for field, fill in enumerate(PADDING)]
        parts = np.asarray(filled[3])
        starts = np.flatnonzero(np.diff(parts.reshape(-1), append=PADDING[3]) != 0)  # each part's last token
        ends = {part: starts[parts.reshape(-1)[starts] == part] for part in (CHOSEN, REJECTED)}
        batch = {
            "input_ids": torch.tensor(filled[0], dtype=torch.long),
            "position_ids": torch.tensor(filled[1], dtype=torch.long),
            "pair": torch.tensor(filled[2], dtype=torch.int32),
            "part": torch.tensor(filled[3], dtype=torch.int8),
            "last_index": torch.tensor(np.concatenate([ends[CHOSEN], ends[REJECTED]]), dtype=torch.long),
            "preference": torch.tensor([e.get("preference", PREFERRED) for e in examples], dtype=torch.float),
        }
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
        batch.update(response_lengths(examples))
        return batch

    return collate


def response_lengths(examples: list[dict]) -> dict:
    """`response_tokens` of each chosen then each rejected response (the rewards' order), where the pairs carry
    them (length_head): empty otherwise."""
    import torch

    if "chosen_tokens" not in examples[0]:
        return {}
    lengths = [e["chosen_tokens"] for e in examples] + [e["rejected_tokens"] for e in examples]
    return {"response_tokens": torch.tensor(lengths, dtype=torch.float)}


PADDING = (0, 0, -1, 3)  # a padding token's id, position, pair and part


def _packed_pair(example: dict, number: int, shared_prompt: bool) -> tuple[list, list, list, list]:
    """(ids, positions, pair, part) of one pair: its shared prompt, the chosen rest, the rejected rest."""
    chosen, rejected = list(example["chosen_ids"]), list(example["rejected_ids"])
    shared = shared_prefix_length(chosen, rejected) if shared_prompt else 0
    return (
        chosen + rejected[shared:],
        [*range(len(chosen)), *range(shared, len(rejected))],
        [number] * (len(chosen) + len(rejected) - shared),
        [PROMPT] * shared + [CHOSEN] * (len(chosen) - shared) + [REJECTED] * (len(rejected) - shared),
    )


def mask_rule(pair, part, row, query, key):
    """True where `query` attends to `key` in `row` (tensors of indices, broadcast): the packed layout's one rule."""
    key_part = part[row, key]
    return (
        (pair[row, query] == pair[row, key]) & (key <= query) & ((key_part == PROMPT) | (key_part == part[row, query]))
    )


def dense_mask(pair, part, eager: bool = False):
    """The rule as a 4D mask for sdpa (bool, True attends) or eager attention (additive float)."""
    import torch

    rows, width = pair.shape
    index = torch.arange(width, device=pair.device)
    row = torch.arange(rows, device=pair.device)[:, None, None]
    allowed = mask_rule(pair, part, row, index[None, :, None], index[None, None, :])[:, None]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, device=pair.device).masked_fill_(~allowed, torch.finfo(torch.float32).min)


def block_mask(pair, part):
    """The rule as flex_attention's BlockMask: blocks nobody attends to are skipped, not computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(row, head, query, key):
        return mask_rule(pair, part, row, query, key)

    rows, width = pair.shape
    # compiled on a GPU (as transformers builds its own): uncompiled, the rule is evaluated densely, rows x width^2
    return create_block_mask(
        mask_mod, B=rows, H=None, Q_LEN=width, KV_LEN=width, device=pair.device, _compile=pair.is_cuda
    )


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
    if per_position.shape[:2] != batch["input_ids"].shape:
        raise ValueError(
            f"{type(model).__name__}'s score head doesn't read every position: padding_free needs a decoder's head"
        )
    # (sequences,) for a one-unit head; (sequences, units) for a wider one (length_head)
    return per_position.reshape(-1, per_position.shape[-1])[batch["last_index"]].squeeze(-1).chunk(2)


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
