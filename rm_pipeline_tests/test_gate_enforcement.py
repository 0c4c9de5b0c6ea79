"""Gates cannot be sidestepped, and runs on one storage root never mix: on a real Dagster instance."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from rm_pipeline.definitions import build_defs
from rm_pipeline.lib.storage_lock import LOCK_FILE, hold_storage
from rm_pipeline.resources import PipelineStorage

UP_TO_SPLIT = [
    "raw_annotations",
    "annotation_quarantine",
    "aggregated_preferences",
    "review_queue",
    "preference_pairs",
    "rejected_pairs",
    "preference_split",
]
DOWNSTREAM = ["aggregated_preferences", "review_queue", "preference_pairs", "rejected_pairs", "preference_split"]
VOTE = {"item_id": "x1", "prompt": "p", "response_a": "r1", "response_b": "r2", "annotator_id": "v", "vote": "a"}
GARBAGE = [json.dumps(VOTE)] * 2 + ["{not json"] * 8  # 80% unreadable: over the 20% raw_annotations_valid allows


def materialize(storage_root, annotations, instance, selection):
    defs = build_defs(str(storage_root), str(annotations))
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
    )


def published(storage_root) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((storage_root / "tables").glob("*.parquet"))
    }


def failure_messages(result) -> str:
    """Every step failure's error with its causes, as a user reads them."""
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                texts.append(f"{event.step_key}: {error.cls_name}: {error.message}")
                error = error.cause
    return "\n".join(texts)


@pytest.fixture
def bad_annotations(small_annotations, tmp_path):
    folder = tmp_path / "bad_annotations"
    shutil.copytree(small_annotations, folder)
    (folder / "vendor_batch_7.jsonl").write_text("\n".join(GARBAGE) + "\n")
    return folder


def test_a_failed_gate_cannot_be_sidestepped_by_running_only_downstream_stages(
    small_annotations, bad_annotations, storage_root
):
    with dg.instance_for_test() as instance:
        good = materialize(storage_root, small_annotations, instance, UP_TO_SPLIT)
        assert good.success
        before = published(storage_root)
        assert set(before) == {f"{name}.parquet" for name in UP_TO_SPLIT}
        assert not list((storage_root / "tables" / ".pending").glob("*.parquet"))  # all passed: all published

        bad = materialize(storage_root, bad_annotations, instance, UP_TO_SPLIT)
        assert not bad.success
        gates = {e.check_name: e.passed for e in bad.get_asset_check_evaluations()}
        assert gates == {"raw_annotations_valid": False}
        kept = storage_root / "tables" / "failed" / f"raw_annotations-{bad.run_id}.parquet"
        assert kept.exists()  # the failing table, for inspection
        changed = {name for name, digest in published(storage_root).items() if before[name] != digest}
        assert changed == {"annotation_quarantine.parquet"}  # no gate: it shows what went wrong

        sidestep = materialize(storage_root, small_annotations, instance, DOWNSTREAM)
        assert not sidestep.success
        assert not sidestep.get_asset_materialization_events()
        message = failure_messages(sidestep)
        assert "GateNotPassedError" in message
        assert "raw_annotations_valid" in message and bad.run_id in message and str(kept) in message
        assert "materialise raw_annotations again" in message
        assert published(storage_root) == {
            **before,
            "annotation_quarantine.parquet": published(storage_root)["annotation_quarantine.parquet"],
        }

        again = materialize(storage_root, small_annotations, instance, UP_TO_SPLIT)
        assert again.success
        assert materialize(storage_root, small_annotations, instance, DOWNSTREAM).success
    assert published(storage_root) == before  # the same good batch: the same tables, published again


def test_a_gated_table_waits_for_its_gate_and_its_ungated_sibling_does_not(small_annotations, storage_root):
    """A run that stops before a gate is evaluated leaves the table pending; nothing downstream reads it."""
    with dg.instance_for_test() as instance:
        # the assets without their checks: nothing evaluates raw_annotations_valid
        result = materialize(
            storage_root,
            small_annotations,
            instance,
            dg.AssetSelection.assets("raw_annotations", "annotation_quarantine").without_checks(),
        )
        assert result.success
        tables = storage_root / "tables"
        assert (tables / "annotation_quarantine.parquet").exists()
        assert not (tables / "raw_annotations.parquet").exists()
        assert (tables / ".pending" / f"raw_annotations-{result.run_id}.parquet").exists()

        downstream = materialize(storage_root, small_annotations, instance, ["aggregated_preferences"])
        assert not downstream.success
        message = failure_messages(downstream)
        assert "has not been through its gate raw_annotations_valid" in message and result.run_id in message


# ---------------------------------------------------------------- one run at a time per storage root


