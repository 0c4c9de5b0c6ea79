"""Where the training worker runs: a child process, a Docker container or a Kubernetes pod on GPUs.

The container variants are checked on what dagster-docker / dagster-k8s would submit: the body of docker's
`POST /containers/create` and the V1Pod handed to `create_namespaced_pod`, built by their real clients from a
real run; only the engine / cluster at the end of the wire is replaced, since neither exists here."""

import os
import subprocess
import sys

import dagster as dg
import pytest
from dagster_pipes import decode_param

from rm_pipeline.definitions import build_defs
from rm_pipeline.lib.training.launch import WORKER_MODULE, training_processes, worker_command
from rm_pipeline.training_launcher import (
    DockerTrainingLauncher,
    K8sTrainingLauncher,
    SubprocessTrainingLauncher,
    TrainingLauncherResource,
)
from rm_pipeline_tests.conftest import REPO_ROOT

HOME = "/data/rm_pipeline_home"
EXTRAS = {"split_path": f"{HOME}/tables/preference_split.parquet", "models_dir": f"{HOME}/models"}
CONTRACT_ENVIRONMENT = {
    "RM_PIPELINE_HOME": HOME,
    "RM_PIPELINE_ANNOTATIONS": "/data/annotations",
    "RM_PIPELINE_REVIEWS": "/data/reviews",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}
VOLUMES = {
    "rm-pipeline-storage": HOME,
    "rm-pipeline-annotations": "/data/annotations",
    "rm-pipeline-reviews": "/data/reviews",
}
ACCELERATE = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
# the defaults accelerate would warn about, spelt out; a free rendezvous port
QUIET = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
ACCELERATE_2 = ["python", *ACCELERATE, "2", *QUIET, "-m", WORKER_MODULE]


class Submitted(Exception):
    """Raised where the request would have left for the Docker engine / the cluster."""


def launch_in_a_run(launcher: TrainingLauncherResource, storage_root: str = HOME) -> dg.ExecuteInProcessResult:
    @dg.asset
    def trainer(context: dg.AssetExecutionContext, training_launcher: TrainingLauncherResource):
        training_launcher.launch(context, extras=EXTRAS, storage_root=storage_root)

    return dg.materialize([trainer], resources={"training_launcher": launcher}, raise_on_error=False)


def check_pipes_bootstrap(environment: dict) -> None:
    """The worker finds its Pipes context (with our extras) and writes its messages to stderr, which the
    client reads from the container's / pod's logs."""
    assert decode_param(environment["DAGSTER_PIPES_CONTEXT"])["data"]["extras"] == EXTRAS
    assert decode_param(environment["DAGSTER_PIPES_MESSAGES"]) == {"stdio": "stderr"}


@pytest.fixture
def docker_engine(monkeypatch):
    """docker's real client (API 1.44) whose create request is kept instead of sent."""
    import docker

    submitted = []

    def from_env(*args, **kwargs):
        client = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.44")

        def post_json(url, data=None, **kwargs):
            submitted.append((url, data))
            raise Submitted(url)

        client.api._post_json = post_json
        return client

    monkeypatch.setattr(docker.client, "from_env", from_env)
    return submitted


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    """kubernetes' real client, configured by a kubeconfig, whose pod creation is kept instead of sent."""
    import kubernetes
    from kubernetes.config import kube_config

    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        "clusters: [{name: test, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: test, user: {token: test}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    submitted = []

    def create_namespaced_pod(self, namespace, body, **kwargs):
        submitted.append((namespace, kubernetes.client.ApiClient().sanitize_for_serialization(body)))
        raise Submitted(namespace)

    monkeypatch.setattr(kubernetes.client.CoreV1Api, "create_namespaced_pod", create_namespaced_pod)
    return submitted


def test_docker_launcher_creates_the_training_container_on_gpus_with_the_shared_volumes(docker_engine):
    launcher = DockerTrainingLauncher(image="registry.example/rm-pipeline:7", gpus=2, network="rm-pipeline-network")
    assert not launch_in_a_run(launcher).success
    [(url, body)] = docker_engine
    assert url.endswith("/containers/create")
    assert body["Image"] == "registry.example/rm-pipeline:7"
    assert body["Cmd"] == ACCELERATE_2  # one process per GPU, as the subprocess launcher does on a multi-GPU host
    host = body["HostConfig"]
    assert [(r["Count"], r["Capabilities"]) for r in host["DeviceRequests"]] == [(2, [["gpu"]])]
    assert {m["Source"]: m["Target"] for m in host["Mounts"]} == VOLUMES
    assert all(m["Type"] == "volume" for m in host["Mounts"])
    assert host["NetworkMode"] == "rm-pipeline-network"
    assert body["Healthcheck"]["Test"] == ["NONE"]  # not the image's code-server probe
    environment = dict(variable.split("=", 1) for variable in body["Env"])
    assert CONTRACT_ENVIRONMENT.items() <= environment.items()
    check_pipes_bootstrap(environment)


