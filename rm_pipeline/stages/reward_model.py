"""Stage 5: the reward model, trained by TRL's RewardTrainer in a child process."""

import sys
from dataclasses import asdict, fields

import dagster as dg
import pandas as pd
from pydantic import Field

from rm_pipeline.guards import published_table
from rm_pipeline.lib.reward_training import TrainingSettings
from rm_pipeline.resources import BaseModel, PipelineStorage
from rm_pipeline.stages.metadata import OWNERS
from rm_pipeline.stages.pairs import PairsConfig
from rm_pipeline.stages.split import split_data_version

GROUP = "training"


class RewardModelConfig(dg.Config):
    base_model: str = Field(default="", description="Hugging Face id or local path; empty: the base_model resource "
                                                    "(the tokenizer preference_pairs counted tokens with).")
    epochs: float = Field(default=1.0, description="Passes over the train split.")
    learning_rate: float = Field(default=5e-5)
    warmup_ratio: float = Field(default=0.1, description="Share of steps with a linearly rising learning rate.")
    weight_decay: float = Field(default=0.0)
    batch_size: int = Field(default=16, description="Pairs per device and step.")
    gradient_accumulation_steps: int = Field(default=1)
    use_margin: bool = Field(default=True, description="Preference strength becomes TRL's margin column.")
    margin_per_strength: float = Field(default=0.5, description="Margin per unit of strength.")
    center_rewards_coefficient: float | None = Field(default=None, description="TRL's reward centring (e.g. 0.01).")
    lora_rank: int = Field(default=0, description="LoRA rank through peft (0: full fine-tuning); the score head is "
                                                  "trained and saved (modules_to_save).")
    lora_alpha: int = Field(default=16)
    lora_dropout: float = Field(default=0.05)
    train_last_n_layers: int | None = Field(default=None, description="Freeze all but the last N transformer layers.")
    eval_steps: int = Field(default=100, description="Evaluate and checkpoint every N steps.")
    early_stopping_patience: int | None = Field(
        default=3, description="Stop after this many evaluations without better eval accuracy; the best "
                               "checkpoint is kept. None: no early stopping.")
    early_stopping_eval_pairs: int = Field(
        default=256, description="Eval pairs scored at each early-stopping evaluation (a fixed sample).")
    logging_steps: int = Field(default=10, description="Progress (step, loss, accuracy, ETA) every N steps.")
    seed: int = Field(default=0)
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory (large models only).")


def training_settings(config: RewardModelConfig, base_model: BaseModel, max_length: int) -> TrainingSettings:
    values = {f.name: getattr(config, f.name) for f in fields(TrainingSettings) if hasattr(config, f.name)}
    values.update(base_model=config.base_model or base_model.name_or_path,
                  trust_remote_code=base_model.trust_remote_code, max_length=max_length)
    return TrainingSettings(**values)


def launch_command() -> list[str]:
    """accelerate (DDP) when several GPUs are visible; else a plain child process."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                "-m", "rm_pipeline.stages.reward_model_worker"]
    return [sys.executable, "-m", "rm_pipeline.stages.reward_model_worker"]


@dg.asset(group_name=GROUP, kinds={"pytorch", "huggingface"}, code_version="1", owners=OWNERS,
          deps=["preference_split"])
def reward_model(context: dg.AssetExecutionContext, config: RewardModelConfig, storage: PipelineStorage,
                 base_model: BaseModel) -> dg.MaterializeResult:
    """A one-unit score head on the base checkpoint, fitted with the Bradley-Terry loss by TRL's
    RewardTrainer; a Hugging Face model directory at `models/rm-<data version>-<settings>-<time>`,
    also reachable as `models/current`. Re-materialising after a crash resumes from the last checkpoint."""
    split_path = published_table(context.instance, storage, "preference_split")
    split = pd.read_parquet(split_path)
    pairs_event = context.instance.get_latest_materialization_event(dg.AssetKey("preference_pairs"))
    max_length = pairs_event.asset_materialization.metadata["max_length"].value if pairs_event else PairsConfig().max_length
    settings = training_settings(config, base_model, max_length)
    data_version = split_data_version(split)
    run_name = f"rm-{data_version}-{settings.fingerprint()}"
    batches = sorted(set(",".join(split["batches"]).split(",")))
    context.log.info(f"training {run_name} on {len(split)} pairs from batches {batches}")
    client = dg.PipesSubprocessClient(env={"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    invocation = client.run(context=context, command=launch_command(), extras={
        "split_path": str(split_path), "settings": asdict(settings), "models_dir": str(storage.directory("models")),
        "run_name": run_name, "data_version": data_version, "annotation_batches": batches})
    return invocation.get_materialize_result()