def start(*args, home, env=None) -> subprocess.Popen:
    """`rm-pipeline run` on a storage root of its own Dagster instance, as a user starts it."""
    environment = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "RM_PIPELINE_HOME")}
    return subprocess.Popen(
        [sys.executable, "-m", "rm_pipeline.cli", "run", "--home", str(home), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**environment, **(env or {})},
    )


def holder_run_id(home, process, timeout=120) -> str:
    """The run id the lock file names once the process holds the root."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        text = (home / LOCK_FILE).read_text() if (home / LOCK_FILE).exists() else ""
        if '"run_id"' in text:
            return json.loads(text)["run_id"]
        time.sleep(0.2)
    raise AssertionError("the run never took the storage root")


def test_a_run_on_a_held_storage_root_fails_at_once_naming_the_holder(small_annotations, tmp_path):
    home = tmp_path / "home"
    with hold_storage(home, run_id="the-first-run"):
        done = start("--annotations", str(small_annotations), home=home)
        stdout, stderr = done.communicate(timeout=300)
        assert done.returncode == 1
        assert f"storage root {home} is in use by run the-first-run (pid {os.getpid()}) since" in stderr
        assert "use another storage root (--home, $RM_PIPELINE_HOME)" in stderr and "Traceback" not in stderr
        assert not (home / "tables").exists()

        # the path of the UI and of automation: a run launched by Dagster fails in its storage resource
        env = {
            **os.environ,
            "RM_PIPELINE_HOME": str(home),
            "RM_PIPELINE_ANNOTATIONS": str(small_annotations),
            "DAGSTER_HOME": str(tmp_path),
        }
        (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                "rm_pipeline.definitions",
                "--select",
                "raw_annotations,annotation_quarantine",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode != 0
        assert f"storage root {home} is in use by run the-first-run" in done.stderr
        assert not (home / "tables").exists()
    assert json.loads((home / LOCK_FILE).read_text()) == {}  # released cleanly: nothing left behind


@pytest.mark.trains
def test_two_concurrent_runs_on_one_storage_root_never_mix(small_annotations, tmp_path, tiny_encoder):
    home = tmp_path / "home"
    first = start("--annotations", str(small_annotations), "--base-model", tiny_encoder, home=home)
    try:
        first_run = holder_run_id(home, first)
        second = start("--annotations", str(small_annotations), "--base-model", tiny_encoder, home=home)
        _, stderr = second.communicate(timeout=300)
        assert second.returncode == 1
        assert f"storage root {home} is in use by run {first_run} (pid {first.pid}) since" in stderr
        stdout, stderr = first.communicate(timeout=900)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert f"run {first_run} (succeeded)" in stdout


@pytest.mark.trains
def test_the_next_run_reports_a_killed_run_failed(small_annotations, bad_annotations, tmp_path, tiny_encoder):
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))  # its storage created before the run opens it
    killed = start("--annotations", str(small_annotations), "--base-model", tiny_encoder, home=home)
    try:
        killed_run = holder_run_id(home, killed)
        deadline = time.time() + 120
        while (run := instance.get_run_by_id(killed_run)) is None or run.status != dg.DagsterRunStatus.STARTED:
            assert time.time() < deadline, "the run never started"
            time.sleep(0.2)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.STARTED  # the ghost

    # the next run (a batch that fails its gate: quick) takes the root, reports the ghost, and goes on
    done = start("--annotations", str(bad_annotations), home=home)
    stdout, stderr = done.communicate(timeout=600)
    assert done.returncode == 2, stderr[-3000:]
    assert f"run {killed_run} was still marked STARTED, but its process is gone: reported it failed" in stdout
    assert "raw_annotations_valid stopped the run" in stderr
    assert instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.FAILURE
    failure = [e for e in instance.all_logs(killed_run) if e.dagster_event and e.dagster_event.is_run_failure]
    assert f"(pid {killed.pid}) ended without finishing it (killed or crashed)" in failure[-1].message


def test_a_resumed_run_takes_back_its_own_storage_root(tmp_path):
    """Run monitoring resumes a run whose container or pod died (docker/dagster.yaml): the resumed run finds
    its own id in the lock its dead process left, and must go on, not report itself failed."""
    home = tmp_path / "home"
    home.mkdir()
    run_id = "0b0e4a52-5a4e-4d8e-9a57-3c0f0e1d2a11"
    (home / LOCK_FILE).write_text(json.dumps({"run_id": run_id, "pid": 999999, "since": "before the crash"}))

    @dg.asset
    def uses_storage(storage: PipelineStorage) -> None:
        storage.directory("models")

    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        defs = dg.Definitions(
            assets=[uses_storage],
            jobs=[dg.define_asset_job("resumed", [uses_storage])],
            resources={"storage": PipelineStorage(root=str(home))},
        )
        result = defs.resolve_job_def("resumed").execute_in_process(instance=instance, run_id=run_id)
        assert result.success
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        assert not [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.is_run_failure]
