"""Where the training worker runs, as a Dagster resource swapped per environment: a child process here, a
Docker container or a Kubernetes pod on a GPU. The worker and its Pipes messages (logs, metrics, the
materialisation) are the same whichever starts it. dagster-docker / dagster-k8s (the `deploy` extra) are
imported only by the launcher that uses them."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from typing import ClassVar

import dagster as dg
from pydantic import Field

from rm_pipeline.lib.environment import (
    K8S_NAMESPACE,
    RUN_PROCESS,
    TRAINING_GPUS,
    TRAINING_IMAGE,
    TRAINING_LAUNCHER,
    TRAINING_NETWORK,
    TRAINING_PROCESSES,
    EnvironmentVariable,
)
from rm_pipeline.lib.training.launch import (
    WORKER_ENVIRONMENT,
    check_storage_root,
    docker_container_kwargs,
    k8s_pod_spec,
    training_processes,
    worker_command,
)

LAUNCHER_VARIABLE = TRAINING_LAUNCHER.name
IMAGE_VARIABLE = TRAINING_IMAGE.name
GPUS_VARIABLE = TRAINING_GPUS.name
NETWORK_VARIABLE = TRAINING_NETWORK.name
PROCESSES_VARIABLE = TRAINING_PROCESSES.name
NAMESPACE_VARIABLE = K8S_NAMESPACE.name


class TrainingLauncherResource(dg.ConfigurableResource):
    """Starts the training worker (`python -m rm_pipeline.training_worker`) through Dagster Pipes;
    $RM_PIPELINE_TRAINING_LAUNCHER picks which launcher (`from_environment`)."""

    VARIABLES: ClassVar[dict[str, EnvironmentVariable]] = {"processes": TRAINING_PROCESSES}  # field -> its variable

    processes: int = Field(
        default=int(TRAINING_PROCESSES.default),
        ge=0,
        description="Training processes, data-parallel under accelerate (one per GPU; gloo on CPUs); 0: one per "
        f"GPU the worker gets. One machine only (${PROCESSES_VARIABLE}).",
    )

    def launch(
        self, context: dg.AssetExecutionContext, extras: dict, storage_root: str
    ) -> dg.PipesClientCompletedInvocation:
        """Run the worker to completion with `extras`; paths in them lie under `storage_root`."""
        raise NotImplementedError

    @staticmethod
    def from_environment(environ: Mapping[str, str] = os.environ) -> TrainingLauncherResource:
        """The launcher $RM_PIPELINE_TRAINING_LAUNCHER names (default subprocess), its settings from the
        environment variables of the deployment contract, each left at its default when unset."""
        name = TRAINING_LAUNCHER.get(environ)
        if name not in LAUNCHERS:
            raise ValueError(f"${LAUNCHER_VARIABLE} must be one of {', '.join(LAUNCHERS)}; got {name!r}")
        launcher = LAUNCHERS[name]
        values = {field: variable.get(environ) for field, variable in launcher.VARIABLES.items()}
        for count in ("gpus", "processes"):  # checked whole numbers (EnvironmentVariable.valid)
            if count in values:
                values[count] = int(values[count])
        return launcher(**values)


class TrainingWorkerFailed(RuntimeError):
    """The worker's own error, where Dagster Pipes would say only "External execution process failed"."""


PIPES_CLOSED_WITH_ERROR = "[pipes] external process pipes closed with exception"


@contextmanager
def worker_errors_named(context: dg.AssetExecutionContext):
    """A worker that failed raising (out of space, say) is reported with its error's first line."""
    try:
        yield
    except Exception as failure:  # Dagster's DagsterPipesExecutionError (not public) or a client's own
        events = context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        errors = [
            event.dagster_event.engine_event_data.error
            for event in events
            if event.user_message == PIPES_CLOSED_WITH_ERROR and event.dagster_event.engine_event_data.error
        ]
        if not errors:
            raise
        message = errors[-1].message.strip().splitlines()[0]
        raise TrainingWorkerFailed(f"the training worker failed: {message}") from failure


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class SubprocessTrainingLauncher(TrainingLauncherResource):
    """A child process of the run on this machine; several under accelerate, one per GPU it sees by default."""

    def command(self) -> list[str]:
        return worker_command(sys.executable, training_processes(self.processes, visible_gpus()))

    def launch(self, context, extras, storage_root):
        client = dg.PipesSubprocessClient(env={**WORKER_ENVIRONMENT, RUN_PROCESS.name: str(os.getpid())})
        with worker_errors_named(context):
            return client.run(context=context, command=self.command(), extras=extras)


class ContainerTrainingLauncher(TrainingLauncherResource):
    """What the Docker and Kubernetes launchers share: the image and the GPUs it gets."""

    image: str = Field(
        default=TRAINING_IMAGE.default,
        description=f"Image of the training container; the pipeline installed in it (${IMAGE_VARIABLE}).",
    )
    gpus: int = Field(
        default=int(TRAINING_GPUS.default),
        ge=0,
        description=f"NVIDIA GPUs the training container gets; more than one trains under accelerate (DDP), "
        f"0 trains on its CPUs (${GPUS_VARIABLE}).",
    )

    def command(self) -> list[str]:
        return worker_command("python", training_processes(self.processes, self.gpus))


class DockerTrainingLauncher(ContainerTrainingLauncher):
    """A container on the Docker engine the run talks to, with the shared volumes mounted."""

    VARIABLES: ClassVar[dict[str, EnvironmentVariable]] = {
        "image": TRAINING_IMAGE,
        "gpus": TRAINING_GPUS,
        "processes": TRAINING_PROCESSES,
        "network": TRAINING_NETWORK,
    }

    network: str = Field(
        default=TRAINING_NETWORK.default,
        description=f"Docker network of the training container; empty: Docker's default (${NETWORK_VARIABLE}).",
    )

    def launch(self, context, extras, storage_root):
        check_storage_root(storage_root)
        from dagster_docker import PipesDockerClient

        with worker_errors_named(context):
            return PipesDockerClient().run(
                context=context,
                image=self.image,
                command=self.command(),
                extras=extras,
                container_kwargs=docker_container_kwargs(self.gpus, self.network or None),
            )


class K8sTrainingLauncher(ContainerTrainingLauncher):
    """A pod in the cluster the run is in (or the kubeconfig's), with the shared PVCs mounted."""

    VARIABLES: ClassVar[dict[str, EnvironmentVariable]] = {
        "image": TRAINING_IMAGE,
        "gpus": TRAINING_GPUS,
        "processes": TRAINING_PROCESSES,
        "namespace": K8S_NAMESPACE,
    }

    namespace: str = Field(
        default=K8S_NAMESPACE.default, description=f"Namespace of the training pod (${NAMESPACE_VARIABLE})."
    )

    def launch(self, context, extras, storage_root):
        check_storage_root(storage_root)
        from dagster_k8s import PipesK8sClient

        with worker_errors_named(context):
            return PipesK8sClient().run(
                context=context,
                extras=extras,
                namespace=self.namespace,
                base_pod_spec=k8s_pod_spec(self.image, self.command(), self.gpus),
            )


LAUNCHERS: dict[str, type[TrainingLauncherResource]] = {
    "subprocess": SubprocessTrainingLauncher,
    "docker": DockerTrainingLauncher,
    "k8s": K8sTrainingLauncher,
}
