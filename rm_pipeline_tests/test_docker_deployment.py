"""docker/ on a real Docker engine: the image built from docker/Dockerfile, its health check, and run monitoring
of the shipped docker/dagster.yaml (DockerRunLauncher) resuming a run whose container was killed mid-training.

No image is pulled: the base image is a local debootstrap (rm_pipeline_tests/docker_image.py). Without a Docker
daemon these tests fail, naming what to install (`.ci/run` installs and starts it)."""

import contextlib
import json
import os
import re
import shutil
import tomllib
import uuid

import dagster as dg
import docker.errors
import pytest
import yaml
from dagster_docker.docker_run_launcher import DOCKER_CONTAINER_ID_TAG
from dagster_graphql import DagsterGraphQLClient
from packaging.utils import canonicalize_name

from rm_pipeline_tests.support.dagster_dev import HOST, free_port, wait_for
from rm_pipeline_tests.support.docker_image import (
    base_image,
    build_image,
    docker_client,
    download_wheels,
    package_index,
)
from rm_pipeline_tests.test_deploy_config import (
    CONTRACT_ENV,
    CONTRACT_VOLUMES,
    DAEMON,
    DOCKER,
    DOCKER_SOCKET,
    REPO_ROOT,
    USER_CODE,
    WEBSERVER,
    compose,
    dockerfile_args,
    filled_in_env,
    interpolate,
)
from rm_pipeline_tests.test_postgres_storage import (
    TRAINING,
    assert_resumed_from_a_checkpoint,
    postgres_instance,
    wait_until,
)

APP_UID = int(dockerfile_args()["APP_UID"])
LABEL = "rm-pipeline-test"  # on every container a test starts (or has started), to remove them after it
BASE_MODEL = "/data/base_model"  # where the run containers see the test's tiny encoder
RUN_MONITORING_NOTICED = "Detected run worker status"  # dagster/_daemon/monitoring/run_monitoring.py
IMAGE_ID = re.compile(r"^ ---> ([0-9a-f]{12})$", re.MULTILINE)


@pytest.fixture(scope="session")
def deployment_image(tmp_path_factory):
    """docker/Dockerfile built once per session on a local bookworm base, pip installing from a local index of
    the wheels the Dockerfile asks for; removed (with its build stage) at the end."""
    client = docker_client()
    image = f"rm-pipeline-user-code:test-{uuid.uuid4().hex[:12]}"  # sessions sharing a daemon don't clash
    folder = tmp_path_factory.mktemp("image")
    wheels = folder / "wheels"
    wheels.mkdir()
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    download_wheels(wheels, dockerfile_args()["TORCH_VERSION"], requires)
    log = folder / "build.log"
    base = base_image(client)
    with package_index(wheels) as index:
        arguments = {"BASE_IMAGE": base, "TORCH_INDEX_URL": index, "PIP_INDEX_URL": index}
        seconds = build_image(client, image, arguments, log)
    shutil.rmtree(wheels)
    print(f"\n{image} built in {seconds:.0f} s (log: {log})")
    yield image
    client.images.remove(image, force=True)
    # the build stage and its steps, kept by the classic builder as its cache; the last first (its removal
    # removes the untagged steps under it); the base stays for the next session
    base_id = client.images.get(base).short_id.removeprefix("sha256:")
    for image_id in reversed([found for found in IMAGE_ID.findall(log.read_text()) if found != base_id]):
        try:
            client.images.remove(image_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            print(f"left image {image_id}: {error.explanation}")


@pytest.fixture
def test_containers():
    """A label value for the containers a test starts (or has the daemon start); they are removed after it."""
    client, value = docker_client(), uuid.uuid4().hex
    yield value
    for _ in range(2):  # again: the daemon may have started a run container while the first pass removed it
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}={value}"}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def pinned_versions(lines: list[str]) -> dict[str, str]:
    """name -> version of the `name==version` lines (pip freeze, constraints.txt)."""
    return {canonicalize_name(name): version for name, version in (line.split("==") for line in lines if "==" in line)}


