"""docker/ checked without a Docker daemon: the compose file against the Compose specification's JSON schema,
dagster.yaml and workspace.yaml through Dagster's own config schemas, and every name one file hands another
(services, volumes, networks, variables, paths, build arguments) defined where it is used."""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.load import location_origins_from_yaml_paths
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from rm_pipeline_tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yaml"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())

USER_CODE, WEBSERVER, DAEMON, POSTGRES = (
    "rm-pipeline-user-code",
    "rm-pipeline-webserver",
    "rm-pipeline-daemon",
    "rm-pipeline-postgresql",
)
DAGSTER_SERVICES = [USER_CODE, WEBSERVER, DAEMON]
NETWORK = "rm-pipeline-network"
DOCKER_SOCKET = "/var/run/docker.sock"
# The deployment contract (issue 11): each named volume / PVC and where every container and pod mounts it.
CONTRACT_VOLUMES = {
    "rm-pipeline-storage": "/data/rm_pipeline_home",
    "rm-pipeline-annotations": "/data/annotations",
    "rm-pipeline-reviews": "/data/reviews",
}
CONTRACT_ENV = {
    "RM_PIPELINE_HOME": "/data/rm_pipeline_home",
    "RM_PIPELINE_ANNOTATIONS": "/data/annotations",
    "RM_PIPELINE_REVIEWS": "/data/reviews",
    "RM_PIPELINE_EVAL": "/opt/rm-pipeline/rm_pipeline/data/eval",
    "DAGSTER_HOME": "/opt/dagster/dagster_home",
}
CODE_SERVER_PORT = 4000

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; `$$` is a literal `$`.
REFERENCE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def references(text: str) -> list[tuple[str, str | None]]:
    """(variable, operator) for every interpolation in a compose text, leaving out `$$` escapes."""
    return [(m["name"], m["op"]) for m in REFERENCE.finditer(text) if m["name"]]


def interpolate(value: str, env: dict[str, str]) -> str:
    """A compose value as compose resolves it with `env` (the subset of its rules these files use)."""

    def resolve(match: re.Match) -> str:
        if not match["name"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        if op in (":-", "-"):
            return env.get(name) or arg if op == ":-" else env.get(name, arg)
        if op in (":?", "?") and not env.get(name):
            raise KeyError(f"{name}: {arg}")
        return env[name]

    return REFERENCE.sub(resolve, value)


def env_example() -> dict[str, str]:
    settings = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().strip('"')
    return settings


def filled_in_env() -> dict[str, str]:
    """.env.example with its blanks filled in, as an operator does."""
    return {**env_example(), "POSTGRES_PASSWORD": "s3cret", "DOCKER_GID": "999"}


def service_env(service: str) -> dict[str, str]:
    environment = compose()["services"][service].get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: interpolate(str(value), filled_in_env()) for key, value in environment.items()}


def volume_mounts(mounts: list[str]) -> dict[str, str]:
    """source -> target of `source:target[:mode]` mount strings."""
    return {mount.split(":")[0]: mount.split(":")[1] for mount in mounts}


# ---------------------------------------------------------------------------------------------------- compose


