"""What starts the training worker: its command, and the container / pod that runs it on a GPU machine
(docker/ and the deployment contract of issue 11). Knows nothing of Dagster; `docker` is imported only
by the Docker spec."""

from __future__ import annotations

from dataclasses import dataclass

from rm_pipeline.lib.environment import ANNOTATIONS, HOME, REVIEWS

WORKER_MODULE = "rm_pipeline.training_worker"
# The child process neither forks tokenizer threads nor reaches the Hub (the base model is local).
WORKER_ENVIRONMENT = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


@dataclass(frozen=True)
class SharedVolume:
    """A Docker named volume / Kubernetes PVC, mounted at the same path in every container."""

    name: str
    path: str
    variable: str  # the environment variable that points the pipeline at `path`
    read_only: bool


# The deployment contract: the storage root is the same path everywhere, so paths handed to the worker hold.
STORAGE = SharedVolume("rm-pipeline-storage", "/data/rm_pipeline_home", HOME.name, read_only=False)
SHARED_VOLUMES = (
    STORAGE,
    SharedVolume("rm-pipeline-annotations", "/data/annotations", ANNOTATIONS.name, read_only=True),
    SharedVolume("rm-pipeline-reviews", "/data/reviews", REVIEWS.name, read_only=True),
)


def worker_command(python: str, gpus: int) -> list[str]:
    """The worker as a plain child process; under accelerate (DDP, one process per GPU) with several GPUs."""
    if gpus > 1:
        return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus)] + [
            "-m",
            WORKER_MODULE,
        ]
    return [python, "-m", WORKER_MODULE]


def container_environment() -> dict[str, str]:
    """The training container's environment: the shared folders at their contract paths, the worker's settings."""
    return {**{volume.variable: volume.path for volume in SHARED_VOLUMES}, **WORKER_ENVIRONMENT}


def check_storage_root(root: str) -> None:
    """A training container sees the storage root only at the contract path: any other root would hand the
    worker paths that don't exist in its container."""
    if root.rstrip("/") != STORAGE.path:
        raise ValueError(
            f"the storage root is {root}, but training containers mount {STORAGE.name} at {STORAGE.path}: "
            f"set ${STORAGE.variable}={STORAGE.path} where Dagster runs (the deployment contract)"
        )


def docker_container_kwargs(gpus: int, network: str | None) -> dict:
    """Arguments for docker's `containers.create` beyond image and command: the GPUs, the shared volumes,
    the environment and the network."""
    from docker.types import DeviceRequest, Mount

    kwargs: dict = {
        "environment": container_environment(),
        "healthcheck": {"test": ["NONE"]},  # the image's check probes the code server, which training doesn't run
        "mounts": [
            Mount(target=volume.path, source=volume.name, type="volume", read_only=volume.read_only)
            for volume in SHARED_VOLUMES
        ],
    }
    if gpus:
        kwargs["device_requests"] = [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    if network:
        kwargs["network"] = network
    return kwargs


def k8s_pod_spec(image: str, command: list[str], gpus: int) -> dict:
    """The training pod's spec (snake_case, as the kubernetes client names fields): one container on `gpus`
    NVIDIA GPUs, the three PVCs mounted."""
    container: dict = {
        "name": "rm-pipeline-training",
        "image": image,
        "command": command,
        "env": [{"name": name, "value": value} for name, value in container_environment().items()],
        "volume_mounts": [
            {"name": volume.name, "mount_path": volume.path, "read_only": volume.read_only} for volume in SHARED_VOLUMES
        ],
    }
    if gpus:
        container["resources"] = {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "containers": [container],
        "volumes": [
            {"name": volume.name, "persistent_volume_claim": {"claim_name": volume.name}} for volume in SHARED_VOLUMES
        ],
    }
