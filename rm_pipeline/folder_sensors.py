"""The folder sensors: a new, changed or removed file in a watched folder is a new version of its external asset
(`annotation_folder`, `review_folder`), reported with its data version, so the stages reading it become stale."""

import json
from pathlib import Path

import dagster as dg

from rm_pipeline.asset_outputs import DATA_VERSION_TAG, records_table
from rm_pipeline.lib.automation import FolderWatchSettings
from rm_pipeline.lib.batch_folder import SKIPPED_COLUMNS
from rm_pipeline.lib.fingerprints import FolderFingerprint, fingerprint_folder
from rm_pipeline.resources import AnnotationSource, ReviewSource
from rm_pipeline.stages.aggregation import review_folder
from rm_pipeline.stages.annotations import annotation_folder


def folder_sensor_options(folder: dg.AssetSpec, settings: FolderWatchSettings) -> dict:
    """`dg.sensor` arguments of a sensor watching the external asset `folder` every `settings.interval_seconds`."""
    return {
        "name": f"{folder.key.to_user_string()}_sensor",
        "minimum_interval_seconds": settings.interval_seconds,
        "default_status": dg.DefaultSensorStatus.RUNNING,
        "description": f"Reports a new version of {folder.key.to_user_string()} (a materialization with its data "
        "version) when a file is added, changed or removed, listing every file (sha256, rows) and the changes. "
        "Files are hashed again only when their size or modification time changed; one still being written "
        "waits for the next tick.",
    }


def folder_tick(
    context: dg.SensorEvaluationContext, folder: dg.AssetSpec, directory: str, settings: FolderWatchSettings
):
    """One tick of a folder sensor: a new version of `folder` when its files changed, else a skip."""
    last = json.loads(context.cursor) if context.cursor else {}
    look = fingerprint_folder(directory, last.get("files"), settings.settle_seconds)
    if look.pending:
        context.log.info(f"still being written, left for the next tick: {', '.join(look.pending)}")
    cursor = json.dumps({"version": look.version, "files": look.state}, sort_keys=True)
    # A first tick (a new UI, a new sensor) knows the version the instance holds: the same version again would
    # make the stages after it run for nothing.
    known = last.get("version") if context.cursor else recorded_version(context.instance, folder.key)
    if look.version != known:
        return dg.SensorResult(asset_events=[folder_version(directory, look, folder.key)], cursor=cursor)
    skip = dg.SkipReason(f"{folder.key.to_user_string()} unchanged")
    # A file touched but not changed: same version, but remember its new mtime so it isn't hashed again.
    return skip if look.state == last.get("files") else dg.SensorResult(skip_reason=skip, cursor=cursor)


def build_annotation_folder_sensor(settings: FolderWatchSettings) -> dg.SensorDefinition:
    @dg.sensor(**folder_sensor_options(annotation_folder, settings))
    def annotation_folder_sensor(context: dg.SensorEvaluationContext, annotation_source: AnnotationSource):
        return folder_tick(context, annotation_folder, annotation_source.directory, settings)

    return annotation_folder_sensor


def folder_version(
    directory: str, look: FolderFingerprint, key: dg.AssetKey = annotation_folder.key
) -> dg.AssetMaterialization:
    """The folder's new data version, every batch in it, what changed since the last version, and every entry
    that is not a batch (file, reason, detail: a lock file, a link leaving the folder, a sub-folder...).

    Reported as a materialization of the external asset (vendors materialise it by writing files), not an
    observation: Dagster reads the current data version of an asset that has no observe function from its
    latest materialization only, so only that makes raw_annotations stale.
    """
    batches = [
        {"file": name, "sha256": entry["sha256"], "rows": entry["rows"], "bytes": entry["size"]}
        for name, entry in sorted(look.state.items())
    ]
    return dg.AssetMaterialization(
        asset_key=key,
        tags={DATA_VERSION_TAG: look.version},
        metadata={
            "directory": dg.MetadataValue.path(directory),
            "batches": records_table(batches, ["file", "sha256", "rows", "bytes"]),
            "batch_count": len(batches),
            "rows": sum(entry["rows"] or 0 for entry in look.state.values()),
            "added": dg.MetadataValue.json(look.added),
            "changed": dg.MetadataValue.json(look.changed),
            "removed": dg.MetadataValue.json(look.removed),
            "skipped": records_table(look.skipped, SKIPPED_COLUMNS),
        },
    )


def build_review_folder_sensor(settings: FolderWatchSettings) -> dg.SensorDefinition:
    """New, changed or removed review files are a new version of review_folder: the data stages run again."""

    @dg.sensor(**folder_sensor_options(review_folder, settings))
    def review_folder_sensor(context: dg.SensorEvaluationContext, review_source: ReviewSource):
        return folder_tick(context, review_folder, review_source.directory, settings)

    return review_folder_sensor


def recorded_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    """The data version of the folder's latest reported version in the instance."""
    latest = instance.get_latest_materialization_event(key)
    return (latest.tags or {}).get(DATA_VERSION_TAG) if latest is not None else None


def record_folder_versions(instance: dg.DagsterInstance, annotations_dir: str, reviews_dir: str) -> list[str]:
    """What the sensors would report, for a run started without them (`rm-pipeline run`): each folder's version,
    unless the instance has it already, so lineage reaches the folders whichever way a model was trained. Returns
    the folders reported."""
    reported = []
    for folder, directory in ((annotation_folder, annotations_dir), (review_folder, reviews_dir)):
        if not Path(directory).is_dir():
            continue  # the stage reading it says what is wrong
        look = fingerprint_folder(directory, None, settle_seconds=0)  # the run reads every file now
        if recorded_version(instance, folder.key) != look.version:
            instance.report_runless_asset_event(folder_version(directory, look, folder.key))
            reported.append(folder.key.to_user_string())
    return reported