def check_compose(path: Path) -> subprocess.CompletedProcess:
    validator = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run(
        [str(validator), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_compose_file_follows_the_compose_specification():
    result = check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_check_fails_a_service_with_an_unknown_key(tmp_path):
    broken = compose()
    broken["services"][DAEMON]["restart_policy"] = "always"  # not a service key (deploy.restart_policy is)
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = check_compose(path)
    assert result.returncode != 0
    assert "restart_policy" in result.stdout + result.stderr


def test_every_volume_network_and_service_compose_names_is_defined():
    spec = compose()
    services, volumes, networks = spec["services"], spec["volumes"], spec["networks"]
    for name, service in services.items():
        for source in volume_mounts(service.get("volumes", [])):
            assert source.startswith("/") or source in volumes, f"{name} mounts undeclared volume {source}"
        assert service.get("networks") == [NETWORK], f"{name} is not on {NETWORK} alone"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    # declared volumes and network carry fixed names: the run and training containers the daemon starts
    # outside compose mount and join them by these names
    assert {name: spec.get("name") for name, spec in volumes.items() if name in CONTRACT_VOLUMES} == {
        name: name for name in CONTRACT_VOLUMES
    }
    assert networks[NETWORK]["name"] == NETWORK


def test_every_service_waits_for_what_it_depends_on_to_be_healthy():
    services = compose()["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            target = services[dependency]  # its own health check, or the one of the image it builds
            built_checked = "build" in target and "HEALTHCHECK" in dockerfile_instructions(final_stage())
            assert "healthcheck" in target or built_checked, f"{dependency} never reports healthy"


def test_every_variable_compose_reads_is_in_env_example_or_has_a_default():
    example, used = env_example(), references(COMPOSE.read_text())
    assert set(example) <= {name for name, _ in used}, ".env.example sets what compose never reads"
    for name, op in used:
        if op in (":?", "?"):
            assert name in example, f"required ${{{name}}} is not in .env.example"
        else:
            assert name in example or op in (":-", "-"), f"${{{name}}} has no default and is not in .env.example"


def test_secrets_come_only_from_the_environment():
    assert env_example()["POSTGRES_PASSWORD"] == "", ".env.example must not hold a password"
    raw = compose()
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key} is not a required variable"
    assert (DOCKER / ".gitignore").read_text().splitlines().count(".env") == 1


def test_postgres_is_private_and_the_webserver_is_on_loopback_only():
    services = compose()["services"]
    assert "ports" not in services[POSTGRES]
    assert "pg_isready" in " ".join(services[POSTGRES]["healthcheck"]["test"])
    assert services[WEBSERVER]["ports"] == ["127.0.0.1:3000:3000"]
    assert [name for name, service in services.items() if "ports" in service] == [WEBSERVER]


def test_every_dagster_service_mounts_the_contract_volumes():
    services = compose()["services"]
    for name in DAGSTER_SERVICES:
        mounts = volume_mounts(services[name]["volumes"])
        assert {source: mounts.get(source) for source in CONTRACT_VOLUMES} == CONTRACT_VOLUMES, name
    for name in (WEBSERVER, DAEMON):  # DockerRunLauncher starts, stops and watches containers through it
        assert volume_mounts(services[name]["volumes"])[DOCKER_SOCKET] == DOCKER_SOCKET
        assert services[name]["group_add"] == ["${DOCKER_GID:?set DOCKER_GID in .env}"]


def test_one_image_runs_every_process_and_the_training():
    services = compose()["services"]
    image = interpolate(services[USER_CODE]["image"], filled_in_env())
    assert services[USER_CODE]["build"]["dockerfile"] == "docker/Dockerfile"
    assert (COMPOSE.parent / services[USER_CODE]["build"]["context"]).resolve() == REPO_ROOT
    for name in (WEBSERVER, DAEMON):
        assert interpolate(services[name]["image"], filled_in_env()) == image
    assert service_env(USER_CODE)["DAGSTER_CURRENT_IMAGE"] == image  # what the daemon launches runs in
    for name in DAGSTER_SERVICES:
        assert service_env(name)["RM_PIPELINE_TRAINING_IMAGE"] == image
        assert service_env(name)["RM_PIPELINE_TRAINING_NETWORK"] == NETWORK


def test_the_run_containers_get_the_docker_socket_group_from_the_code_server():
    from dagster_docker.container_context import DockerContainerContext

    context = json.loads(service_env(USER_CODE)["DAGSTER_CONTAINER_CONTEXT"])
    parsed = DockerContainerContext.create_from_config(context)  # raises on a key dagster_docker doesn't know
    assert parsed.container_kwargs == {"group_add": ["999"]}


def test_webserver_and_daemon_load_the_workspace_from_dagster_home():
    services = compose()["services"]
    workspace = f"{CONTRACT_ENV['DAGSTER_HOME']}/workspace.yaml"
    assert services[WEBSERVER]["command"][0] == "dagster-webserver"
    assert services[DAEMON]["command"][:2] == ["dagster-daemon", "run"]
    for name in (WEBSERVER, DAEMON):
        command = services[name]["command"]
        assert command[command.index("-w") + 1] == workspace


# ------------------------------------------------------------------------------------------------ dagster.yaml


def instance_config(folder: Path) -> dict:
    """dagster.yaml in `folder` as the daemon loads it: Dagster's instance schema, then every class it names
    imported and its own config checked against that class's schema, with `env:` values resolved."""
    config, _ = dagster_instance_config(str(folder))
    for key in ("run_coordinator", "run_launcher", "scheduler", "local_artifact_storage", "compute_logs"):
        entry = config[key]
        cls = getattr(import_module(entry["module"]), entry["class"])
        result = process_config(cls.config_type(), entry.get("config") or {})
        if not result.success:
            raise DagsterInvalidConfigError(f"{key}: {entry['class']} config", result.errors, entry.get("config"))
    from dagster._core.storage.config import pg_config
    from dagster_postgres import DagsterPostgresStorage  # what `storage: postgres` instantiates

    assert DagsterPostgresStorage
    result = process_config(pg_config(), config["storage"]["postgres"])
    if not result.success:
        raise DagsterInvalidConfigError("storage.postgres", result.errors, config["storage"]["postgres"])
    return config


def env_references(node) -> set[str]:
    """Every variable a Dagster config reads through `{env: NAME}`."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_references(value) for value in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_references(value) for value in node)) if node else set()
    return set()


def dagster_yaml() -> dict:
    return yaml.safe_load((DOCKER / "dagster.yaml").read_text())


@pytest.fixture
def database_env(monkeypatch):
    for name, value in service_env(DAEMON).items():
        monkeypatch.setenv(name, value)


def test_dagster_yaml_is_a_valid_instance_config(database_env):
    config = instance_config(DOCKER)
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_POSTGRES_HOST"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_launcher"]["class"] == "DockerRunLauncher"
    assert config["telemetry"] == {"enabled": False}


def test_run_monitoring_resumes_runs_with_a_launcher_that_can():
    from dagster_docker import DockerRunLauncher

    monitoring = dagster_yaml()["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["max_resume_run_attempts"] > 0
    assert monitoring["start_timeout_seconds"] > 0 and monitoring["cancel_timeout_seconds"] > 0
    assert DockerRunLauncher(network=NETWORK).supports_resume_run


def test_the_gpu_training_pool_is_limited_to_one():
    from rm_pipeline.definitions import defs

    node = defs.resolve_asset_graph().get(dg.AssetKey("reward_model"))
    assert node.pools == {"gpu_training"}
    assert dagster_yaml()["concurrency"]["pools"] == {"default_limit": 1}


BROKEN_INSTANCES = {
    "misspelt run monitoring key": lambda c: c["run_monitoring"].update(max_resume_attempts=1),
    "unknown DockerRunLauncher key": lambda c: c["run_launcher"]["config"].update(volumes=["a:/a"]),
    "pool limit below zero": lambda c: c["concurrency"]["pools"].update(default_limit=-1),
    "run launcher that does not exist": lambda c: c["run_launcher"].update({"class": "DockerRunLaunchr"}),
    "storage without a host": lambda c: c["storage"]["postgres"]["postgres_db"].pop("hostname"),
}


@pytest.mark.parametrize("break_it", BROKEN_INSTANCES.values(), ids=BROKEN_INSTANCES.keys())
def test_a_broken_dagster_yaml_fails(database_env, tmp_path, break_it):
    config = dagster_yaml()
    break_it(config)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises((DagsterInvalidConfigError, AttributeError)):
        instance_config(tmp_path)


def test_every_variable_dagster_yaml_reads_reaches_every_dagster_process():
    config = dagster_yaml()
    needed = env_references(config) | set(config["run_launcher"]["config"]["env_vars"])
    assert needed >= {"DAGSTER_POSTGRES_PASSWORD", "RM_PIPELINE_TRAINING_LAUNCHER"}
    for name in DAGSTER_SERVICES:  # the launcher forwards env_vars from the daemon's own environment
        missing = needed - set(service_env(name))
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_the_run_containers_mount_the_contract_volumes_on_the_network():
    launcher = dagster_yaml()["run_launcher"]["config"]
    volumes = compose()["volumes"]
    mounts = volume_mounts(launcher["container_kwargs"]["volumes"])
    assert mounts == {**CONTRACT_VOLUMES, DOCKER_SOCKET: DOCKER_SOCKET}
    assert all(volumes[source]["name"] == source for source in CONTRACT_VOLUMES)
    assert launcher["network"] == compose()["networks"][NETWORK]["name"]


# ---------------------------------------------------------------------------------------------- workspace.yaml


def test_the_workspace_points_at_the_code_server():
    (origin,) = location_origins_from_yaml_paths([str(DOCKER / "workspace.yaml")])
    assert (origin.host, origin.port) == (USER_CODE, CODE_SERVER_PORT)
    assert origin.location_name == PYPROJECT["tool"]["dagster"]["code_location_name"]
    assert USER_CODE in compose()["services"]


def test_a_broken_workspace_yaml_fails(tmp_path):
    path = tmp_path / "workspace.yaml"
    path.write_text((DOCKER / "workspace.yaml").read_text().replace("host:", "hostname:"))
    with pytest.raises(DagsterInvalidConfigError):
        location_origins_from_yaml_paths([str(path)])


# -------------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_parts() -> list[list[tuple[str, str]]]:
    """The Dockerfile as (INSTRUCTION, arguments) lists, continuation lines joined, comments dropped: what comes
    before the first FROM (global ARGs), then one list per stage."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    parts: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            parts.append([])
        parts[-1].append((instruction.upper(), " ".join(arguments.split())))
    return parts


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    return dockerfile_parts()[1:]


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def dockerfile_instructions(stage: list[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for instruction, arguments in stage:
        found.setdefault(instruction, []).append(arguments)
    return found


def dockerfile_args() -> dict[str, str | None]:
    args = {}
    for stage in dockerfile_parts():
        for arguments in dockerfile_instructions(stage).get("ARG", []):
            name, _, default = arguments.partition("=")
            args[name] = default or None
    return args


def env_values(stage) -> dict[str, str]:
    values = {}
    for arguments in dockerfile_instructions(stage).get("ENV", []):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def readme_build_args() -> dict[str, str]:
    """The "Build arguments" table of docker/README.md: name -> documented default."""
    section = (DOCKER / "README.md").read_text().split("### Build arguments", 1)[1].split("\n#", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", section, flags=re.MULTILINE))


def test_the_base_images_are_the_python_the_project_requires():
    # both stages on the one base: the venv built in the first runs on the second's Python
    assert [stage[0][1].split()[0] for stage in dockerfile_stages()] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    image = dockerfile_args()["BASE_IMAGE"]
    match = re.fullmatch(r"python:(\d+\.\d+)-slim-bookworm", image)
    assert match, f"unexpected base image {image}"
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert requires.contains(f"{match[1]}.0"), f"{image} is outside requires-python {requires}"


def test_the_build_arguments_are_the_ones_the_readme_documents():
    documented, declared = readme_build_args(), dockerfile_args()
    assert documented == declared
    for name, value in compose()["services"][USER_CODE]["build"]["args"].items():
        assert name in declared
        assert interpolate(value, {}) == declared[name], f"compose's default for {name} differs"
        assert env_example()[name] == declared[name], f".env.example's {name} differs"


def test_the_image_runs_the_code_server_as_a_non_root_user_with_a_health_check():
    found = dockerfile_instructions(final_stage())
    (user,) = found["USER"]
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    (health,) = found["HEALTHCHECK"]
    assert '"grpc-health-check", "-p", "4000"' in health
    (command,) = found["CMD"]
    command = json.loads(command)
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-p") + 1] == str(CODE_SERVER_PORT)
    assert command[command.index("-h") + 1] == "0.0.0.0"
    assert command[command.index("-m") + 1] == PYPROJECT["tool"]["dagster"]["module_name"]
    assert found["EXPOSE"] == [str(CODE_SERVER_PORT)]


def test_the_image_sets_the_contract_paths_and_holds_the_instance_files():
    stage = final_stage()
    env = env_values(stage)
    assert {key: env.get(key) for key in CONTRACT_ENV} == CONTRACT_ENV
    copies = dockerfile_instructions(stage)["COPY"]
    assert "docker/dagster.yaml docker/workspace.yaml $DAGSTER_HOME/" in copies
    for path in CONTRACT_VOLUMES.values():  # created in the image, owned by the user: a fresh volume is writable
        assert any(path in run and "chown" in run for run in dockerfile_instructions(stage)["RUN"])


def test_the_image_installs_the_deploy_extra_with_the_tested_versions():
    runs = " ".join(dockerfile_instructions(dockerfile_stages()[0])["RUN"])
    assert '--index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"' in runs
    assert '--constraint /tmp/constraints.txt "/opt/rm-pipeline[deploy]"' in runs


def test_the_deploy_extra_holds_the_libraries_the_instance_configs_name():
    deploy = {Requirement(line).name for line in PYPROJECT["project"]["optional-dependencies"]["deploy"]}
    assert {"dagster-postgres", "dagster-docker", "dagster-k8s"} <= deploy


def test_the_constraints_agree_with_the_versions_pyproject_pins():
    lines = (DOCKER / "constraints.txt").read_text().splitlines()
    constraints = {
        canonicalize_name(name): version
        for name, version in (line.split("==") for line in lines if line and not line.startswith("#"))
    }
    assert "torch" not in constraints and "rm-pipeline" not in constraints  # torch comes from TORCH_INDEX_URL
    declared = PYPROJECT["project"]["dependencies"] + [
        line for extra in PYPROJECT["project"]["optional-dependencies"].values() for line in extra
    ]
    project = canonicalize_name(PYPROJECT["project"]["name"])
    for requirement in (r for r in map(Requirement, declared) if canonicalize_name(r.name) != project):
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if pins:
            assert constraints.get(canonicalize_name(requirement.name)) == pins[0], requirement.name
        elif requirement.name != "torch":
            version = constraints[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(version), f"{requirement.name} {version}"


def test_every_file_the_image_copies_exists_and_is_in_the_build_context():
    allowed = [
        line[1:].rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line[:1] == "!"
    ]
    for stage in dockerfile_stages():
        for arguments in dockerfile_instructions(stage).get("COPY", []):
            if arguments.startswith("--from"):
                continue
            for source in arguments.split()[:-1]:
                assert (REPO_ROOT / source).exists(), source
                assert any(source == entry or source.startswith(entry + "/") for entry in allowed), source


# ------------------------------------------------------------------------------------------------- Kubernetes


def helm_values() -> dict:
    return yaml.safe_load((DOCKER / "k8s" / "values.yaml").read_text())


def user_deployment() -> dict:
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    return deployment


def test_the_helm_values_train_on_gpus_in_training_pods_only():
    env = {item["name"]: item["value"] for item in user_deployment()["env"]}
    assert env["RM_PIPELINE_TRAINING_LAUNCHER"] == "k8s"
    assert int(env["RM_PIPELINE_TRAINING_GPUS"]) >= 1
    assert env["RM_PIPELINE_K8S_NAMESPACE"]
    assert env["RM_PIPELINE_TRAINING_IMAGE"] == "{repository}:{tag}".format(**user_deployment()["image"])
    # the code server and the run pods ask for no GPU; run pods go to CPU nodes
    assert "nvidia.com/gpu" not in json.dumps(helm_values())
    launcher = helm_values()["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert launcher["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["nodeSelector"]


def test_the_helm_values_mount_the_contract_pvcs_in_the_code_server_and_its_runs():
    deployment = user_deployment()
    claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in deployment["volumes"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in deployment["volumeMounts"]}
    assert {claims[name]: path for name, path in mounts.items()} == CONTRACT_VOLUMES
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}  # run pods get the same volumes
    manifests = list(yaml.safe_load_all((DOCKER / "k8s" / "resources.yaml").read_text()))
    pvcs = {m["metadata"]["name"]: m["spec"] for m in manifests if m["kind"] == "PersistentVolumeClaim"}
    assert set(pvcs) == set(CONTRACT_VOLUMES)
    assert all(spec["accessModes"] == ["ReadWriteMany"] for spec in pvcs.values())
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert {key: env[key] for key in ("RM_PIPELINE_HOME", "RM_PIPELINE_ANNOTATIONS", "RM_PIPELINE_REVIEWS")} == {
        key: CONTRACT_ENV[key] for key in ("RM_PIPELINE_HOME", "RM_PIPELINE_ANNOTATIONS", "RM_PIPELINE_REVIEWS")
    }


def test_the_helm_values_run_the_code_server_and_the_instance_like_compose():
    from dagster_k8s import K8sRunLauncher

    values, deployment = helm_values(), user_deployment()
    args = deployment["codeServerArgs"]
    assert args[args.index("--module-name") + 1] == PYPROJECT["tool"]["dagster"]["module_name"]
    assert args[args.index("--location-name") + 1] == PYPROJECT["tool"]["dagster"]["code_location_name"]
    assert deployment["port"] == CODE_SERVER_PORT
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True
    assert values["global"]["dagsterHome"] == CONTRACT_ENV["DAGSTER_HOME"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"] is True and monitoring["maxResumeRunAttempts"] > 0
    assert K8sRunLauncher.supports_resume_run.fget(None)  # the launcher can resume what monitoring restarts
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["concurrency"] == {"enabled": True, "runs": {"maxConcurrentRuns": 1}, "pools": {"defaultLimit": 1}}
    assert dagster_yaml()["concurrency"] == {"runs": {"max_concurrent_runs": 1}, "pools": {"default_limit": 1}}
    assert values["telemetry"] == {"enabled": False}
    assert "postgresqlPassword" not in json.dumps(values)  # the password lives in a Kubernetes secret


# ---------------------------------------------------------------------------------------- pools, run locally


def test_a_local_run_takes_and_frees_a_pool_slot(tmp_path):
    """`rm-pipeline run` executes in process: the in-process executor claims the step's pool slot from the
    instance (SQLite keeps pool slots too) and frees it when the step ends, so a limit of 1 never blocks a
    lone local run; the instance `rm-pipeline run` creates sets no limit at all."""

    @dg.asset(pool="gpu_training")
    def trains() -> int:
        return 1

    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        assert dg.materialize([trains], instance=instance).success
        info = instance.event_log_storage.get_concurrency_info("gpu_training")
        assert (info.slot_count, info.claimed_slots, info.pending_steps) == (1, [], [])


# ----------------------------------------------------------------------------------- on a real PostgreSQL


@pytest.mark.servers
def test_the_instance_works_on_postgresql(postgres_server, tmp_path, monkeypatch):
    """docker/dagster.yaml on a real PostgreSQL: the upgrade step of docker/README.md (`dagster instance
    migrate`) runs, the instance comes up with the queued coordinator, DockerRunLauncher, run monitoring and a
    pool limit of 1, and an asset in the pool runs, taking its slot and giving it back."""
    database = postgres_server.create_database("deploy_config")
    environment = {
        "DAGSTER_POSTGRES_HOST": database["hostname"],
        "DAGSTER_POSTGRES_PORT": str(database["port"]),
        "DAGSTER_POSTGRES_USER": database["username"],
        "DAGSTER_POSTGRES_PASSWORD": database["password"],
        "DAGSTER_POSTGRES_DB": database["db_name"],
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    storage_root = CONTRACT_VOLUMES["rm-pipeline-storage"]
    (home / "dagster.yaml").write_text((DOCKER / "dagster.yaml").read_text().replace(storage_root, str(tmp_path)))
    migrate = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "instance", "migrate"],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr

    @dg.asset(pool="gpu_training")
    def trains() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher).__name__ == "DockerRunLauncher"
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 2
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert dg.materialize([trains], instance=instance).success
        info = instance.event_log_storage.get_concurrency_info("gpu_training")
        assert (info.slot_count, info.claimed_slots, info.pending_steps) == (1, [], [])
