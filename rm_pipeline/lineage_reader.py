"""A reward model's lineage read from the Dagster instance: its materialisation, followed through the input event
pointers Dagster records on every materialisation (provenance) down to the split, the pairs, the aggregation, the
raw annotations and the annotation folder; and the evaluations of that model. The facts are plain dicts for
`rm_pipeline.lib.lineage`."""

from __future__ import annotations

import datetime
from pathlib import Path

import dagster as dg

from rm_pipeline.asset_outputs import DATA_VERSION_TAG, ROW_COUNT
from rm_pipeline.lib.asset_values import MODEL_PATH, READY
from rm_pipeline.lib.lineage import PARENT

# What each stage's block shows besides its versions: metadata entries, as named there.
COUNTS = {
    "reward_readiness": (READY,),
    "evaluation_report": ("held_out_pairs", "held_out_accuracy", "length_matched_accuracy", "ece"),
    "reward_model": ("train_pairs", "eval_pairs", "steps", "eval_accuracy"),
    "preference_split": ("dagster/row_count", "train_pairs", "eval_pairs", "prompt_groups"),
    "preference_pairs": ("dagster/row_count", "comparisons_in"),
    "aggregated_preferences": ("dagster/row_count", "multi_vote_comparisons", "review_rows"),
    "raw_annotations": ("rows_read", "dagster/row_count", "quarantined", "annotators"),
    "annotation_folder": ("batch_count", "rows"),
}
SEARCHED = 1000  # materialisations of an asset searched for one of a given model


class LineageNotFoundError(Exception):
    """The model, or the records that made it, are not in the instance."""


def stage_facts(record: dg.EventLogRecord) -> dict:
    """One stage's block: run, time, versions and its key counts."""
    asset = record.asset_key.to_user_string()
    tags = record.event_log_entry.tags or {}
    provenance = dg.DataProvenance.from_tags(tags)
    metadata = record.asset_materialization.metadata
    counts = {
        ("rows" if name == ROW_COUNT else name): metadata[name].value
        for name in COUNTS.get(asset, ())
        if name in metadata
    }
    return {
        "asset": asset,
        "run_id": record.run_id or None,
        "time": datetime.datetime.fromtimestamp(record.timestamp, datetime.UTC).isoformat(timespec="seconds"),
        "data_version": tags.get(DATA_VERSION_TAG),
        "code_version": provenance.code_version if provenance else None,
        "counts": counts,
        "storage_id": record.storage_id,
    }


def upstream_facts(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> dict:
    """The record's stage and every stage it came from (through the input event pointers), the batch files the
    raw annotations were read from, and the review files the aggregation applied."""
    facts = {"stages": [], "batches": [], "review_files": []}
    while record is not None:
        asset = record.asset_key.to_user_string()
        facts["stages"].append(stage_facts(record))
        metadata = record.asset_materialization.metadata
        if asset == "raw_annotations" and "batches" in metadata:
            facts["batches"] = [
                {"file": row["file"], "sha256": row["sha256"], "bytes": row["bytes"], "votes": row["kept"]}
                for row in _rows(metadata["batches"])
            ]
        if asset == "aggregated_preferences" and "review_files" in metadata:
            facts["review_files"] = _rows(metadata["review_files"])
        record = _parent(instance, record, PARENT.get(asset))
    return facts


def training_facts(instance: dg.DagsterInstance, model_key: dg.AssetKey, model_code_version: str | None) -> dict:
    """What the model at `model_key` is trained on: the latest materialisation of its parent (the split) and the
    stages below it, the batch and review files, and the code version of the model and of each stage below it (as
    recorded on the materialisation: the code that made that data)."""
    parent = dg.AssetKey(PARENT[model_key.to_user_string()])
    records = instance.fetch_materializations(parent, limit=1).records
    if not records:
        raise LineageNotFoundError(f"{parent.to_user_string()} has never been materialised")
    facts = upstream_facts(instance, records[0])
    facts["code_versions"] = {
        model_key.to_user_string(): model_code_version,
        **{stage["asset"]: stage["code_version"] for stage in facts["stages"] if stage["code_version"]},
    }
    return facts


def model_lineage(instance: dg.DagsterInstance, model_dir: Path, root: Path | None = None) -> dict:
    """The lineage facts of a model directory: its reward_model materialisation and the chain below it, and the
    latest evaluation_report and reward_readiness of that model. Model paths recorded under another storage root
    (the root was copied or moved since) are read against `root`."""
    model_dir = model_dir.resolve()
    model = _of_model(instance, "reward_model", model_dir, root)
    if model is None:
        raise LineageNotFoundError(f"{model_dir}: no reward_model materialisation in this instance trained it")
    facts = {MODEL_PATH: str(model_dir), **upstream_facts(instance, model)}
    for asset in ("evaluation_report", "reward_readiness"):
        evaluation = _of_model(instance, asset, model_dir, root)
        if evaluation is not None:
            facts["stages"].append(stage_facts(evaluation))
    return facts


def _of_model(instance: dg.DagsterInstance, asset: str, model_dir: Path, root: Path | None) -> dg.EventLogRecord | None:
    """The latest materialisation of `asset` whose `model_path` is the model."""
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=SEARCHED).records
    for record in records:
        path = record.asset_materialization.metadata.get(MODEL_PATH)
        if path is not None and under_root(str(path.value), root) == model_dir:
            return record
    return None


def under_root(recorded: str, root: Path | None) -> Path:
    """A recorded model path read against the storage root now: a model lives at `<root>/models/<name>`, so a
    path recorded as `<old root>/models/<name>` is `<root>/models/<name>` once the root was copied or moved."""
    path = Path(recorded)
    if root is not None and path.parent.name == "models":
        return (root / "models" / path.name).resolve()
    return path.resolve()


def _parent(instance: dg.DagsterInstance, record: dg.EventLogRecord, parent: str | None):
    """The parent's materialisation the record was computed from (None: no parent, or none recorded, e.g. the
    annotation folder before the sensor first reported it)."""
    if parent is None:
        return None
    key = dg.AssetKey(parent)
    provenance = dg.DataProvenance.from_tags(record.event_log_entry.tags or {})
    pointer = provenance.input_storage_ids.get(key) if provenance else None
    if pointer is None:
        return None
    found = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, storage_ids=[pointer]), 1)
    return found.records[0] if found.records else None


def _rows(value) -> list[dict]:
    """A table metadata value's rows as dicts."""
    return [dict(row.data) for row in value.records]
