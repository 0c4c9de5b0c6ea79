"""End to end through the real webserver and daemon (`dagster dev`), as a user drives the UI."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from dagster_graphql import DagsterGraphQLClient

from rm_pipeline_tests.conftest import PERMISSIVE_READINESS

pytestmark = pytest.mark.slow  # trains models or starts servers

REPO_ROOT = Path(__file__).resolve().parents[1]
LINEAGE_QUERY = """
{ assetNodes { assetKey { path } dependencyKeys { path } groupName } }
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@pytest.fixture
def dagster_dev(annotations_slice, tmp_path, tiny_encoder, labelled_eval_dir):
    port = _free_port()
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "RM_PIPELINE_HOME": str(tmp_path / "home"),
        "RM_PIPELINE_ANNOTATIONS": str(annotations_slice),
        "RM_PIPELINE_BASE_MODEL": tiny_encoder,
        "RM_PIPELINE_EVAL": str(labelled_eval_dir),
    }
    log = open(tmp_path / "dagster_dev.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", 180)
        yield port, tmp_path / "home"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_job_launched_through_the_webserver_materialises_the_graph(dagster_dev):
    port, home = dagster_dev
    client = DagsterGraphQLClient("127.0.0.1", port_number=port)

    nodes = client._execute(LINEAGE_QUERY)["assetNodes"]
    parents = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert parents["preference_split"] == {"preference_pairs"}
    assert parents["aggregated_preferences"] == {"raw_annotations"}

    run_id = client.submit_job_execution(
        "reward_pipeline_job", repository_location_name="rm_pipeline", run_config={"ops": PERMISSIVE_READINESS}
    )
    deadline = time.monotonic() + 480
    status = None
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"
    split = pd.read_parquet(home / "tables" / "preference_split.parquet")
    assert len(split) > 0 and split.groupby("prompt_id")["split"].nunique().max() == 1
    assert (home / "models" / "current" / "config.json").exists()
    assert (home / "models" / "current" / "readiness.json").exists()
