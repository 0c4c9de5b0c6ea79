"""The code location: every stage's assets and checks, the resources, the main job."""

import dagster as dg

from rm_pipeline.lib.automation import AutomationSettings, FolderWatchSettings
from rm_pipeline.resources import (
    AnnotationSource,
    BaseModelResource,
    DpoPolicyResource,
    EvaluationSource,
    ParquetIOManager,
    PipelineStorage,
    QualityGates,
    ReviewSource,
)
from rm_pipeline.stages import aggregation, annotations, dpo, evaluation, pairs, reward_model, split
from rm_pipeline.stages.automation import automate, automation_sensor
from rm_pipeline.training_launcher import TrainingLauncherResource

STAGES = [annotations, aggregation, pairs, split, reward_model, evaluation, dpo]

reward_pipeline_job = dg.define_asset_job(
    "reward_pipeline_job",
    selection=dg.AssetSelection.all(),
    description="Annotations to a trained, evaluated reward model and its readiness verdict, through every gate.",
)


def build_resources(
    storage_root: str | None = None,
    annotations_dir: str | None = None,
    base_model: str | None = None,
    evaluation_dir: str | None = None,
    reviews_dir: str | None = None,
) -> dict:
    storage = PipelineStorage(root=storage_root) if storage_root else PipelineStorage()
    return {
        "storage": storage,
        "io_manager": ParquetIOManager(storage=storage),
        "annotation_source": AnnotationSource(directory=annotations_dir) if annotations_dir else AnnotationSource(),
        "base_model": BaseModelResource(name_or_path=base_model) if base_model else BaseModelResource(),
        "evaluation_source": EvaluationSource(directory=evaluation_dir) if evaluation_dir else EvaluationSource(),
        "review_source": ReviewSource(directory=reviews_dir) if reviews_dir else ReviewSource(),
        "quality_gates": QualityGates(),
        # where the training worker runs: $RM_PIPELINE_TRAINING_LAUNCHER (a child process unless set)
        "training_launcher": TrainingLauncherResource.from_environment(),
        "dpo_policy": DpoPolicyResource(),  # off unless $RM_PIPELINE_DPO_POLICY names a policy
    }


def build_defs(
    storage_root: str | None = None,
    annotations_dir: str | None = None,
    base_model: str | None = None,
    evaluation_dir: str | None = None,
    folder_watch: FolderWatchSettings | None = None,
    reviews_dir: str | None = None,
    automation: AutomationSettings | None = None,
) -> dg.Definitions:
    """The code location; `folder_watch` defaults to FolderWatchSettings with $RM_PIPELINE_SENSOR_INTERVAL,
    `automation` to AutomationSettings with $RM_PIPELINE_RETRAIN_CRON and $RM_PIPELINE_RETRAIN_TIMEZONE."""
    folder_watch = folder_watch or FolderWatchSettings.from_environment()
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules(STAGES, include_specs=True),  # specs: the annotation_folder source
        asset_checks=dg.load_asset_checks_from_modules(STAGES),
        jobs=[reward_pipeline_job],
        sensors=[
            annotations.build_annotation_folder_sensor(folder_watch),
            aggregation.build_review_folder_sensor(folder_watch),
            automation_sensor,
        ],
        resources=build_resources(storage_root, annotations_dir, base_model, evaluation_dir, reviews_dir),
        # Stages run one after another on one machine; a process per step only adds start-up time.
        executor=dg.in_process_executor,
    )
    return automate(defs, automation or AutomationSettings.from_environment())


defs = build_defs()
