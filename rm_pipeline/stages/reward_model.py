"""Stage 5: the reward model, trained by TRL's RewardTrainer in a child process or a GPU container."""

from dataclasses import asdict

import dagster as dg
import pandas as pd

from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.guards import published_table
from rm_pipeline.lib.fingerprints import split_data_version
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline.lineage_reader import training_facts
from rm_pipeline.resources import BaseModelResource, PipelineStorage
from rm_pipeline.stages.metadata import OWNERS
from rm_pipeline.training_launcher import TrainingLauncherResource

GROUP = "training"

# The base_model resource owns what its tokenizer defines; `base_model` here overrides its checkpoint only.
RewardModelConfig = config_class(TrainingSettings, "RewardModelConfig", exclude=("trust_remote_code", "max_length"))


def training_settings(config: RewardModelConfig, base_model: BaseModelResource) -> TrainingSettings:
    return settings_from_config(
        TrainingSettings,
        config,
        base_model=config.base_model or base_model.name_or_path,
        trust_remote_code=base_model.trust_remote_code,
        max_length=base_model.max_length,
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "huggingface"},
    code_version="2",
    owners=OWNERS,
    deps=["preference_split"],
    pool="gpu_training",  # one training at a time per deployment (docker/dagster.yaml: concurrency.pools)
)
def reward_model(
    context: dg.AssetExecutionContext,
    config: RewardModelConfig,
    storage: PipelineStorage,
    base_model: BaseModelResource,
    training_launcher: TrainingLauncherResource,
) -> dg.MaterializeResult:
    """A one-unit score head on the base checkpoint, fitted by TRL's RewardTrainer with the `loss` setting's
    loss (Bradley-Terry by default) on each pair's target preference (a tie pair: 0.5); a Hugging Face model
    directory at `models/rm-<data version>-<settings>-<time>`, also reachable as `models/current`.
    Re-materialising after a crash resumes from the last checkpoint."""
    split_path = published_table(context.instance, storage, "preference_split")
    split = pd.read_parquet(split_path)
    settings = training_settings(config, base_model)
    data_version = split_data_version(split)
    run_name = f"rm-{data_version}-{settings.fingerprint()}"
    batches = sorted(set(",".join(split["batches"]).split(",")))
    # what the card and lineage.json record: the stages below the split, the batch and review files, code versions
    lineage = training_facts(
        context.instance, context.asset_key, context.assets_def.code_versions_by_key.get(context.asset_key)
    )
    context.log.info(f"training {run_name} on {len(split)} pairs from batches {batches}")
    invocation = training_launcher.launch(
        context,
        extras={
            "split_path": str(split_path),
            "settings": asdict(settings),
            "models_dir": str(storage.directory("models")),
            "run_name": run_name,
            "data_version": data_version,
            "annotation_batches": batches,
            "lineage": lineage,
        },
        storage_root=storage.root,
    )
    return invocation.get_materialize_result()
