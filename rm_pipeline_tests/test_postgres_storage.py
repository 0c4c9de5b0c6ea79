"""The Dagster instance on a real PostgreSQL server (dagster-postgres), as a deployment runs it: the pipeline's
history survives a restart, and a run whose process is killed mid-training is marked failed and resumed."""

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import psutil
import psycopg2
import pytest

from rm_pipeline.definitions import reward_pipeline_job
from rm_pipeline.lib.lineage import CHAIN
from rm_pipeline_tests.support import postgres_server as postgres_server_module
from rm_pipeline_tests.support.cli import rm_pipeline
from rm_pipeline_tests.support.dagster_dev import REPO_ROOT, code_server, dagster_daemon
from rm_pipeline_tests.support.postgres_server import ROLE
from rm_pipeline_tests.test_automation import AFTER_TRAINING, DATA_STAGES
from rm_pipeline_tests.test_reward_model_stage import CHECKPOINTING

# a checkpoint every 2 steps of 8 pairs; a quarter epoch: 8 steps
TRAINING = {"ops": {"reward_model": {"config": {**CHECKPOINTING["ops"]["reward_model"]["config"], "epochs": 0.25}}}}
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


def test_without_postgresql_the_tests_fail_naming_the_package(monkeypatch):
    monkeypatch.setattr(postgres_server_module, "BINARIES", "/nonexistent/postgresql/*/bin")
    with pytest.raises(pytest.fail.Exception, match=r"install Debian's `postgresql` package \(`\.ci/run` installs it"):
        postgres_server_module.server_binaries()


@pytest.mark.servers
def test_the_server_listens_on_127_0_0_1_only_and_wants_the_password(postgres_server):
    connection = postgres_server.connect()
    with connection, connection.cursor() as cursor:
        cursor.execute("SHOW listen_addresses")
        assert cursor.fetchone() == ("127.0.0.1",)
    connection.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user=ROLE, password="wrong", dbname="postgres")


@pytest.mark.servers
@pytest.mark.trains
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
        [sys.executable, "-m", "rm_pipeline_tests.support.instance_history"],
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
        asset: run_id for asset in CHAIN if asset != "annotation_folder"
    }
    assert len(lineage["batches"]) == len(list(annotations_slice.iterdir()))


def launch(workspace, env: dict[str, str], run_id: str, *selection: str) -> None:
    """`dagster job launch`: the run is created in the instance and queued; the daemon's run queue hands it to
    the run launcher, which has the code server start a run worker for it."""
    dagster_command(
        env,
        ["job", "launch", "-w", str(workspace), "-j", reward_pipeline_job.name]
        + ["--run-id", run_id, "--config-json", json.dumps(TRAINING), *selection],
    )


