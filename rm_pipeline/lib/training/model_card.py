"""The model card (README.md) and training curves saved in a published model directory."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

from rm_pipeline.lib.markdown import markdown_table
from rm_pipeline.lib.model_files import LINEAGE_FILE
from rm_pipeline.lib.training.length_head import card_section
from rm_pipeline.lib.training.settings import TrainingSettings


def model_card(settings: TrainingSettings, metrics: dict, facts: dict) -> str:
    return _card(settings, metrics, facts) + (card_section(metrics) if settings.length_head else "")


def _card(settings: TrainingSettings, metrics: dict, facts: dict) -> str:
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

## Training pairs
{_training_pairs_section(facts)}

## Metrics
{markdown_table([{"metric": k, "value": v} for k, v in metrics.items()])}

## Lineage
Also in `{LINEAGE_FILE}`; `rm-pipeline lineage <this directory>` checks the files against the disk.

{_lineage_section(facts)}

Whether this model is approved for optimisation is decided by the readiness gate, recorded beside it.
"""


def _training_pairs_section(facts: dict) -> str:
    """The rows trained on by kind: annotated pairs and the augmented ones (settings `non_contextual_pairs`,
    `style_neutral_pairs`; lib/augmentation.py), which come from the train side only and are never held out."""
    ledger = facts.get("training_pairs")
    if not ledger:
        return "Annotated train pairs only (no ledger recorded)."
    return (
        "Rows trained on, by kind; augmented rows are built from annotated train pairs only and never scored "
        "as held-out pairs.\n\n" + markdown_table(ledger)
    )


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
