"""The Dagster instance on a real PostgreSQL server (dagster-postgres), as a deployment runs it: the pipeline's
history survives a restart, and a run whose process is killed mid-training is marked failed and resumed."""

import json
import os
import re
import subprocess
import sys
import time

import dagster as dg
import pytest

from rm_pipeline_tests.dagster_dev import dagster_daemon
from rm_pipeline_tests.test_automation import AFTER_TRAINING, DATA_STAGES
from rm_pipeline_tests.test_cli import rm_pipeline

pytestmark = pytest.mark.slow  # trains models and starts servers

SENSORS = ("annotation_folder_sensor", "rm_pipeline_automation_sensor")


def postgres_instance(folder, postgres_db: dict, **settings) -> str:
    """A DAGSTER_HOME whose dagster.yaml keeps runs, events and schedules (sensor ticks, cursors) in PostgreSQL."""
    dagster_home = folder / "dagster_home"
    dagster_home.mkdir()
    instance = {"telemetry": {"enabled": False}, "storage": {"postgres": {"postgres_db": postgres_db}}, **settings}
    (dagster_home / "dagster.yaml").write_text(json.dumps(instance, indent=2))  # JSON is YAML
    return str(dagster_home)


def pipeline_env(tmp_path, dagster_home, annotations, base_model, eval_dir) -> dict[str, str]:
    """What every process of the deployment (CLI, daemon, code server, run worker) reads."""
    return {
        "DAGSTER_HOME": dagster_home,
        "RM_PIPELINE_HOME": str(tmp_path / "home"),
        "RM_PIPELINE_ANNOTATIONS": str(annotations),
        "RM_PIPELINE_BASE_MODEL": base_model,
        "RM_PIPELINE_EVAL": str(eval_dir),
        "RM_PIPELINE_SENSOR_INTERVAL": "1",
    }


def wait_until(condition, seconds: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {seconds} s")


def sensor_cursors(instance: dg.DagsterInstance) -> dict[str, str]:
    from dagster._core.scheduler.instigation import InstigatorType

    return {
        state.name: state.instigator_data.cursor
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if state.instigator_data is not None and state.instigator_data.cursor
    }


def test_the_history_survives_a_restart_of_dagster_and_of_postgres(
    postgres_server, annotations_slice, tiny_encoder, labelled_eval_dir, tmp_path
):
    dagster_home = postgres_instance(tmp_path, postgres_server.create_database("history"))
    env = pipeline_env(tmp_path, dagster_home, annotations_slice, tiny_encoder, labelled_eval_dir)
    done = rm_pipeline("run", env=env)  # the whole graph, a small training included
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = re.search(r"^run (\S+) \(succeeded\)", done.stdout, re.MULTILINE)[1]

    # the real sensor daemon ticks the sensors once: their ticks and cursors go to PostgreSQL
    with dg.DagsterInstance.from_config(dagster_home) as instance, dagster_daemon(env, tmp_path / "daemon.log"):
        cursors = wait_until(
            lambda: (found := sensor_cursors(instance)).keys() >= set(SENSORS) and found,
            120,
            f"a cursor for each of {SENSORS} (see {tmp_path / 'daemon.log'})",
        )

    postgres_server.restart()
    # a fresh process, a new DagsterInstance on the restarted server, reads it all back
    read = subprocess.run(
        [sys.executable, "-m", "rm_pipeline_tests.instance_history"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert read.returncode == 0, read.stderr[-3000:]
    history = json.loads(read.stdout)
    assert {"run_id": run_id, "job_name": "reward_pipeline_job", "status": "SUCCESS"} in history["runs"]
    assert {asset for asset, m in history["materialisations"].items() if m["run_id"] == run_id} == (
        DATA_STAGES | {"reward_model"} | AFTER_TRAINING
    )
    assert (
        history["materialisations"]["reward_model"]["data_version"]
        == (history["materialisations"]["preference_split"]["data_version"])
    )
    assert {name: (c["run_id"], c["passed"]) for name, c in history["checks"].items()} == {
        "raw_annotations_valid": (run_id, True),
        "aggregated_preferences_consistent": (run_id, True),
        "review_queue_consistent": (run_id, True),
        "preference_pairs_rules_hold": (run_id, True),
        "preference_split_grouped": (run_id, True),
        "reward_model_ready": (run_id, False),  # the verdict on 5 labelled pairs: not ready (WARN)
    }
    assert {name: history["sensor_cursors"][name] for name in cursors} == cursors

    # the lineage of the model, followed through the event pointers stored in PostgreSQL
    done = rm_pipeline("lineage", "--json", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lineage = json.loads(done.stdout)
    assert lineage["findings"] == []
    assert {stage["asset"]: stage["run_id"] for stage in lineage["chain"] if stage["asset"] != "annotation_folder"} == {
        asset: run_id
        for asset in (
            "reward_model",
            "evaluation_report",
            "reward_readiness",
            "preference_split",
            "preference_pairs",
            "aggregated_preferences",
            "raw_annotations",
        )
    }
    assert len(lineage["batches"]) == len(list(annotations_slice.iterdir()))