def dagster_command(env: dict[str, str], arguments: list[str]) -> None:
    """The `dagster` command line against the test's instance; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "dagster", *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def run_worker_of_training(root) -> psutil.Process | None:
    """Once training wrote a checkpoint: the run worker whose training child that is (the code server's
    child, started for the run by the run launcher)."""
    if not list((root / "models" / ".checkpoints").glob("*/checkpoint-*/trainer_state.json")):
        return None
    for process in psutil.Process().children(recursive=True):  # only what this test started
        with contextlib.suppress(psutil.NoSuchProcess):
            if "rm_pipeline.training_worker" in " ".join(process.cmdline()):
                chain = [process, *process.parents()]
                return next(p for p, parent in itertools.pairwise(chain) if "api grpc" in " ".join(parent.cmdline()))
    return None


def kill_tree(process: psutil.Process) -> None:
    """SIGKILL the process first, then everything it started (as when its machine or container dies)."""
    victims = [process, *process.children(recursive=True)]
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)


def run_errors(instance: dg.DagsterInstance, run_id: str) -> str:
    """A failed run's last messages and its steps' errors, whole (pytest would cut a list of them short)."""
    events = instance.all_logs(run_id)
    errors = [
        event.dagster_event.step_failure_data.error.to_string()
        for event in events
        if event.dagster_event and event.dagster_event.is_step_failure
    ]
    return "\n".join([event.message for event in events][-20:] + errors)


def assert_resumed_from_a_checkpoint(instance: dg.DagsterInstance, run_id: str, root) -> None:
    model = instance.get_latest_materialization_event(dg.AssetKey("reward_model"))
    assert model.run_id == run_id
    resumed_from = model.asset_materialization.metadata["resumed_from"].value
    assert "/models/.checkpoints/" in resumed_from and "checkpoint-" in resumed_from
    logs = [event.message for event in instance.all_logs(run_id)]
    assert any("resuming from" in message and resumed_from in message for message in logs)
    assert not list((root / "models" / ".checkpoints").glob("*/checkpoint-*"))  # removed once the model is saved


@contextlib.contextmanager
def deployment(postgres_server, database: str, tmp_path, annotations, base_model, eval_dir):
    """The instance in PostgreSQL with a run queue and run monitoring; a code server (`dagster api grpc`) and
    the daemon, as a deployment runs them. Yields the instance, the workspace file and the environment."""
    dagster_home = postgres_instance(
        tmp_path,
        postgres_server.create_database(database),
        run_coordinator={
            "module": "dagster",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": 1, "dequeue_interval_seconds": 1},
        },
        run_launcher={"module": "dagster", "class": "DefaultRunLauncher"},
        run_monitoring={"enabled": True, "poll_interval_seconds": 1},
    )
    env = pipeline_env(tmp_path, dagster_home, annotations, base_model, eval_dir)
    with (
        dg.DagsterInstance.from_config(dagster_home) as instance,
        code_server(env, tmp_path / "code_server.log") as workspace,
        dagster_daemon(env, tmp_path / "daemon.log", workspace),
    ):
        yield instance, workspace, env


@pytest.mark.servers
@pytest.mark.trains
def test_a_killed_run_worker_is_marked_failed_and_the_next_run_resumes_training(
    postgres_server, annotations_slice, tiny_encoder, labelled_eval_dir, tmp_path
):
    """A run launched as the UI and automation launch them: queued in the instance, dequeued by the real
    `dagster-daemon`, started by the DefaultRunLauncher as a run worker process of the code server. Its run
    worker and training child are SIGKILLed once training has written a checkpoint (as when the OOM killer
    or an operator kills it).

    Who notices: the daemon's run monitoring (`run_monitoring: enabled`) checks every STARTED run, but it can
    only ask the run launcher whether the worker is alive, and DefaultRunLauncher (the only local launcher)
    doesn't support that (`supports_check_run_worker_health` is False, dagster/_core/launcher/base.py; only
    the Docker, Kubernetes and ECS launchers answer), so for this run it only enforces timeouts. The code
    server that started the worker does notice: every 0.5 s it looks for run workers that exited and reports
    their runs failed ("Run execution process for <run> was terminated by signal 9 (SIGKILL)",
    `DagsterApiServer._check_for_orphaned_runs`, dagster/_grpc/server.py). Then the next run resumes from the
    checkpoint."""
    root = tmp_path / "home"
    killed_run, next_run = str(uuid.uuid4()), str(uuid.uuid4())
    with deployment(postgres_server, "monitoring", tmp_path, annotations_slice, tiny_encoder, labelled_eval_dir) as (
        instance,
        workspace,
        env,
    ):
        launch(workspace, env, killed_run)
        kill_tree(wait_until(lambda: run_worker_of_training(root), 300, "a checkpoint of the launched run", poll=0.2))
        wait_until(
            lambda: instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.FAILURE,
            60,
            f"run {killed_run} marked failed (see {tmp_path / 'daemon.log'})",
        )
        # who noticed: the code server that started the run worker, not the daemon's run monitoring
        noticed = f"[DagsterApiServer] Run execution process for {killed_run} was terminated by signal 9 (SIGKILL)."
        messages = [event.message for event in instance.all_logs(killed_run)]
        assert any(message.startswith(noticed) for message in messages), messages[-5:]
        assert not (root / "models" / "current").exists()  # nothing half-trained became current

        # The whole job again, through the queue: an op selection (`-o reward_model`) can't carry an input across a
        # blocking check (Dagster leaves it an empty fan-in); the data stages rebuild the same split quickly.
        launch(workspace, env, next_run)
        status = wait_until(
            lambda: (run := instance.get_run_by_id(next_run)) and run.is_finished and run.status,
            300,
            f"run {next_run} finished (see {tmp_path / 'daemon.log'})",
        )
        assert status == dg.DagsterRunStatus.SUCCESS, run_errors(instance, next_run)
        assert_resumed_from_a_checkpoint(instance, next_run, root)


@pytest.mark.servers
@pytest.mark.trains
def test_a_run_whose_code_server_died_too_is_reported_failed_by_the_next_run(
    postgres_server, annotations_slice, tiny_encoder, labelled_eval_dir, tmp_path
):
    """The code server dies with its run worker (a user-code container restarted): nothing in Dagster notices.
    The daemon's run monitoring keeps checking the STARTED run and can't tell it is dead (DefaultRunLauncher
    has no worker health check); the run stays STARTED. The next run that takes the storage root reports it
    failed (`fail_abandoned_run`, from the `.run.lock` the dead run left behind) and resumes training."""
    root = tmp_path / "home"
    killed_run = str(uuid.uuid4())
    daemon_log = tmp_path / "daemon.log"
    with deployment(postgres_server, "abandoned", tmp_path, annotations_slice, tiny_encoder, labelled_eval_dir) as (
        instance,
        workspace,
        env,
    ):
        launch(workspace, env, killed_run)
        worker = wait_until(lambda: run_worker_of_training(root), 300, "a checkpoint of the launched run", poll=0.2)
        kill_tree(worker.parent())  # the code server, then its run worker and training child

        def checks() -> int:
            return daemon_log.read_text().count(f"Checking run {killed_run}")

        seen = checks()
        wait_until(lambda: checks() >= seen + 3, 60, f"three more checks of run monitoring (see {daemon_log})")
        assert instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.STARTED  # checked, not noticed

        dagster_command(
            env,
            ["asset", "materialize", "-m", "rm_pipeline.definitions"]
            + ["--select", "reward_model", "--config-json", json.dumps(TRAINING)],
        )
        assert instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.FAILURE
        [failure] = [
            e.message for e in instance.all_logs(killed_run) if e.dagster_event and e.dagster_event.is_run_failure
        ]
        assert "ended without finishing it (killed or crashed); marked failed when the next run took" in failure
        next_run = instance.get_latest_materialization_event(dg.AssetKey("reward_model")).run_id
        assert instance.get_run_by_id(next_run).status == dg.DagsterRunStatus.SUCCESS
        assert_resumed_from_a_checkpoint(instance, next_run, root)
