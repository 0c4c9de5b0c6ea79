"""The deployment image (docker/Dockerfile) built for the tests without pulling anything: the base image is
a Debian bookworm made here with `debootstrap` and imported, and pip installs from a package index served
on this machine's loopback from wheels `pip download` fetched with the host's own pip settings."""

import contextlib
import functools
import http.server
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
from docker.utils.build import exclude_paths
from packaging.utils import canonicalize_name, parse_wheel_filename

import docker
from rm_pipeline_tests.support.dagster_dev import HOST, REPO_ROOT

DOCKERFILE = "docker/Dockerfile"
# Imported once per machine and kept: a later session reuses it (`docker rmi` it to make it again).
BASE_IMAGE = "rm-pipeline-test-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the Dockerfile needs of its base: Python 3.11 as `python`, the venv module, groupadd/useradd.
BASE_PACKAGES = "python3,python3-venv,python-is-python3,passwd"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def docker_client() -> docker.DockerClient:
    """A client of the local Docker daemon; the test fails (never skips) when none answers."""
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as error:
        pytest.fail(
            f"no Docker daemon answers ({error}): install Debian's `docker.io` package and start `dockerd` "
            "(`.ci/run` does both when they are missing)"
        )
    return client


def base_image(client: docker.DockerClient) -> str:
    """A minimal Debian bookworm with Python 3.11, made with debootstrap and `docker import`ed as BASE_IMAGE."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        pytest.fail("no `debootstrap`: install Debian's `debootstrap` package (`.ci/run` installs it)")
    with tempfile.TemporaryDirectory(prefix="rm-pipeline-rootfs-") as folder:
        rootfs, archive = Path(folder) / "rootfs", Path(folder) / "rootfs.tar"
        command = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs)]
        done = subprocess.run([*command, DEBIAN_MIRROR], capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"debootstrap failed: {done.stderr[-3000:]}{done.stdout[-2000:]}")
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."], check=True)
        repository, tag = BASE_IMAGE.split(":")
        client.api.import_image_from_file(str(archive), repository, tag, changes=[f"ENV PATH={IMAGE_PATH}"])
    return BASE_IMAGE


def download_wheels(folder: Path, torch_version: str, build_requires: list[str]) -> None:
    """Every wheel the image installs, resolved as the Dockerfile resolves it (torch, then the package's `deploy`
    extra under docker/constraints.txt), plus its build backend, fetched with this machine's pip settings."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder), "--only-binary=:all:"]
    requirements = [f"torch=={torch_version}", f"{REPO_ROOT}[deploy]", *build_requires]
    done = subprocess.run(
        [*command, "--constraint", str(REPO_ROOT / "docker" / "constraints.txt"), *requirements],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        pytest.fail(f"pip download of the image's packages failed: {done.stderr[-3000:]}")


def write_simple_index(wheels: Path) -> None:
    """A PEP 503 index of the wheels in `wheels`, at `wheels/simple/`."""
    projects: dict[str, list[str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        projects.setdefault(canonicalize_name(parse_wheel_filename(wheel.name)[0]), []).append(wheel.name)
    for project, files in projects.items():
        page = wheels / "simple" / project / "index.html"
        page.parent.mkdir(parents=True)
        links = "".join(f'<a href="../../{name}">{name}</a><br>\n' for name in files)
        page.write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


@contextlib.contextmanager
def package_index(wheels: Path) -> Iterator[str]:
    """The wheels as a package index over HTTP on 127.0.0.1 (pip trusts plain HTTP on loopback); its URL."""
    write_simple_index(wheels)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), functools.partial(Quiet, directory=str(wheels)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def build_context(archive: Path) -> None:
    """The build context as BuildKit sends it: the repository root less what docker/Dockerfile.dockerignore
    leaves out. (The daemon's API builds with the classic builder, which reads only a root .dockerignore.)"""
    ignore = (REPO_ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.lstrip().startswith("#")]
    with tarfile.open(archive, "w") as tar:
        for path in sorted(exclude_paths(str(REPO_ROOT), patterns, dockerfile=DOCKERFILE)):
            tar.add(REPO_ROOT / path, arcname=path, recursive=False)


def build_image(client: docker.DockerClient, tag: str, build_args: dict[str, str], log_path: Path) -> float:
    """docker/Dockerfile built as `tag` with `build_args`, its RUN steps on the host's network (to reach the
    package index on loopback); the build's output goes to `log_path`. Returns the seconds it took."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rm-pipeline-context-") as folder:
        archive = Path(folder) / "context.tar"
        build_context(archive)
        with open(archive, "rb") as context, open(log_path, "w") as log:
            for chunk in client.api.build(
                fileobj=context,
                custom_context=True,
                dockerfile=DOCKERFILE,
                tag=tag,
                buildargs=build_args,
                network_mode="host",
                rm=True,
                forcerm=True,
                decode=True,
            ):
                log.write(chunk.get("stream", "") or (str(chunk) + "\n"))
                if "error" in chunk:
                    log.flush()
                    pytest.fail(f"docker build failed: {chunk['error']}\n{log_path.read_text()[-4000:]}")
    return time.monotonic() - started
