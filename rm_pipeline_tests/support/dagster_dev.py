"""The real `dagster dev` (webserver and daemon) for end-to-end tests: start it on a free port bound to
127.0.0.1, launch jobs through GraphQL, and stop every process it started."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from dagster_graphql import DagsterGraphQLClient

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
# Runs one at a time: a run fails at once while another holds the storage root.
INSTANCE_SETTINGS = "telemetry:\n  enabled: false\nnux:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 1\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def assert_port_free(port: int) -> None:
    """Nothing listens on the port (REUSEADDR: connections closed a moment ago may linger)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))
        probe.listen()


def stop_group(process: subprocess.Popen, seconds: float = 60) -> None:
    """SIGTERM to the process's group (dagster dev stops its webserver, daemon and code servers on it), then
    SIGKILL to the group and to every descendant still alive after `seconds`; none is left running."""
    try:
        started = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=seconds)
    _, alive = psutil.wait_procs(started, timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for survivor in alive:  # one that left the group
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()
    process.wait(timeout=10)
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, [survivor.pid for survivor in alive]


@dataclass
class DagsterDev:
    port: int
    dagster_home: Path
    home: Path  # the pipeline's storage root
    annotations: Path  # the watched annotation folder
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def client(self) -> DagsterGraphQLClient:
        return DagsterGraphQLClient(HOST, port_number=self.port)

    def launch_and_wait(self, job: str, run_config: dict, seconds: float = 480) -> str:
        """Launch `job` through GraphQL, as the UI's launchpad does; its final status."""
        client = self.client
        run_id = client.submit_job_execution(job, repository_location_name="rm_pipeline", run_config=run_config)
        return self.wait_for_run(run_id, seconds)

    def wait_for_run(self, run_id: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        status = None
        while time.monotonic() < deadline:
            status = self.client.get_run_status(run_id).value
            if status in FINISHED:
                return status
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still {status} after {seconds} s; see {self.log}")


@contextlib.contextmanager
def dagster_dev(folder: Path, annotations: Path, env: dict[str, str]) -> Iterator[DagsterDev]:
    """`dagster dev` on this project's workspace, reading `annotations`, with DAGSTER_HOME and the storage
    root under `folder` and the other settings in `env`.

    On exit every process it started is stopped, and its port is free again.
    """
    port = free_port()
    dagster_home = folder / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(INSTANCE_SETTINGS)
    home = folder / "home"
    full_env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "RM_PIPELINE_HOME": str(home),
        "RM_PIPELINE_ANNOTATIONS": str(annotations),
        **env,
    }
    log_path = folder / "dagster_dev.log"
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml")]
    with background([*command, "-h", HOST, "-p", str(port)], full_env, log_path):
        running = DagsterDev(port, dagster_home, home, annotations, log_path)
        wait_for(f"{running.url}/server_info", 180)
        yield running
    assert_port_free(port)


@contextlib.contextmanager
def background(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """A server process in its own process group, logging to `log_path`; on exit it is stopped with every
    process it started."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped together
            # SIGINT at its default: a suite run as a background job inherits it ignored, and dagster dev maps
            # SIGTERM to SIGINT's handler, so it would ignore the stop and wait out stop_group's 60 s each time
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            yield process
        finally:
            stop_group(process)


@contextlib.contextmanager
def code_server(env: dict[str, str], log_path: Path, seconds: float = 180) -> Iterator[Path]:
    """`dagster api grpc` serving the code location on 127.0.0.1, as a deployment's user-code server does: it
    starts the run workers of launched runs. Yields a workspace file pointing at it."""
    from dagster._grpc.client import DagsterGrpcClient

    port = free_port()
    command = [sys.executable, "-m", "dagster", "api", "grpc", "-h", HOST, "-p", str(port)]
    with background([*command, "-m", "rm_pipeline.definitions", "--location-name", "rm_pipeline"], env, log_path):
        client, deadline = DagsterGrpcClient(port=port, host=HOST), time.monotonic() + seconds
        while True:
            with contextlib.suppress(Exception):
                client.ping("up")
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the code server did not answer within {seconds} s; see {log_path}")
            time.sleep(0.5)
        workspace = log_path.with_name("workspace.yaml")
        workspace.write_text(
            f"load_from:\n  - grpc_server:\n      host: {HOST}\n      port: {port}\n      location_name: rm_pipeline\n"
        )
        yield workspace


def dagster_daemon(env: dict[str, str], log_path: Path, workspace: Path = REPO_ROOT / "workspace.yaml"):
    """`dagster-daemon run` (sensors, run queue, run monitoring) on the instance of `env`'s DAGSTER_HOME."""
    return background([sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)], env, log_path)
