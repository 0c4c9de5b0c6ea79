"""What a stage hands Dagster: table outputs with their data version and row count, and the metadata people read
in the UI (counts, tables of reasons, histograms, previews)."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd

from rm_pipeline.lib.asset_values import SCORED_BY, SCORED_IN, EvaluationReport, PublishedModel
from rm_pipeline.lib.batch_folder import NOTE_FOR_PEOPLE
from rm_pipeline.lib.fingerprints import table_fingerprint
from rm_pipeline.lib.markdown import markdown_table

OWNERS = ["team:rm-pipeline"]
ROW_COUNT = "dagster/row_count"  # the row count Dagster shows for a table asset
DATA_VERSION_TAG = "dagster/data_version"  # the tag an event carries its data version under (no public name)
# The asset groups, in the order data flows through them: the UI draws each as a box.
ANNOTATIONS_GROUP = "annotations"
AGGREGATION_GROUP = "aggregation"
PAIRS_GROUP = "pairs"
SPLIT_GROUP = "split"
TRAINING_GROUP = "training"
EVALUATION_GROUP = "evaluation"  # the stages that judge a trained model
ASSET_GROUPS = (ANNOTATIONS_GROUP, AGGREGATION_GROUP, PAIRS_GROUP, SPLIT_GROUP, TRAINING_GROUP, EVALUATION_GROUP)
PREVIEW_ROWS = 10
PREVIEW_CHARS = 80
GATE_DESCRIPTION_CHARS = 1000  # a failed gate's description; every failure is in its `failures` metadata


def counts_table(counts: dict, key: str = "reason") -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({key: str(name), "count": int(n)}) for name, n in counts.items()],
        schema=dg.TableSchema(columns=[dg.TableColumn(key, "string"), dg.TableColumn("count", "int")]),
    )


def records_table(rows: list[dict], columns: list[str]) -> dg.MetadataValue:
    """Rows as a table the UI renders and readers (e.g. `rm-pipeline lineage`) get back field by field."""
    plain = [{column: _plain(row.get(column)) for column in columns} for row in rows]
    types = {column: _column_type([row[column] for row in plain]) for column in columns}
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in plain],
        schema=dg.TableSchema(columns=[dg.TableColumn(column, types[column]) for column in columns]),
    )


def _plain(value):
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and np.isnan(value) else value


def _column_type(values: list) -> str:
    present = {type(value) for value in values if value is not None}
    return {frozenset({int}): "int", frozenset({bool}): "bool", frozenset({float}): "float"}.get(
        frozenset(present), "float" if present == {int, float} else "string"
    )


def histogram(values: pd.Series, bins=(0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.999, 1.0)) -> dg.MetadataValue:
    """A text histogram: renders in the UI without an image store."""
    counts, edges = np.histogram(values.dropna(), bins=bins)
    widest = max(counts.max(), 1) if len(counts) else 1
    rows = [
        {"range": f"{lo:.2f}–{hi:.2f}", "count": int(n), "": "█" * int(round(30 * n / widest))}
        for lo, hi, n in zip(edges[:-1], edges[1:], counts)
    ]
    return dg.MetadataValue.md(markdown_table(rows))


def preview(table: pd.DataFrame, columns: list[str]) -> dg.MetadataValue:
    head = table[columns].head(PREVIEW_ROWS).copy()
    for column in head.columns:
        if head[column].dtype == object or pd.api.types.is_string_dtype(head[column].dtype):
            head[column] = head[column].astype(str).str.slice(0, PREVIEW_CHARS).str.replace("\n", " ")
    return dg.MetadataValue.md(markdown_table(head.to_dict("records"), columns))


def log_skipped(log, skipped: list[dict]) -> None:
    """A folder's entries that are not read, one INFO line each; a README beside the batches is routine, so
    notes for people go to DEBUG. The metadata lists them all with their reasons."""
    for row in skipped:
        say = log.debug if row["reason"] == NOTE_FOR_PEOPLE else log.info
        say(f"{row['file']}: skipped: {row['reason']} ({row['detail']})")


def table_output(
    table: pd.DataFrame, metadata: dict, output_name: str = "result", data_version: str | None = None
) -> dg.Output[pd.DataFrame]:
    """A table asset's output: its data version (the content hash unless given) and row count beside `metadata`."""
    return dg.Output(
        table,
        output_name,
        data_version=dg.DataVersion(data_version or table_fingerprint(table)),
        metadata={ROW_COUNT: len(table), **metadata},
    )


def gate_result(gate) -> dg.AssetCheckResult:
    """A blocking check's outcome: a failed gate stops everything downstream. What failed, in words, is the
    check's description (what the UI shows first) and its `failures`."""
    failures = {"failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in gate.failures))} if gate.failures else {}
    return dg.AssetCheckResult(
        passed=gate.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(gate.failures)[:GATE_DESCRIPTION_CHARS] or None,
        metadata={"expectations": gate.expectations, "failed": len(gate.failures), **failures},
    )


def report_of(reward_model: PublishedModel, evaluation_report: EvaluationReport) -> dict:
    """The report's document, after making sure it is the report of `reward_model`."""
    if evaluation_report.model_path != reward_model.path:
        raise dg.Failure(
            f"the evaluation report is of {evaluation_report.model_path}, not of {reward_model.path}: "
            "materialise evaluation_report again"
        )
    return evaluation_report.document()


def scored_in(reward_model: PublishedModel, scores: pd.DataFrame) -> str:
    """The precision `scores` were scored in, after making sure `reward_model` scored them: a report never pairs
    one model with another's scores."""
    scorers = set(scores[SCORED_BY].unique()) if SCORED_BY in scores else set()
    if scorers - {reward_model.name}:
        raise dg.Failure(
            f"reward_scores were scored by {', '.join(sorted(scorers))}, not by {reward_model.name}, the model to "
            "evaluate: materialise reward_scores again"
        )
    return str(scores[SCORED_IN].iloc[0]) if len(scores) else "fp32"
