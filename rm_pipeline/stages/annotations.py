"""Stage 1: every annotation batch read into `raw_annotations`; what can't be read is quarantined.

The folder itself is the external asset `annotation_folder`, watched by `annotation_folder_sensor`: its
data version is a fingerprint of the batch files, so a new, changed or removed batch makes
`raw_annotations` stale.
"""

import dagster as dg

from rm_pipeline.asset_outputs import ANNOTATIONS_GROUP as GROUP
from rm_pipeline.asset_outputs import (
    OWNERS,
    counts_table,
    gate_result,
    log_skipped,
    preview,
    records_table,
    table_output,
)
from rm_pipeline.lib import gates
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.batch_folder import SKIPPED_COLUMNS, folder_files
from rm_pipeline.resources import AnnotationSource, QualityGates

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
    listing = folder_files(annotation_source.directory)
    files = listing.ready
    log_skipped(context.log, listing.skipped)
    if not files:
        raise dg.Failure(
            f"no annotation batches (.jsonl, .json, .csv, .parquet) in {annotation_source.directory}"
            + (f" ({len(listing.skipped)} entries skipped: see the log)" if listing.skipped else "")
        )
    result = read_annotations(files)
    votes, quarantine = result.votes, result.quarantine
    reasons = quarantine["reason"].value_counts().to_dict()
    context.log.info(
        f"{result.rows_read} rows read from {len(files)} batches: {len(votes)} votes kept, "
        f"{len(quarantine)} quarantined {reasons}"
    )
    yield table_output(
        votes,
        output_name="raw_annotations",
        metadata={
            "rows_read": result.rows_read,
            "quarantined": len(quarantine),
            "batches": records_table(result.batches.to_dict("records"), BATCH_COLUMNS),
            "skipped": records_table(listing.skipped, SKIPPED_COLUMNS),
            "orientation_flipped": int(votes["orientation_flipped"].sum()),
            "annotators": int(votes["annotator_id"].nunique()),
            "preview": preview(votes, ["item_id", "annotator_id", "vote", "strength", "domain", "batch"]),
        },
    )
    yield table_output(
        quarantine,
        output_name="annotation_quarantine",
        metadata={
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
