"""Stage 5: the reward model, trained by TRL's RewardTrainer in a child process or a GPU container."""

from dataclasses import asdict

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import OWNERS, counts_table
from rm_pipeline.asset_outputs import TRAINING_GROUP as GROUP
from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.lib import gates
from rm_pipeline.lib.asset_values import MODEL_PATH, PublishedModel
from rm_pipeline.lib.augmentation import KIND, augment
from rm_pipeline.lib.fingerprints import split_data_version
from rm_pipeline.lib.tokenization import check_remote_code
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline.lineage_reader import training_facts
from rm_pipeline.resources import BaseModelResource, PipelineStorage
from rm_pipeline.training_launcher import TrainingLauncherResource

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


def training_rows(split: pd.DataFrame, settings: TrainingSettings, base_model: BaseModelResource):
    """The split with the augmented pairs the settings ask for (each row marked with its kind) and their ledger;
    the augmented rows pass the training-pairs gate (train side only, counts add up) or the step fails."""
    augmenting = settings.non_contextual_pairs > 0 or settings.style_neutral_pairs > 0
    rows, ledger = augment(
        split,
        settings.non_contextual_pairs,
        settings.style_neutral_pairs,
        settings.seed,
        base_model.token_lengths if augmenting else None,  # the tokenizer loads only when there is text to count
        base_model.max_length,
    )
    gate = gates.training_pairs_gate(split, rows, ledger) if augmenting else gates.GateResult()
    if not gate.success:
        raise dg.Failure("the augmented training pairs failed their gate: " + "; ".join(gate.failures))
    return rows, ledger


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "huggingface"},
    code_version="3",
    owners=OWNERS,
    io_manager_key="value_io_manager",
    pool="gpu_training",  # one training at a time per deployment (docker/dagster.yaml: concurrency.pools)
)
def reward_model(
    context: dg.AssetExecutionContext,
    config: RewardModelConfig,
    storage: PipelineStorage,
    base_model: BaseModelResource,
    training_launcher: TrainingLauncherResource,
    preference_split: pd.DataFrame,
) -> dg.Output[PublishedModel]:
    """A one-unit score head on the base checkpoint, fitted by TRL's RewardTrainer with the `loss` setting's
    loss (Bradley-Terry by default) on each pair's target preference (a tie pair: 0.5); a Hugging Face model
    directory at `models/rm-<data version>-<settings>-<time>`, never rewritten once published. Its value is a
    pointer to that directory. Re-materialising after a crash resumes from the last checkpoint. With
    `non_contextual_pairs` / `style_neutral_pairs`, augmented rows built from the train side join the training
    rows, marked with their kind and checked by the training-pairs gate first."""
    settings = training_settings(config, base_model)
    check_remote_code(settings.trust_remote_code)  # where the code server runs, not in the training child
    data_version = split_data_version(preference_split)
    run_name = f"rm-{data_version}-{settings.fingerprint()}"
    batches = sorted(set(",".join(preference_split["batches"]).split(",")))
    # what the card and lineage.json record: the stages below the split, the batch and review files, code versions
    lineage = training_facts(
        context.instance, context.asset_key, context.assets_def.code_versions_by_key.get(context.asset_key)
    )
    # the worker (maybe in a container) reads the split it is given from under the storage root
    rows, ledger = training_rows(preference_split, settings, base_model)
    by_kind = {entry[KIND]: entry["built"] for entry in ledger}
    split_path = storage.path("training-inputs", f"{run_name}.parquet")
    rows.to_parquet(split_path, index=False)
    context.log.info(
        f"training {run_name} on {len(preference_split)} pairs from batches {batches}; train rows {by_kind}"
    )
    invocation = training_launcher.launch(
        context,
        extras={
            "split_path": str(split_path),
            "settings": asdict(settings),
            "models_dir": str(storage.directory("models")),
            "run_name": run_name,
            "data_version": data_version,
            "annotation_batches": batches,
            "lineage": {**lineage, "training_pairs": ledger},  # the card and lineage.json show the ledger
        },
        storage_root=storage.root,
    )
    split_path.unlink(missing_ok=True)
    reported = invocation.get_materialize_result()
    metadata = {
        **(reported.metadata or {}),
        **({"trust_remote_code": True} if settings.trust_remote_code else {}),
        "train_rows_by_kind": counts_table(by_kind, key="kind"),  # annotated and augmented (held-out: none)
    }
    model = PublishedModel(
        path=str(metadata[MODEL_PATH].value),
        split_data_version=data_version,
        precision=str(metadata["precision"].value),
    )
    return dg.Output(model, metadata=metadata, data_version=reported.data_version)