def run_in_image(client, image: str, *command: str) -> str:
    output = client.containers.run(image, list(command), remove=True, stderr=True, healthcheck={"test": ["NONE"]})
    return output.decode()


@pytest.mark.docker
def test_the_image_holds_the_package_and_the_tested_versions_and_runs_as_its_user(deployment_image):
    client = docker_client()
    config = client.images.get(deployment_image).attrs["Config"]
    assert config["User"] == "rm-pipeline"
    assert config["Cmd"][:3] == ["dagster", "code-server", "start"]
    assert {key: dict(v.split("=", 1) for v in config["Env"]).get(key) for key in CONTRACT_ENV} == CONTRACT_ENV
    probe = (
        "import json, os, dagster_docker, dagster_k8s, dagster_postgres, rm_pipeline, torch;"
        "print(json.dumps({'uid': os.getuid(), 'torch': torch.__version__, 'package': rm_pipeline.__file__,"
        "'cuda': torch.cuda.is_available()}))"
    )
    assert json.loads(run_in_image(client, deployment_image, "python", "-c", probe)) == {
        "uid": APP_UID,
        "torch": f"{dockerfile_args()['TORCH_VERSION']}+cpu",  # the default TORCH_INDEX_URL's CPU build
        "package": "/opt/rm-pipeline/rm_pipeline/__init__.py",  # installed in place, next to its data/
        "cuda": False,
    }
    shipped = run_in_image(client, deployment_image, "cat", f"{CONTRACT_ENV['DAGSTER_HOME']}/dagster.yaml")
    assert shipped == (DOCKER / "dagster.yaml").read_text()
    # every package in the image at the version the tests passed with (torch aside); the data folders are the user's
    listing = run_in_image(
        client, deployment_image, "sh", "-c", "pip freeze --exclude-editable; stat -c '%u %n' /data/*"
    ).splitlines()
    installed = pinned_versions(listing)
    installed.pop("torch")
    assert {"dagster", "dagster-postgres", "dagster-docker", "dagster-k8s", "trl"} <= installed.keys()
    constraints = pinned_versions((DOCKER / "constraints.txt").read_text().splitlines())
    assert installed == {name: constraints.get(name) for name in installed}
    for path in CONTRACT_VOLUMES.values():
        assert f"{APP_UID} {path}" in listing


@pytest.mark.docker
def test_the_image_serves_the_code_location_and_docker_sees_it_healthy(deployment_image, test_containers):
    """The image's default command on its own: the code server answers the image's HEALTHCHECK (the probe runs
    every 30 s), as compose waits for before it starts the webserver and the daemon."""
    container = docker_client().containers.run(deployment_image, detach=True, labels={LABEL: test_containers})

    def health() -> str | None:
        container.reload()
        status = container.attrs["State"]["Health"]["Status"]
        return status if status != "starting" else None

    assert wait_until(health, 150, "a health status of the code server container", poll=2) == "healthy", (
        container.logs().decode()[-3000:]
    )


def shipped_instance(mounts: dict[str, str], labels: dict[str, str]) -> dict:
    """docker/dagster.yaml with only what this machine needs changed: the run containers join the host's
    network (the test's PostgreSQL listens on 127.0.0.1 only; the daemon, the code server and the runs share
    the host's loopback with it) and mount host folders where the deployment mounts its named volumes."""
    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    launcher = instance["run_launcher"]["config"]
    assert launcher["network"] == "rm-pipeline-network"
    launcher["network"] = "host"
    kwargs = launcher["container_kwargs"]
    shipped = dict(mount.split(":", 1) for mount in kwargs["volumes"])
    assert {volume: shipped[volume] for volume in CONTRACT_VOLUMES} == CONTRACT_VOLUMES
    assert shipped[DOCKER_SOCKET] == DOCKER_SOCKET
    kwargs["volumes"] = [f"{source}:{target}" for target, source in mounts.items()]
    kwargs["labels"] = labels  # to find and remove the run containers after the test
    return instance


