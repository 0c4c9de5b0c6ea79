"""The code location: every stage's assets and checks, the resources, the main job."""

import warnings

import dagster as dg

from rm_pipeline.automation import automate, automation_sensor
from rm_pipeline.folder_sensors import build_annotation_folder_sensor, build_review_folder_sensor
from rm_pipeline.io_managers import AssetValueIOManager, ParquetIOManager
from rm_pipeline.lib.automation import AutomationSettings, FolderWatchSettings
from rm_pipeline.lib.environment import check_environment
from rm_pipeline.publishing import BLOCKING_CHECKS, blocking_checks_by_asset
from rm_pipeline.resources import (
    AnnotationSource,
    BaseModelResource,
    DpoPolicyResource,
    EvaluationSource,
    PipelineStorage,
    QualityGates,
    ReviewSource,
)
from rm_pipeline.stages import (
    aggregation,
    annotations,
    dpo,
    pairs,
    promotion,
    readiness,
    report,
    reward_model,
    scoring,
    split,
)
from rm_pipeline.training_launcher import TrainingLauncherResource

# Dagster features we build on knowingly (asset data versions, specs mapped after resolution) warn at each use, on
# stderr, to every user: not theirs to act on. Every process that runs the stages loads this module.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

STAGES = [annotations, aggregation, pairs, split, reward_model, scoring, report, dpo, readiness, promotion]

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
        "value_io_manager": AssetValueIOManager(storage=storage),
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
    check_environment()  # a bad variable is one line naming it, even one this deployment's launcher ignores
    folder_watch = folder_watch or FolderWatchSettings.from_environment()
    assets = dg.load_assets_from_modules(STAGES, include_specs=True)  # specs: the annotation_folder source
    checks = dg.load_asset_checks_from_modules(STAGES)
    defs = dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[reward_pipeline_job],
        sensors=[
            build_annotation_folder_sensor(folder_watch),
            build_review_folder_sensor(folder_watch),
            automation_sensor,
        ],
        resources=build_resources(storage_root, annotations_dir, base_model, evaluation_dir, reviews_dir),
        # Stages run one after another on one machine; a process per step only adds start-up time.
        executor=dg.in_process_executor,
    )
    defs = stamp_blocking_checks(defs, blocking_checks_by_asset([*assets, *checks]))
    return automate(defs, automation or AutomationSettings.from_environment())


def stamp_blocking_checks(defs: dg.Definitions, by_asset: dict[dg.AssetKey, list[str]]) -> dg.Definitions:
    """Each gated asset's blocking check names in its definition metadata: the IO manager publishes its table only
    once they pass."""
    return defs.map_resolved_asset_specs(
        func=lambda spec: spec.merge_attributes(metadata={BLOCKING_CHECKS: by_asset[spec.key]}),
        selection=dg.AssetSelection.assets(*by_asset),
    )


defs = build_defs()
