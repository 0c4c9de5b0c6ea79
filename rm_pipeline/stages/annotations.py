"""Stage 1: every annotation batch read into `raw_annotations`; what can't be read is quarantined."""

import dagster as dg

from rm_pipeline.lib import gates
from rm_pipeline.lib.annotations import list_batch_files, read_annotations
from rm_pipeline.resources import AnnotationSource, QualityGates
from rm_pipeline.stages.metadata import OWNERS, counts_table, gate_result, preview, table_fingerprint

GROUP = "annotations"


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
            "batches": dg.MetadataValue.md(result.batches.to_markdown(index=False)),
            "orientation_flipped": int(votes["orientation_flipped"].sum()),
            "annotators": int(votes["annotator_id"].nunique()),
            "preview": preview(votes, ["item_id", "annotator_id", "vote", "strength", "domain", "batch"]),
        },
    )
    yield dg.Output(
        quarantine,
        "annotation_quarantine",
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
