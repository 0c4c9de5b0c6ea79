"""Stage 2: votes aggregated per comparison; disputed comparisons routed to people."""

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import AGGREGATION_GROUP as GROUP
from rm_pipeline.asset_outputs import (
    OWNERS,
    counts_table,
    gate_result,
    histogram,
    log_skipped,
    preview,
    records_table,
    table_output,
)
from rm_pipeline.config import config_class
from rm_pipeline.lib import gates
from rm_pipeline.lib.aggregation import AggregationSettings, ReviewThresholds, aggregate_votes, neutralise_formulas
from rm_pipeline.lib.aggregation import review_queue as select_review_queue
from rm_pipeline.lib.batch_folder import SKIPPED_COLUMNS
from rm_pipeline.lib.markdown import markdown_table
from rm_pipeline.lib.reviews import FILE_COLUMNS, apply_reviews, read_reviews, review_files
from rm_pipeline.resources import PipelineStorage, ReviewSource

QUARANTINE_SHOWN = 100  # quarantined review rows listed in the metadata (all are logged)


AggregationConfig = config_class(AggregationSettings, "AggregationConfig")
ReviewConfig = config_class(ReviewThresholds, "ReviewConfig")

review_folder = dg.AssetSpec(
    "review_folder",
    group_name=GROUP,
    description="The folder reviewers drop filled-in review queue exports into (the review_source resource): "
    "their decisions label, or drop, the comparisons they adjudicate.",
    kinds={"file"},
    owners=OWNERS,
)


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, code_version="2", owners=OWNERS, deps=[review_folder])
def aggregated_preferences(
    context: dg.AssetExecutionContext,
    config: AggregationConfig,
    review_source: ReviewSource,
    raw_annotations: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """One row per comparison: winner, vote counts, chosen share, tie share, confidence and the
    mean reliability of its annotators; a reviewer's decision from the review folder replaces the
    aggregated winner (`adjudicated`, `adjudicated_by`, `review_note`; `drop` rejects the pair)."""
    result = aggregate_votes(raw_annotations, **config.model_dump())
    listing = review_files(review_source.directory)
    log_skipped(context.log, listing.skipped)
    reviews = read_reviews(listing.ready, result.comparisons)
    for row in reviews.quarantine.itertuples():
        context.log.warning(f"{row.file}:{row.line}: {row.field}: {row.reason} ({row.detail})")
    comparisons, annotators = apply_reviews(result.comparisons, reviews.decisions), result.annotators
    counts = reviews.counts()
    context.log.info(
        f"{len(raw_annotations)} votes -> {len(comparisons)} comparisons ({config.method}); review rows: "
        f"{counts['rows_read']} read, {counts['applied']} applied, {counts['quarantined']} quarantined, "
        f"{counts['blank']} undecided"
    )
    return table_output(
        comparisons,
        metadata={
            "method": config.method,
            "winners": dg.MetadataValue.json({k: int(v) for k, v in comparisons["winner"].value_counts().items()}),
            "ties_counted": int(comparisons["ties"].sum()),
            "abstentions_counted": int(comparisons["abstentions"].sum()),
            "multi_vote_comparisons": int((comparisons["n_votes"] > 1).sum()),
            "agreement_histogram": histogram(comparisons.loc[comparisons["n_votes"] > 1, "chosen_share"]),
            "annotator_reliability": dg.MetadataValue.md(
                annotators.sort_values("reliability").to_markdown(index=False, floatfmt=".3f")
            ),
            "preview": preview(comparisons, ["item_id", "winner", "n_votes", "chosen_share", "tie_share", "domain"]),
            "review_rows": dg.MetadataValue.json(counts),
            "review_quarantine_reasons": counts_table(reviews.quarantine["reason"].value_counts().to_dict()),
            "review_files": records_table(reviews.files.to_dict("records"), FILE_COLUMNS),
            "review_files_skipped": records_table(listing.skipped, SKIPPED_COLUMNS),
            "review_quarantine": dg.MetadataValue.md(
                markdown_table(
                    reviews.quarantine.head(QUARANTINE_SHOWN).to_dict("records"),
                    ["file", "line", "field", "reason", "detail"],
                )
            ),
            "adjudicated": dg.MetadataValue.json(
                {k: int(v) for k, v in comparisons["review_decision"].value_counts().items()}
            ),
        },
    )


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet", "csv"}, code_version="2", owners=OWNERS)
def review_queue(
    context: dg.AssetExecutionContext,
    config: ReviewConfig,
    storage: PipelineStorage,
    aggregated_preferences: pd.DataFrame,
) -> dg.Output[pd.DataFrame]:
    """Disputed comparisons no reviewer has decided yet, for people to review (also the disagreement
    slice for evaluation; kept out of training by default). Exported as CSV with empty
    `review_decision`, `reviewer_id` and `note` columns; text cells that a spreadsheet would run as a
    formula get a leading single quote (undone when the filled-in file is read back)."""
    queue = select_review_queue(aggregated_preferences, **config.model_dump())
    export = storage.path("review", "review_queue.csv")
    # Reviewers open it in a spreadsheet. CRLF rows (RFC 4180) make the writer quote a text's lone CR too.
    neutralise_formulas(queue).to_csv(export, index=False, lineterminator="\r\n")
    reasons = queue["review_reasons"].str.split(",").explode().value_counts()
    context.log.info(f"{len(queue)} of {len(aggregated_preferences)} comparisons routed to review: {export}")
    return table_output(
        queue,
        metadata={
            "export": dg.MetadataValue.path(str(export)),
            "share_of_comparisons": round(len(queue) / max(len(aggregated_preferences), 1), 4),
            "reasons": dg.MetadataValue.json({k: int(v) for k, v in reasons.items()}),
            "preview": preview(queue, ["item_id", "review_reasons", "votes_a", "votes_b", "ties", "winner"]),
        },
    )


@dg.asset_check(
    asset=aggregated_preferences,
    additional_ins={"raw_annotations": dg.AssetIn()},
    blocking=True,
    description="Great Expectations: counts add up per comparison and to the votes in; shares in [0, 1].",
)
def aggregated_preferences_consistent(aggregated_preferences, raw_annotations):
    return gate_result(gates.aggregated_preferences_gate(aggregated_preferences, raw_annotations))


@dg.asset_check(
    asset=review_queue,
    additional_ins={"aggregated_preferences": dg.AssetIn()},
    blocking=True,
    description="Great Expectations: each queued comparison exists, once, with a reason, undecided.",
)
def review_queue_consistent(review_queue, aggregated_preferences):
    return gate_result(gates.review_queue_gate(review_queue, aggregated_preferences))