def deployment_env(db: dict) -> dict[str, str]:
    """What compose gives the daemon (its x-dagster-environment), pointed at the test's database and model."""
    environment = compose()["services"][DAEMON]["environment"]
    return {
        **{key: interpolate(str(value), filled_in_env()) for key, value in environment.items()},
        "DAGSTER_POSTGRES_HOST": db["hostname"],
        "DAGSTER_POSTGRES_PORT": str(db["port"]),
        "DAGSTER_POSTGRES_USER": db["username"],
        "DAGSTER_POSTGRES_PASSWORD": db["password"],
        "DAGSTER_POSTGRES_DB": db["db_name"],
        "RM_PIPELINE_BASE_MODEL": BASE_MODEL,
        "RM_PIPELINE_TRAINING_NETWORK": "host",
    }


def owned_by_the_image_user(target, source=None) -> str:
    """A folder (a copy of `source`, or empty) that the image's user owns: bind mounts keep host owners."""
    if source is None:
        target.mkdir()
    else:
        shutil.copytree(source, target)
    for folder, _, files in os.walk(target):
        for path in [folder, *(os.path.join(folder, name) for name in files)]:
            os.chown(path, APP_UID, APP_UID)
    return str(target)


def container_logs(client, labels: dict[str, str]) -> str:
    """The last lines of every container of the test, for a failure message."""
    found = client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})
    return "\n".join(f"--- {c.name} {c.attrs['Config']['Cmd'][:4]}\n{c.logs().decode()[-2500:]}" for c in found)


