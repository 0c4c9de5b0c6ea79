"""Publishing gated tables, and reporting runs left behind by a process that died.

A table whose asset has blocking checks is written to `tables/.pending/<asset>-<run id>.parquet`. Once every
blocking check of that materialisation has passed it is published as `tables/<asset>.parquet`; a table that
failed one is moved to `tables/failed/<asset>-<run id>.parquet` for inspection. Downstream stages read only
published tables, and only while the asset's latest materialisation has passed its gates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

# An asset's definition metadata: the names of its blocking checks (stamped by `build_defs`), which its table waits for.
BLOCKING_CHECKS = "rm_pipeline/blocking_checks"
GATED_BY = "gated_by"  # materialisation metadata: the blocking checks this materialisation's table waits for


class GateNotPassedError(Exception):
    """An upstream table's latest materialisation failed a gate, or its gate was never evaluated."""


def gate_not_passed(error):
    """The GateNotPassedError in a step failure's chain of causes (Dagster wraps what an IO manager raises)."""
    while error is not None and error.cls_name != GateNotPassedError.__name__:
        error = error.cause
    return error


@dataclass
class Verdict:
    asset: dg.AssetKey
    run_id: str | None  # of the latest materialisation; None: never materialised in this instance
    failed: list[str] = field(default_factory=list)
    not_evaluated: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed and not self.not_evaluated


def blocking_checks_by_asset(definitions) -> dict[dg.AssetKey, list[str]]:
    """Each asset's blocking check names, from its assets and asset checks definitions (all of them, whichever
    checks a run selects)."""
    found: dict[dg.AssetKey, list[str]] = {}
    for definition in definitions:
        for spec in getattr(definition, "check_specs", ()):
            if spec.blocking:
                found.setdefault(spec.asset_key, []).append(spec.name)
    return {key: sorted(names) for key, names in found.items()}


def verdict(instance: dg.DagsterInstance, key: dg.AssetKey) -> Verdict:
    """Whether every blocking check recorded on the asset's latest materialisation passed on it."""
    event = instance.get_latest_materialization_event(key)
    if event is None:
        return Verdict(key, None)
    result = Verdict(key, event.run_id)
    gated_by = event.asset_materialization.metadata.get(GATED_BY)
    for name in gated_by.value if gated_by else []:
        record = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(key, name))
        evaluation = record.event.asset_check_evaluation if record and record.event else None
        target = evaluation.target_materialization_data if evaluation else None
        if target is None or target.run_id != event.run_id:
            result.not_evaluated.append(name)
        elif not evaluation.passed:
            result.failed.append(name)
    return result


def settle(instance: dg.DagsterInstance, storage, key: dg.AssetKey) -> Verdict:
    """Publish the pending table of the latest materialisation if its gates passed, or set it aside if one failed."""
    result = verdict(instance, key)
    pending = storage.pending_table(key, result.run_id) if result.run_id else None
    if pending is not None and pending.exists():
        if result.passed:
            pending.replace(storage.table(*key.path))
        elif result.failed:
            pending.replace(storage.failed_table(key, result.run_id))
    return result


def published_table(instance: dg.DagsterInstance, storage, asset: str | dg.AssetKey) -> Path:
    """The published table of an upstream asset, after making sure its latest materialisation passed every
    blocking gate; raises GateNotPassedError naming the gate and the run otherwise. Stages that read a table
    by path use this, like the IO manager does for inputs."""
    key = dg.AssetKey.from_coercible(asset)
    result = settle(instance, storage, key)
    name = key.to_user_string()
    if result.failed:
        kept = storage.failed_table(key, result.run_id)
        raise GateNotPassedError(
            f"{name} from run {result.run_id} failed its gate {', '.join(result.failed)}: nothing downstream may "
            f"use it. Its table is kept for inspection at {kept}; the check's failures are on run {result.run_id}. "
            f"Fix what they name (e.g. the offending annotation batch) and materialise {name} again "
            f"(rm-pipeline run)."
        )
    if result.not_evaluated:
        raise GateNotPassedError(
            f"{name} from run {result.run_id} has not been through its gate {', '.join(result.not_evaluated)} "
            f"(the run stopped before the check finished, or the check was left out): nothing downstream may use "
            f"it. Materialise {name} again with its checks (rm-pipeline run)."
        )
    path = storage.table(*key.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: materialise {name} first")
    return path


def latest_table(instance: dg.DagsterInstance, storage, key: dg.AssetKey) -> Path:
    """The table of the asset's latest materialisation, gated or not: what its own checks look at."""
    event = instance.get_latest_materialization_event(key)
    if event is not None:
        for path in (storage.pending_table(key, event.run_id), storage.failed_table(key, event.run_id)):
            if path.exists():
                return path
    return storage.table(*key.path)


def settle_run(instance: dg.DagsterInstance, storage, run_id: str) -> list[Verdict]:
    """At the end of a run: publish or set aside every table it left pending (one left pending after this
    has a gate that didn't run; a later read reports it)."""
    suffix = f"-{run_id}.parquet"
    pending = storage.directory("tables", ".pending")
    keys = [
        dg.AssetKey([*path.relative_to(pending).parent.parts, path.name[: -len(suffix)]])
        for path in sorted(pending.rglob(f"*{suffix}"))
    ]
    return [settle(instance, storage, key) for key in keys]


def fail_abandoned_run(instance: dg.DagsterInstance, previous_holder: dict, root) -> dg.DagsterRun | None:
    """The run that died holding the storage root (killed, out of memory) still shows as running: report it
    failed, so the UI shows what happened. Returns it, or None when there was none."""
    run = instance.get_run_by_id(previous_holder["run_id"]) if previous_holder.get("run_id") else None
    if run is None or run.status not in (
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    ):
        return None
    instance.report_run_failed(
        run,
        message=(
            f"The process of this run (pid {previous_holder.get('pid')}) ended without finishing it (killed or "
            f"crashed); marked failed when the next run took the storage root {root}."
        ),
    )
    return run
