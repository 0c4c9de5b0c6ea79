"""ODIN (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF"): a length head beside the reward
head. During training the score head has two rows on the same features, quality r_Q (row 0) and length r_L (row 1);
the preference loss sees r_Q + r_L, and two terms disentangle them:

- λ_L · (|ρ(r_Q, L)| − ρ(r_L, L)), ρ Pearson's correlation over the batch's responses (chosen and rejected together)
  and L each response's own length in tokens: length goes to the length head, out of the quality head;
- λ_O · |ρ(w_Q, w_L)|, the two head rows centred and normalised (the cosine of the centred rows), as the ODIN
  authors' reference code (RLHFlow/RLHF-Reward-Modeling, odin/) normalises them, so that shrinking a row can't
  satisfy it.

Only the quality row is published: the model directory is an ordinary one-unit reward model. The model config keeps
num_labels = 1 throughout (TRL's RewardTrainer insists on it): the second row is added to the head's output layer
in place, so hooks on the head (fp32 under autocast, packed rewards) stay. Knows nothing of Dagster.
"""

from __future__ import annotations

from rm_pipeline.lib.settings import SettingError
from rm_pipeline.lib.training.packing import score_head

QUALITY, LENGTH = 0, 1  # rows of the training head
EPSILON = 1e-8  # keeps a constant reward's correlation at 0 with a finite gradient
CORRELATION_METRICS = ("length_corr_quality", "length_corr_length")


def output_layer(model):
    """The Linear that makes the rewards: the head itself (BERT, Llama) or its last Linear (RoBERTa's out_proj);
    under LoRA the head's trained copy (peft's modules_to_save)."""
    import torch.nn as nn

    head = score_head(model)
    if hasattr(head, "modules_to_save"):  # peft's ModulesToSaveWrapper: the copy that trains
        head = head.modules_to_save[head.active_adapters[0]]
    layers = [module for module in head.modules() if isinstance(module, nn.Linear)]
    if not layers:
        raise SettingError(f"length_head is on, but {type(head).__name__}, the score head, has no linear layer")
    return layers[-1]


def _set_rows(layer, weight, bias) -> None:
    import torch.nn as nn

    layer.weight = nn.Parameter(weight)
    if layer.bias is not None:
        layer.bias = nn.Parameter(bias)
    layer.out_features = weight.shape[0]


def add_length_head(model) -> None:
    """A second row (the length head) appended to the score head's output layer: the first row stays as loaded (the
    quality head, initialised as a plain run's head), the second initialised alike."""
    import torch

    layer = output_layer(model)
    if layer.out_features != 1:
        raise SettingError(f"length_head is on, but the score head has {layer.out_features} outputs, not 1")
    fresh = torch.empty_like(layer.weight)
    torch.nn.init.normal_(fresh, std=float(layer.weight.detach().std()) or 0.02)
    weight = torch.cat([layer.weight.detach(), fresh])
    bias = torch.cat([layer.bias.detach(), torch.zeros_like(layer.bias)]) if layer.bias is not None else None
    _set_rows(layer, weight, bias)


def drop_length_head(model) -> None:
    """Only the quality row kept: the model becomes an ordinary one-unit reward model, as published."""
    layer = output_layer(model)
    weight = layer.weight.detach()[QUALITY:1].clone()
    bias = layer.bias.detach()[QUALITY:1].clone() if layer.bias is not None else None
    _set_rows(layer, weight, bias)


def pearson(values, lengths):
    """Pearson's correlation of `values` (with gradient) with `lengths` (data), 0 where either is constant."""
    import torch

    lengths = lengths.to(values.dtype)
    centred_lengths = lengths - lengths.mean()
    unit_lengths = centred_lengths / centred_lengths.norm().clamp_min(EPSILON)  # data: no gradient to guard
    centred = values - values.mean()
    return (centred * unit_lengths).sum() / torch.sqrt((centred * centred).sum() + EPSILON)


def row_correlation(weight):
    """|ρ| of the head's two rows: their centred, normalised dot product (ODIN's orthogonality term)."""
    centred = weight - weight.mean(dim=-1, keepdim=True)
    unit = centred / centred.norm(dim=-1, keepdim=True).clamp_min(EPSILON)
    return (unit[QUALITY] * unit[LENGTH]).sum().abs()


def odin_terms(rewards, lengths, weight, length_weight: float, orthogonality_weight: float):
    """(λ_L·(|ρ(r_Q, L)| − ρ(r_L, L)) + λ_O·|ρ(w_Q, w_L)|, {metric: ρ}) for `rewards` (sequences × 2 heads, fp32),
    `lengths` each sequence's response tokens and `weight` the head's two rows: tensors, no host sync."""
    quality = pearson(rewards[:, QUALITY].float(), lengths)
    length = pearson(rewards[:, LENGTH].float(), lengths)
    penalty = length_weight * (quality.abs() - length) + orthogonality_weight * row_correlation(weight.float())
    return penalty, dict(zip(CORRELATION_METRICS, (quality, length)))


def last_correlations(history: list[dict]) -> dict:
    """The correlations of the last logged train batches (and eval, `eval_`), as the run's metrics."""
    found = {}
    for name in (*CORRELATION_METRICS, *("eval_" + name for name in CORRELATION_METRICS)):
        values = [entry[name] for entry in history if name in entry]
        if values:
            found[name] = round(float(values[-1]), 4)
    return found


def reward_length_correlation(scored) -> float | None:
    """Pearson's correlation of a model's rewards with response tokens over a `score_pairs` table's answers."""
    import numpy as np

    rewards = np.concatenate([scored["chosen_reward"].to_numpy(float), scored["rejected_reward"].to_numpy(float)])
    tokens = np.concatenate([scored["chosen_tokens"].to_numpy(float), scored["rejected_tokens"].to_numpy(float)])
    if len(rewards) < 3 or rewards.std() == 0 or tokens.std() == 0:
        return None
    return round(float(np.corrcoef(rewards, tokens)[0, 1]), 4)


def card_section(metrics: dict) -> str:
    """The model card's note: a length head was trained beside this one and dropped, with its correlations."""
    batches = [*CORRELATION_METRICS, *("eval_" + name for name in CORRELATION_METRICS)]
    figures = ", ".join(f"`{name}` {metrics[name]}" for name in batches if name in metrics) or "none logged"
    return (
        "\n## Length head (ODIN)\n\n"
        "Trained with a second, length head beside the reward head (ODIN, Chen et al. 2024): the preference loss "
        "saw their sum, a correlation penalty pushed response length into the length head and out of this one, "
        "and the length head was dropped before publishing, so this directory holds the quality head alone. "
        "Pearson correlations with response length in tokens, quality and length head, over the last logged "
        f"train batches and the last evaluation (`eval_`): {figures}. This model's rewards on the eval split: "
        f"{metrics.get('eval_reward_length_correlation')} (`eval_reward_length_correlation`).\n"
    )
