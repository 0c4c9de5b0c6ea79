"""Stage 1: every annotation batch read into `raw_annotations`; what can't be read is quarantined.

The folder itself is the external asset `annotation_folder`, watched by `annotation_folder_sensor`: its
data version is a fingerprint of the batch files, so a new, changed or removed batch makes
`raw_annotations` stale.
"""

import json

import dagster as dg

from rm_pipeline.lib import gates
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.automation import FolderWatchSettings
from rm_pipeline.lib.fingerprints import FolderFingerprint, fingerprint_folder, table_fingerprint
from rm_pipeline.lib.table_files import list_batch_files
from rm_pipeline.resources import AnnotationSource, QualityGates
from rm_pipeline.stages.metadata import OWNERS, counts_table, gate_result, preview, records_table

GROUP = "annotations"
DATA_VERSION_TAG = "dagster/data_version"  # how a reported event carries its data version (no argument for it)
# raw_annotations' batches table: one row per batch file (its long list of `columns` left out)
BATCH_COLUMNS = ["batch", "file", "format", "sha256", "bytes", "rows_read", "kept", "quarantined"]

annotation_folder = dg.AssetSpec(
    "annotation_folder",
    group_name=GROUP,
    description="The folder vendors drop annotation batch files into (the annotation_source resource). Watched "
    "by annotation_folder_sensor: its data version is a fingerprint of every batch file's name, size and sha256, "
    "so a new, changed or removed batch makes raw_annotations stale.",
    kinds={"file"},
    owners=OWNERS,
)


@dg.multi_asset(
    outs={
        "raw_annotations": dg.AssetOut(
            description="Every readable vote, one row per (item, annotator), from every batch file; A/B "
            "orientation normalised per item.",
            kinds={"pandas", "parquet"},
            owners=OWNERS,
        ),
        "annotation_quarantine": dg.AssetOut(
            description="Rows that couldn't be read or trusted: file, line, field, reason and the raw row.",
            kinds={"pandas", "parquet"},
            owners=OWNERS,
        ),
    },
    deps=[annotation_folder],
    group_name=GROUP,
    code_version="1",
)
def annotation_batches(context: dg.AssetExecutionContext, annotation_source: AnnotationSource):
    """Read all batch files in the annotation folder."""
    files = list_batch_files(annotation_source.directory)
    if not files:
        raise dg.Failure(f"no annotation batches (.jsonl, .json, .csv, .parquet) in {annotation_source.directory}")
    result = read_annotations(files)
    votes, quarantine = result.votes, result.quarantine
    reasons = quarantine["reason"].value_counts().to_dict()
    context.log.info(
        f"{result.rows_read} rows read from {len(files)} batches: {len(votes)} votes kept, "
        f"{len(quarantine)} quarantined {reasons}"
    )
    yield dg.Output(
        votes,
        "raw_annotations",
        data_version=dg.DataVersion(table_fingerprint(votes)),
        metadata={
            "dagster/row_count": len(votes),
            "rows_read": result.rows_read,
            "quarantined": len(quarantine),
            "batches": records_table(result.batches.to_dict("records"), BATCH_COLUMNS),
            "orientation_flipped": int(votes["orientation_flipped"].sum()),
            "annotators": int(votes["annotator_id"].nunique()),
            "preview": preview(votes, ["item_id", "annotator_id", "vote", "strength", "domain", "batch"]),
        },
    )
    yield dg.Output(
        quarantine,
        "annotation_quarantine",
        data_version=dg.DataVersion(table_fingerprint(quarantine)),
        metadata={
            "dagster/row_count": len(quarantine),
            "reasons": counts_table(reasons),
            "preview": preview(quarantine, ["file", "line", "field", "reason", "detail"]),
        },
    )


@dg.asset_check(
    asset="raw_annotations",
    additional_ins={"annotation_quarantine": dg.AssetIn()},
    blocking=True,
    description="Great Expectations: vote schema and labels, one vote per annotator and item, "
    "no batch with more unreadable rows than allowed.",
)
def raw_annotations_valid(raw_annotations, annotation_quarantine, quality_gates: QualityGates):
    return gate_result(
        gates.raw_annotations_gate(raw_annotations, annotation_quarantine, quality_gates.max_quarantine_fraction)
    )


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
    if look.version != last.get("version"):
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
    """The folder's new data version, every batch in it, and what changed since the last version.

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
        },
    )
