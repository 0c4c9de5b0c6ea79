"""The `rm-pipeline` console script, run as a user runs it: a subprocess."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from rm_pipeline.cli import EXIT_BROKEN_PIPE
from rm_pipeline_tests.support.cli import TOY, rm_pipeline, rm_pipeline_here


def test_validate_prints_counts_that_add_up(tmp_path):
    batch = tmp_path / "toy.jsonl"
    lines = [json.dumps(row) for row in TOY] + [
        '{"item_id": "e", "vote": ',
        json.dumps({**TOY[0], "item_id": "f", "vote": "maybe"}),
    ]
    batch.write_text("\n".join(lines) + "\n")
    done = rm_pipeline("validate", str(batch), env={"RM_PIPELINE_HOME": str(tmp_path / "untouched")})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rows_read"] == 6 and report["votes"] == 4
    assert report["rows_read"] == report["votes"] + sum(report["quarantined"].values())
    assert report["quarantined"] == {"malformed_json": 1, "bad_vote": 1}
    assert report["comparisons"] == 4
    assert report["pairs_kept"] == 1
    rejected = {reason: n for reason, n in report["pairs_rejected"].items() if n}
    assert rejected == {"tie_or_abstention": 1, "context_mismatch": 1, "identical_candidates": 1}
    assert report["pairs_kept"] + sum(report["pairs_rejected"].values()) == report["comparisons"]
    assert "review_queue" in report
    assert not (tmp_path / "untouched").exists()  # validate never touches stored assets
    # each quarantined row is named, as evaluate names them
    assert f"{batch}:5: malformed_json (" in done.stderr
    assert f"{batch}:6: vote: bad_vote (" in done.stderr


@pytest.mark.parametrize("command", [["validate", "{batch}"], ["models", "--home", "{tmp}"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, command):
    """`rm-pipeline ... | head -1`: the pipe closes before the command writes; no traceback, SIGPIPE's status."""
    batch = tmp_path / "toy.jsonl"
    batch.write_text("\n".join(json.dumps(row) for row in TOY) + "\n")
    arguments = [part.format(batch=batch, tmp=tmp_path) for part in command]
    process = subprocess.Popen(
        [sys.executable, "-m", "rm_pipeline.cli", *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.stdout.close()  # the reader is gone before anything is written
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == EXIT_BROKEN_PIPE, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_validate_names_a_file_that_is_not_a_table(tmp_path):
    bogus = tmp_path / "scan.parquet"
    bogus.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    done = rm_pipeline("validate", str(bogus))
    assert done.returncode == 3
    assert str(bogus) in done.stderr and "Traceback" not in done.stderr


@pytest.mark.trains
def test_run_materialises_the_graph_and_prints_each_stage(annotations_slice, tmp_path, tiny_encoder):
    home, config = tmp_path / "home", tmp_path / "run_config.yaml"
    config.write_text("ops:\n  reward_model:\n    config:\n      seed: 7\n      precision: fp32\n")
    done = rm_pipeline(
        "run", "--home", str(home), "--annotations", str(annotations_slice), "--base-model", tiny_encoder,
        "--config", str(config),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]  # not ready is a result, not a crash
    assert "(succeeded); storage:" in done.stdout
    assert "Traceback" not in done.stderr and "Stack Trace" not in done.stderr
    assert "DagsterAssetCheckFailedError" not in done.stdout + done.stderr
    # quiet: what to expect, each stage, how long it took; every DEBUG event in the log file it names instead
    assert done.stdout.startswith("expected: ") and " minutes on a " in done.stdout.splitlines()[0]
    assert "STEP_INPUT" not in done.stdout + done.stderr and "LOADED_INPUT" not in done.stdout + done.stderr
    assert "MISSING" not in done.stdout + done.stderr  # transformers' load report of the new score head
    assert "{'loss'" not in done.stdout and "FutureWarning" not in done.stderr  # the training worker's noise
    assert "Filter:" not in done.stderr and "shards" not in done.stderr  # progress bars
    assert "BetaWarning" not in done.stderr
    event_log = Path(done.stdout.split("every event of the run: ")[1].split()[0])
    assert event_log.parent == home / "logs" and "STEP_INPUT" in event_log.read_text()
    assert "\nfinished in " in done.stdout
    for stage in (
        "raw_annotations",
        "aggregated_preferences",
        "review_queue",
        "preference_pairs",
        "rejected_pairs",
        "preference_split",
        "reward_model",
        "reward_scores",
        "response_scores",
        "evaluation_report",
        "reward_readiness",
        "current_reward_model",
    ):
        assert f"  {stage}: " in done.stdout
    assert "gate preference_split_grouped: passed" in done.stdout
    assert "gate reward_model_ready: FAILED (WARN)" in done.stdout
    assert (home / "tables" / "preference_split.parquet").exists()
    assert (home / "models" / "current" / "model.safetensors").exists()  # the first model is promoted
    assert "current_reward_model: status=promoted, reason=the first model" in done.stdout
    assert f"model_path={home}/models/rm-" in done.stdout and "base64" not in done.stdout
    assert (home / "dagster" / "dagster.yaml").exists()  # the UI's instance sees this run
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:  # a first visit without the modal
        assert not instance.nux_enabled and not instance.telemetry_enabled
    # the verdict, its reasons, and where the model and the report are
    verdict = done.stdout[done.stdout.index("verdict: NOT READY") :]
    assert "FAIL fresh_policy_accuracy: no human-labelled pairs of fresh policy outputs" in verdict
    model = (home / "models" / "current").resolve()
    assert f"model:     {model}" in verdict
    assert f"report:    {home}/reports/{model.name}/evaluation_report.md" in verdict
    assert f"readiness: {model}/readiness.json" in verdict and (model / "readiness.json").exists()
    settings = json.loads((model / "training_settings.json").read_text())
    assert (settings["seed"], settings["precision"]) == (7, "fp32")  # --config's, not the defaults
    # lineage reaches the annotation folder without a sensor: the run recorded the folder's version itself
    lineage = json.loads(rm_pipeline("lineage", "--home", str(home), "--json").stdout)
    assert [stage["asset"] for stage in lineage["chain"]][-2:] == ["raw_annotations", "annotation_folder"]
    assert lineage["findings"] == []


@pytest.mark.trains
def test_require_ready_turns_a_not_ready_verdict_into_a_distinct_status(
    annotations_slice, tmp_path, tiny_encoder, labelled_eval_dir
):
    done = rm_pipeline(
        "run",
        "--home",
        str(tmp_path / "home"),
        "--annotations",
        str(annotations_slice),
        "--base-model",
        tiny_encoder,
        "--eval-dir",
        str(labelled_eval_dir),
        "--require-ready",
    )
    assert done.returncode == 4, done.stderr[-3000:]
    assert "(succeeded); storage:" in done.stdout and "Stack Trace" not in done.stderr
    assert "verdict: NOT READY" in done.stdout
    assert "FAIL fresh_policy_accuracy: only 5 human-labelled pairs of fresh policy outputs" in done.stdout


def test_run_exits_with_a_distinct_status_when_a_gate_fails(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    rows = [json.dumps({**TOY[0], "item_id": f"i{n}"}) for n in range(3)] + ["{broken"] * 7
    (folder / "bad_batch.jsonl").write_text("\n".join(rows) + "\n")
    done = rm_pipeline("run", "--home", str(tmp_path / "home"), "--annotations", str(folder))
    assert done.returncode == 2
    assert "raw_annotations_valid stopped the run" in done.stderr
    assert "`bad_batch.jsonl`: 7 of 10 rows quarantined (malformed_json: 7), above the 20% limit" in done.stderr
    assert "aggregated_preferences:" not in done.stdout


def test_a_real_failure_reads_as_one_with_one_short_line_per_failed_step(annotations_slice, tmp_path):
    missing = tmp_path / "no_such_model"
    done = rm_pipeline(
        "run", "--home", str(tmp_path / "home"), "--annotations", str(annotations_slice), "--base-model", str(missing)
    )
    assert done.returncode == 1
    assert "(failed); storage:" in done.stdout and "verdict:" not in done.stdout
    [line] = [line for line in done.stderr.splitlines() if line.startswith("step ")]
    assert line.startswith("step pair_validation failed: ") and str(missing) in line
    assert "DagsterExecutionStepExecutionError" not in line  # the cause, not Dagster's wrapper
    assert not line.removeprefix("step pair_validation failed: ").startswith("rm_pipeline.")  # no class path


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_score_and_evaluate_say_on_stderr_when_their_model_is_not_ready(command, tiny_encoder, tmp_path):
    model = tmp_path / "rm-test"
    shutil.copytree(tiny_encoder, model)
    data = tmp_path / "data.jsonl"
    if command == "score":
        data.write_text(json.dumps({"prompt": "2+2?", "candidates": ["4", "5"]}) + "\n")
        argv = [command, "--model", str(model), "--input", str(data)]
    else:
        data.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
        argv = [command, "--model", str(model), "--pairs", str(data)]

    done = rm_pipeline_here(*argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"rm-pipeline: {model} has no readiness verdict (never evaluated)" in done.stderr

    checks = [
        {"check": "split_has_no_prompt_overlap", "passed": True, "reason": "no prompt is on both sides"},
        {"check": "fresh_policy_accuracy", "passed": False, "reason": "only 5 human-labelled pairs"},
        {"check": "calibration_error", "passed": False, "reason": "only 3 held-out pairs"},
    ]
    verdict = {
        "optimize_against_reward": False,
        "checks": checks,
        "reasons": [f"{c['check']}: {c['reason']}" for c in checks if not c["passed"]],
    }
    (model / "readiness.json").write_text(json.dumps(verdict))
    done = rm_pipeline_here(*argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        f"rm-pipeline: {model} is NOT READY for optimisation ({model / 'readiness.json'}): "
        "fresh_policy_accuracy: only 5 human-labelled pairs; calibration_error: only 3 held-out pairs"
    ) in done.stderr
    json.loads(done.stdout.splitlines()[0] if command == "score" else done.stdout)  # stdout stays machine-readable

    (model / "readiness.json").write_text(json.dumps({**verdict, "optimize_against_reward": True, "reasons": []}))
    done = rm_pipeline_here(*argv)
    assert done.returncode == 0 and f"rm-pipeline: {model}" not in done.stderr


@pytest.mark.trains
def test_dagster_asset_materialize_runs_the_whole_graph(annotations_slice, tmp_path, tiny_encoder):
    """The plain Dagster CLI works on the code location too."""
    home = tmp_path / "home"
    env = {
        **os.environ,
        "RM_PIPELINE_HOME": str(home),
        "RM_PIPELINE_ANNOTATIONS": str(annotations_slice),
        "RM_PIPELINE_BASE_MODEL": tiny_encoder,
        "DAGSTER_HOME": str(tmp_path),
    }
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "rm_pipeline.definitions", "--select", "*"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    # With the bundled evaluation folder the model is not ready: a verdict, the run succeeds.
    assert done.returncode == 0, done.stderr[-3000:]
    assert (home / "tables" / "preference_split.parquet").exists()
    assert (home / "models" / "current" / "model.safetensors").exists()
    verdict = json.loads((home / "models" / "current" / "readiness.json").read_text())
    assert verdict["optimize_against_reward"] is False

    # Under the strict setting the same verdict fails the run.
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
            "reward_readiness",
            "--config-json",
            json.dumps({"ops": {"reward_readiness": {"config": {"strict": True}}}}),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode != 0 and "1 blocking asset check failed" in done.stderr
    assert "reward_readiness: reward_model_ready" in done.stderr


@pytest.mark.servers
@pytest.mark.parametrize("started_by", ["a terminal", "a script's background job"])
def test_sigterm_to_ui_stops_dagster_dev_and_everything_it_started(tmp_path, started_by):
    """Also as a script or service starts it (`rm-pipeline ui &` in a non-interactive shell): such a background
    job starts with SIGINT ignored, which dagster dev would inherit and then ignore SIGTERM too."""
    import psutil

    from rm_pipeline.cli import UI_STOP_SECONDS
    from rm_pipeline.cli.ui import lineage_url
    from rm_pipeline_tests.support.dagster_dev import assert_port_free, free_port, wait_for

    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("DAGSTER_HOME", "RM_PIPELINE_HOME")}
    command = [sys.executable, "-m", "rm_pipeline.cli", "ui", "--home", str(tmp_path / "home"), "--port", str(port)]
    log = open(tmp_path / "ui.log", "w")
    if started_by == "a terminal":
        ui = psutil.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    else:  # the shell prints the job's pid and exits, leaving it running
        shell = subprocess.run(
            ["sh", "-c", '"$@" >"$LOG" 2>&1 </dev/null & echo $!', "sh", *command],
            env={**env, "LOG": str(tmp_path / "ui.log")},
            capture_output=True,
            text=True,
            timeout=30,
            start_new_session=True,
        )
        ui = psutil.Process(int(shell.stdout))
        assert ui.cmdline()[-6:] == command[-6:]
    started = []
    try:
        wait_for(f"http://127.0.0.1:{port}/server_info", 180)
        started = ui.children(recursive=True)
        assert len(started) >= 3  # dagster dev, its webserver and daemon (and code servers)
        assert lineage_url(port) in (tmp_path / "ui.log").read_text()  # the graph's link, every group open
        asked = time.monotonic()
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(timeout=UI_STOP_SECONDS + 30)  # None: not our child, its status is the shell's to read
        assert time.monotonic() - asked < UI_STOP_SECONDS / 2  # stopped by dagster dev, not by the kill fallback
        assert code in (0, None) if started_by != "a terminal" else code == 0
        _, alive = psutil.wait_procs(started, timeout=10)
        assert not alive, [process.cmdline() for process in alive]
        assert_port_free(port)
    finally:  # whatever the outcome, leave nothing running
        for process in [ui, *started]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()


def test_a_run_takes_the_storage_root_through_one_function(tmp_path):
    """Only the storage resource holds the root, through `hold_for_run`: a holder that died is handed over once
    to be reported failed, never a run's own id (a resumed run), never inside a holder."""
    from rm_pipeline.lib.storage_lock import LOCK_FILE, hold_for_run

    seen = []

    def fail_abandoned(previous):
        seen.append(previous["run_id"])
        return f"failed {previous['run_id']}"

    with hold_for_run(tmp_path, "first", fail_abandoned) as abandoned:
        assert abandoned is None
    (tmp_path / LOCK_FILE).write_text(json.dumps({"run_id": "dead", "pid": 999999}))
    with hold_for_run(tmp_path, "dead", fail_abandoned) as abandoned:  # resumed: its own id
        assert abandoned is None
    (tmp_path / LOCK_FILE).write_text(json.dumps({"run_id": "dead", "pid": 999999}))
    with hold_for_run(tmp_path, "next", fail_abandoned) as abandoned:
        assert abandoned == "failed dead"
        with hold_for_run(tmp_path, "next", fail_abandoned) as inner:  # re-entered within one process
            assert inner is None
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "next"
    assert seen == ["dead"]


def test_run_only_looks_at_the_storage_root_before_its_run_takes_it(tmp_path):
    """`rm-pipeline run` peeks: a root held by another process is refused in one line before any run exists; a
    free root, or one whose holder died, is taken by the run's storage resource, not by the command."""
    from rm_pipeline.lib.storage_lock import LOCK_FILE, hold_storage, peek

    assert peek(tmp_path / "new") == (False, {})
    with hold_storage(tmp_path, run_id="live"):
        held, holder = peek(tmp_path)
        assert held and holder["run_id"] == "live"
    (tmp_path / LOCK_FILE).write_text(json.dumps({"run_id": "dead", "pid": 999999}))
    assert peek(tmp_path) == (False, {"run_id": "dead", "pid": 999999})  # named, not held
    with hold_storage(tmp_path, run_id="next") as previous:  # peeking left the root free to take
        assert previous["run_id"] == "dead"
