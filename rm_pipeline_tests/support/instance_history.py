"""`python -m rm_pipeline_tests.support.instance_history`: what a fresh process reads back from the Dagster instance
($DAGSTER_HOME): every run with its status, the latest materialisation of every asset of the code location,
the latest result of every asset check, and each sensor's cursor; one JSON object on stdout."""

import json

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorType


def history(instance: dg.DagsterInstance, defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    materialisations = {}
    for key in sorted(graph.materializable_asset_keys):
        event = instance.get_latest_materialization_event(key)
        if event is not None:
            metadata = event.asset_materialization.metadata
            materialisations[key.to_user_string()] = {
                "run_id": event.run_id,
                "data_version": metadata["data_version"].value if "data_version" in metadata else None,
            }
    checks = {}
    for key in sorted(graph.asset_check_keys, key=lambda k: k.name):
        [record] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1) or [None]
        if record is not None:
            evaluation = record.event.dagster_event.event_specific_data if record.event else None
            checks[key.name] = {
                "run_id": record.run_id,
                "status": record.status.value,
                "passed": evaluation.passed if evaluation is not None else None,
            }
    return {
        "runs": [
            {"run_id": run.run_id, "job_name": run.job_name, "status": run.status.value} for run in instance.get_runs()
        ],
        "materialisations": materialisations,
        "checks": checks,
        "sensor_cursors": {
            state.name: state.instigator_data.cursor
            for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
            if state.instigator_data is not None
        },
    }


if __name__ == "__main__":
    from rm_pipeline.definitions import defs

    with dg.DagsterInstance.get() as instance:
        print(json.dumps(history(instance, defs)))