def test_docker_launcher_with_no_gpus_requests_none(docker_engine):
    assert not launch_in_a_run(DockerTrainingLauncher(gpus=0)).success
    [(_, body)] = docker_engine
    assert body["Image"] == "rm-pipeline-user-code:latest"
    assert body["Cmd"] == ["python", "-m", WORKER_MODULE]
    assert not body["HostConfig"].get("DeviceRequests")
    assert body["HostConfig"].get("NetworkMode") in (None, "default")  # no network named: Docker's default


def test_k8s_launcher_creates_the_training_pod_on_gpus_with_the_shared_claims(cluster):
    launcher = K8sTrainingLauncher(image="registry.example/rm-pipeline:7", gpus=2, namespace="ml-training")
    assert not launch_in_a_run(launcher).success
    [(namespace, pod)] = cluster
    assert namespace == "ml-training"
    [container] = pod["spec"]["containers"]
    assert container["image"] == "registry.example/rm-pipeline:7"
    assert container["command"] == ACCELERATE_2
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "2"}
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == VOLUMES
    assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]} == {
        name: name for name in VOLUMES
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    assert CONTRACT_ENVIRONMENT.items() <= environment.items()
    check_pipes_bootstrap(environment)


def test_k8s_launcher_with_no_gpus_requests_none(cluster):
    assert not launch_in_a_run(K8sTrainingLauncher(gpus=0)).success
    [(namespace, pod)] = cluster
    assert namespace == "dagster"
    [container] = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", WORKER_MODULE]
    assert "nvidia.com/gpu" not in str(container.get("resources"))


@pytest.mark.parametrize("launcher", [DockerTrainingLauncher(), K8sTrainingLauncher()], ids=["docker", "k8s"])
def test_a_container_launcher_refuses_a_storage_root_its_container_cannot_see(launcher, docker_engine, cluster):
    result = launch_in_a_run(launcher, storage_root="/home/me/.rm_pipeline_home")
    assert not result.success and not docker_engine and not cluster  # nothing submitted
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message
    assert "/home/me/.rm_pipeline_home" in message and f"RM_PIPELINE_HOME={HOME}" in message


def test_from_environment_picks_the_launcher_and_its_settings():
    assert isinstance(TrainingLauncherResource.from_environment({}), SubprocessTrainingLauncher)
    assert isinstance(
        TrainingLauncherResource.from_environment({"RM_PIPELINE_TRAINING_LAUNCHER": "subprocess"}),
        SubprocessTrainingLauncher,
    )
    docker = TrainingLauncherResource.from_environment(
        {
            "RM_PIPELINE_TRAINING_LAUNCHER": "docker",
            "RM_PIPELINE_TRAINING_IMAGE": "rm:2",
            "RM_PIPELINE_TRAINING_GPUS": "4",
            "RM_PIPELINE_TRAINING_NETWORK": "rm-pipeline-network",
        }
    )
    assert docker == DockerTrainingLauncher(image="rm:2", gpus=4, network="rm-pipeline-network")
    assert TrainingLauncherResource.from_environment(
        {"RM_PIPELINE_TRAINING_LAUNCHER": "docker", "RM_PIPELINE_TRAINING_PROCESSES": "2"}
    ) == DockerTrainingLauncher(processes=2)
    assert TrainingLauncherResource.from_environment(
        {"RM_PIPELINE_TRAINING_PROCESSES": " 2 "}
    ) == SubprocessTrainingLauncher(processes=2)
    k8s = TrainingLauncherResource.from_environment(
        {"RM_PIPELINE_TRAINING_LAUNCHER": " k8s ", "RM_PIPELINE_TRAINING_GPUS": "0", "RM_PIPELINE_K8S_NAMESPACE": "ml"}
    )
    assert k8s == K8sTrainingLauncher(gpus=0, namespace="ml")
    defaults = TrainingLauncherResource.from_environment({"RM_PIPELINE_TRAINING_LAUNCHER": "k8s"})
    assert (defaults.image, defaults.gpus, defaults.namespace) == ("rm-pipeline-user-code:latest", 1, "dagster")
    assert defaults.processes == 0  # one per GPU


@pytest.mark.parametrize(
    "environ, named",
    [
        (
            {"RM_PIPELINE_TRAINING_LAUNCHER": "kubernetes"},
            ["$RM_PIPELINE_TRAINING_LAUNCHER", "subprocess, docker, k8s"],
        ),
        (
            {"RM_PIPELINE_TRAINING_LAUNCHER": "docker", "RM_PIPELINE_TRAINING_GPUS": "-1"},
            ["$RM_PIPELINE_TRAINING_GPUS"],
        ),
        ({"RM_PIPELINE_TRAINING_LAUNCHER": "k8s", "RM_PIPELINE_TRAINING_GPUS": "two"}, ["$RM_PIPELINE_TRAINING_GPUS"]),
        ({"RM_PIPELINE_TRAINING_PROCESSES": "two"}, ["$RM_PIPELINE_TRAINING_PROCESSES", "a whole number"]),
    ],
    ids=["unknown-launcher", "negative-gpus", "gpus-in-words", "processes-in-words"],
)
def test_from_environment_rejects_a_bad_setting_naming_the_variable(environ, named):
    with pytest.raises(ValueError) as error:
        TrainingLauncherResource.from_environment(environ)
    for text in named:
        assert text in str(error.value)


def test_the_code_location_takes_its_launcher_from_the_environment(monkeypatch):
    assert isinstance(build_defs().resources["training_launcher"], SubprocessTrainingLauncher)
    monkeypatch.setenv("RM_PIPELINE_TRAINING_LAUNCHER", "docker")
    monkeypatch.setenv("RM_PIPELINE_TRAINING_GPUS", "2")
    assert build_defs().resources["training_launcher"] == DockerTrainingLauncher(gpus=2)


def test_the_worker_command_is_the_worker_alone_or_accelerate_with_several_processes():
    assert (
        worker_command(sys.executable, 0) == worker_command(sys.executable, 1) == [sys.executable, "-m", WORKER_MODULE]
    )
    assert worker_command("python", 2) == ACCELERATE_2
    assert worker_command("python", 8) == ["python", *ACCELERATE, "8", *QUIET, "-m", WORKER_MODULE]


@pytest.mark.parametrize(
    "processes, gpus, expected",
    [(0, 0, 1), (0, 1, 1), (0, 4, 4), (2, 0, 2), (2, 4, 2), (8, 8, 8)],
    ids=["cpu", "one-gpu", "one-per-gpu", "cpu-processes", "fewer-than-gpus", "eight-gpus"],
)
def test_training_processes_default_to_one_per_gpu(processes, gpus, expected):
    assert training_processes(processes, gpus) == expected


def test_more_processes_than_gpus_are_refused_in_one_line():
    with pytest.raises(ValueError, match="^3 training processes on 2 GPUs: at most one process per GPU$"):
        training_processes(3, 2)
    with pytest.raises(ValueError, match="3 training processes on 2 GPUs"):
        DockerTrainingLauncher(gpus=2, processes=3).command()


def test_each_launcher_starts_the_processes_it_is_set_to(monkeypatch):
    import rm_pipeline.training_launcher as training_launcher

    monkeypatch.setattr(training_launcher, "visible_gpus", lambda: 0)  # this machine's GPUs, whatever they are
    assert SubprocessTrainingLauncher().command() == [sys.executable, "-m", WORKER_MODULE]
    assert SubprocessTrainingLauncher(processes=2).command() == [sys.executable, *ACCELERATE_2[1:]]
    monkeypatch.setattr(training_launcher, "visible_gpus", lambda: 8)
    assert SubprocessTrainingLauncher().command()[1:] == [*ACCELERATE, "8", *QUIET, "-m", WORKER_MODULE]
    assert DockerTrainingLauncher(gpus=4, processes=2).command() == ACCELERATE_2
    assert K8sTrainingLauncher(gpus=2).command() == ACCELERATE_2
    assert K8sTrainingLauncher(gpus=0, processes=2).command() == ACCELERATE_2  # on the pod's CPUs


def test_the_default_launcher_needs_neither_docker_nor_kubernetes():
    """A plain install (no deploy extra) loads the code location and launches training as before."""
    blocked = ("docker", "dagster_docker", "kubernetes", "dagster_k8s")
    script = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # importing any of them now fails\n"
        "from rm_pipeline.definitions import build_defs\n"
        "from rm_pipeline.training_launcher import SubprocessTrainingLauncher\n"
        "defs = build_defs()\n"
        "assert isinstance(defs.resources['training_launcher'], SubprocessTrainingLauncher)\n"
        "defs.resolve_job_def('reward_pipeline_job')\n"
        f"loaded = [m for m in sys.modules if m.split('.')[0] in {blocked!r} and sys.modules[m] is not None]\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RM_PIPELINE_TRAINING")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
