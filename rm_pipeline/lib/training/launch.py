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


def launch_command(python: str, processes: int, arguments: list[str]) -> list[str]:
    """`python <arguments>` as one process, or as `processes` data-parallel ones under `accelerate launch` (torchrun
    underneath: DDP, one process per GPU; gloo on CPUs, which is how the tests run it). One machine; the rendezvous
    port is a free one, so two trainings on a host don't collide."""
    if processes <= 1:
        return [python, *arguments]
    accelerate = [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    # the values accelerate would otherwise warn it defaulted; mixed precision is the Trainer's (bf16 setting)
    quiet = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*accelerate, *quiet, "--main_process_port", "0", *arguments]


def worker_command(python: str, processes: int) -> list[str]:
    """The training worker as `processes` processes (see `launch_command`)."""
    return launch_command(python, processes, ["-m", WORKER_MODULE])


def training_processes(processes: int, gpus: int) -> int:
    """How many processes train: `processes` if set (more than `gpus` when there are GPUs is refused: two
    processes on one GPU), else one per GPU, else one."""
    if processes and gpus and processes > gpus:
        raise ValueError(f"{processes} training processes on {gpus} GPUs: at most one process per GPU")
    return processes or max(gpus, 1)


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
