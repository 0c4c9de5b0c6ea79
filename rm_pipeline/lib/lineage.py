"""Lineage of a reward model: the chain of stages that made it, and whether its batch files are still what it
was trained on. Knows nothing of Dagster: the facts come in as plain dicts (see `rm_pipeline.lineage_reader`).

A stage's facts: ``{"asset", "run_id", "time" (ISO, UTC), "data_version", "code_version", "counts": {...}}``.
The lineage facts: ``{"model_path", "stages": [stage facts], "batches": [{"file", "sha256", "bytes", "votes"}],
"review_files": [{"file", "sha256", ...}]}``. Stored beside each model as ``lineage.json`` (what training saw);
rebuilt from the Dagster instance by ``rm-pipeline lineage``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from rm_pipeline.lib.fingerprints import digest_batch_file

# The chain, from the model (and its evaluation) down to the batch files.
CHAIN = (
    "reward_model",
    "evaluation_report",
    "reward_readiness",
    "preference_split",
    "preference_pairs",
    "aggregated_preferences",
    "raw_annotations",
    "annotation_folder",
)
PARENT = {  # each stage with the one it was computed from
    "reward_model": "preference_split",
    "preference_split": "preference_pairs",
    "preference_pairs": "aggregated_preferences",
    "aggregated_preferences": "raw_annotations",
    "raw_annotations": "annotation_folder",
}
# Reported by the folder sensor only while the Dagster daemon runs: a chain without it is still whole.
OPTIONAL = {"annotation_folder"}
UNCHANGED, CHANGED, MISSING = "unchanged", "CHANGED ON DISK", "MISSING"


def file_sha256(path: Path | str) -> str | None:
    """The file's sha256 now; None when it is gone or can't be read."""
    try:
        return digest_batch_file(path)[0]
    except OSError:
        return None


def check_files(files: list[Mapping], sha256_now: Callable[[str], str | None] = file_sha256) -> list[dict]:
    """Each recorded file with its `sha256_now` and `status`: unchanged, CHANGED ON DISK or MISSING."""
    checked = []
    for entry in files:
        now = sha256_now(entry["file"])
        status = MISSING if now is None else UNCHANGED if now == entry["sha256"] else CHANGED
        checked.append({**entry, "sha256_now": now, "status": status})
    return checked


def lineage_report(
    facts: Mapping, card: Mapping | None = None, sha256_now: Callable[[str], str | None] = file_sha256
) -> dict:
    """The chain in CHAIN order, the batch and review files checked against the disk, and the findings: files
    changed or missing, stages with no record, and a model card that disagrees with the records."""
    by_asset = {stage["asset"]: stage for stage in facts.get("stages", [])}
    batches = check_files(facts.get("batches", []), sha256_now)
    reviews = check_files(facts.get("review_files", []), sha256_now)
    findings = [
        f"batch {entry['file']} is {entry['status']}: trained on sha256 {entry['sha256']}"
        + (f", now {entry['sha256_now']}" if entry["sha256_now"] else "")
        for entry in batches
        if entry["status"] != UNCHANGED
    ]
    findings += [
        f"review file {entry['file']} is {entry['status']}: trained with sha256 {entry['sha256']}"
        for entry in reviews
        if entry["status"] != UNCHANGED
    ]
    findings += [f"no record of {asset}" for asset in CHAIN if asset not in by_asset and asset not in OPTIONAL]
    if card is not None:
        findings += _card_disagreements(by_asset, card)
    return {
        "model_path": facts.get("model_path"),
        "chain": [by_asset[asset] for asset in CHAIN if asset in by_asset],
        "batches": batches,
        "review_files": reviews,
        "findings": findings,
    }


def _card_disagreements(by_asset: Mapping, card: Mapping) -> list[str]:
    """The model card's facts (written at training time) against the instance's records."""
    found = []
    stages = card.get("stages")
    for stage in stages if isinstance(stages, list) else []:
        if not isinstance(stage, dict) or not isinstance(stage.get("asset"), str):
            continue  # a hand-edited card: only its well-formed stages are compared
        recorded = by_asset.get(stage["asset"])
        if recorded is not None and recorded.get("data_version") != stage.get("data_version"):
            found.append(
                f"the model card says {stage['asset']} had data version {stage.get('data_version')}, the instance "
                f"records {recorded.get('data_version')}"
            )
    return found


def render(report: Mapping) -> str:
    """The chain as text: one block per stage, then the batch and review files with their status."""
    lines = [f"lineage of {report['model_path']}", ""]
    for stage in report["chain"]:
        lines.append(f"{stage['asset']}")
        run = f"run {stage['run_id']}" if stage.get("run_id") else "reported outside a run (folder sensor)"
        lines.append(f"  {run} at {stage.get('time')}")
        code = f", code version {stage['code_version']}" if stage.get("code_version") else ""
        lines.append(f"  data version {stage.get('data_version')}{code}")
        counts = ", ".join(f"{name}={value}" for name, value in (stage.get("counts") or {}).items())
        if counts:
            lines.append(f"  {counts}")
    for title, files in (("batch files", report["batches"]), ("review files", report["review_files"])):
        lines += ["", f"{title} ({len(files)}):"]
        for entry in files:
            marker = "" if entry["status"] == UNCHANGED else f"  <- {entry['status']}"
            votes = f" {entry['votes']} votes" if entry.get("votes") is not None else ""
            lines.append(f"  {entry['file']} sha256 {entry['sha256']}{votes}{marker}")
    lines += ["", "findings:" if report["findings"] else "findings: none"]
    lines += [f"  - {finding}" for finding in report["findings"]]
    return "\n".join(lines)