@pytest.mark.docker
@pytest.mark.servers
@pytest.mark.trains
def test_run_monitoring_resumes_a_run_whose_container_was_killed_mid_training(
    deployment_image, test_containers, postgres_server, annotations_slice, tiny_encoder, labelled_eval_dir, tmp_path
):
    """The deployment as compose runs it, on a real Docker engine: the image's code server, `dagster-daemon` and
    webserver in containers of the image, the instance of docker/dagster.yaml (DockerRunLauncher, run monitoring
    with resume) on a real PostgreSQL. A run of the whole pipeline (small data, a small training) goes through
    the run queue into a run container; once training wrote a checkpoint the container is SIGKILLed (`docker
    kill`, as when the OOM killer or a host problem ends it). The daemon's run monitoring asks the launcher
    about the run's container, finds it exited, and resumes the run in a new container, which finishes the
    training from the checkpoint; the webserver shows the run succeeded. (Run monitoring checks workers only
    through launchers that can: DefaultRunLauncher can't, see test_postgres_storage.py.)"""
    client = docker_client()
    socket_group = str(os.stat(DOCKER_SOCKET).st_gid)
    labels = {LABEL: test_containers}
    root = tmp_path / "storage"
    mounts = {  # container path -> host path, for the daemon, the code server and the run containers
        CONTRACT_VOLUMES["rm-pipeline-storage"]: owned_by_the_image_user(root),
        CONTRACT_VOLUMES["rm-pipeline-annotations"]: owned_by_the_image_user(tmp_path / "ann", annotations_slice),
        CONTRACT_VOLUMES["rm-pipeline-reviews"]: owned_by_the_image_user(tmp_path / "reviews"),
        DOCKER_SOCKET: DOCKER_SOCKET,
        BASE_MODEL: owned_by_the_image_user(tmp_path / "base_model", tiny_encoder),
        # five labelled pairs instead of the bundled evaluation files: the stages after training score quickly
        CONTRACT_ENV["RM_PIPELINE_EVAL"]: owned_by_the_image_user(tmp_path / "eval", labelled_eval_dir),
    }
    db = postgres_server.create_database("docker_monitoring")
    env = deployment_env(db)
    port = free_port()
    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host=HOST, port=port)
    dagster_home = CONTRACT_ENV["DAGSTER_HOME"]
    volumes = {source: {"bind": target, "mode": "rw"} for target, source in mounts.items()}
    for name, content in (("dagster.yaml", shipped_instance(mounts, labels)), ("workspace.yaml", workspace)):
        (tmp_path / name).write_text(yaml.safe_dump(content))
        volumes[str(tmp_path / name)] = {"bind": f"{dagster_home}/{name}", "mode": "ro"}
    # the image's HEALTHCHECK probes port 4000; compose gives the daemon its own
    common = dict(detach=True, network_mode="host", volumes=volumes, labels=labels, init=True)
    common["healthcheck"] = {"test": ["NONE"]}

    # the code server: the image's command on the test's port; it tells the launcher its image, as in compose
    command = client.images.get(deployment_image).attrs["Config"]["Cmd"]
    command[command.index("-h") + 1], command[command.index("-p") + 1] = HOST, str(port)
    context = compose()["services"][USER_CODE]["environment"]["DAGSTER_CONTAINER_CONTEXT"]
    code_server_env = {
        **env,
        "DAGSTER_CURRENT_IMAGE": deployment_image,
        "DAGSTER_CONTAINER_CONTEXT": interpolate(context, {"DOCKER_GID": socket_group}),
    }
    code_server = client.containers.run(deployment_image, command, environment=code_server_env, **common)
    health_check = ["dagster", "api", "grpc-health-check", "-p", str(port)]
    wait_until(lambda: code_server.exec_run(health_check).exit_code == 0, 180, "the code server", poll=2)

    # queued before the daemon starts, so the automation sensor finds the pipeline busy and requests nothing
    run_id = str(uuid.uuid4())
    launch = code_server.exec_run(
        ["dagster", "job", "launch", "-w", f"{dagster_home}/workspace.yaml", "-j", "reward_pipeline_job"]
        + ["--run-id", run_id, "--config-json", json.dumps(TRAINING)]
    )
    assert launch.exit_code == 0, launch.output.decode()[-3000:]
    services = compose()["services"]
    client.containers.run(
        deployment_image, services[DAEMON]["command"], environment=env, group_add=[socket_group], **common
    )
    webserver_port = free_port()
    webserver_command = services[WEBSERVER]["command"]
    webserver_command[webserver_command.index("-h") + 1] = HOST
    webserver_command[webserver_command.index("-p") + 1] = str(webserver_port)
    client.containers.run(deployment_image, webserver_command, environment=env, group_add=[socket_group], **common)

    with dg.DagsterInstance.from_config(postgres_instance(tmp_path, db)) as instance:

        def container_once_training_checkpointed() -> str | None:
            if not list((root / "models" / ".checkpoints").glob("*/checkpoint-*/trainer_state.json")):
                return None
            return instance.get_run_by_id(run_id).tags[DOCKER_CONTAINER_ID_TAG]

        first = client.containers.get(
            wait_until(container_once_training_checkpointed, 600, "a checkpoint of the run", poll=0.2)
        )
        first.kill()  # SIGKILL
        first.wait(timeout=60)
        first.reload()
        assert first.attrs["State"]["ExitCode"] == 137
        assert not (root / "models" / "current").exists()  # killed mid-training: no model yet

        status = wait_until(
            lambda: (run := instance.get_run_by_id(run_id)).is_finished and run.status,
            600,
            f"run {run_id} finished",
            poll=2,
        )
        messages = [event.message for event in instance.all_logs(run_id)]
        assert status == dg.DagsterRunStatus.SUCCESS, (messages[-15:], container_logs(client, labels))
        # noticed by the daemon's run monitoring through the launcher's container check, and resumed
        [noticed] = [message for message in messages if message.startswith(RUN_MONITORING_NOTICED)]
        assert "Container status is exited" in noticed and f"Resuming run {run_id} with a new worker" in noticed
        second = instance.get_run_by_id(run_id).tags[DOCKER_CONTAINER_ID_TAG]
        assert second != first.id and client.containers.get(second).attrs["State"]["ExitCode"] == 0
        assert_resumed_from_a_checkpoint(instance, run_id, root)
        assert (root / "models" / "current").exists()

    # the webserver container shows it, from PostgreSQL
    wait_for(f"http://{HOST}:{webserver_port}/server_info", 120)
    assert DagsterGraphQLClient(HOST, port_number=webserver_port).get_run_status(run_id) == dg.DagsterRunStatus.SUCCESS
