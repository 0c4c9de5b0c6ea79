"""A non-editable install works: the wheel carries the bundled data, and `rm-pipeline validate` reads it.

Network-free: the wheel is built with this environment's setuptools, and the fresh venv sees the dependencies
already installed here through a .pth line (the parent's .pth files, its editable install's among them, are
not processed through such a line, so only the wheel's rm_pipeline is importable)."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from rm_pipeline_tests.conftest import REPO_ROOT

pytestmark = pytest.mark.install

WHERE_IS_THE_DATA = (
    "import json, rm_pipeline; from rm_pipeline.lib.locations import default_annotations_dir; "
    "print(json.dumps({'package': rm_pipeline.__file__, 'annotations': str(default_annotations_dir())}))"
)


def run(command: list, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources, so that the build leaves nothing in the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "rm_pipeline", source / "rm_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    run([*pip_wheel, "--wheel-dir", str(wheels), str(source)], cwd=tmp_path)
    [wheel] = wheels.glob("rm_pipeline-*.whl")
    return wheel


def fresh_venv(tmp_path: Path) -> Path:
    """A venv without pip, whose site-packages also reads this environment's (the dependencies, not rm_pipeline)."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site_packages = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path)
    (Path(site_packages.strip()) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def test_the_wheel_installs_with_its_data_and_validate_reads_the_default_folder(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    run([*pip, str(wheel)], cwd=tmp_path)

    work = tmp_path / "work"  # a working directory with no checkout in it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RM_PIPELINE_")}
    env["RM_PIPELINE_HOME"] = str(work / "home")
    found = json.loads(run([str(python), "-c", WHERE_IS_THE_DATA], cwd=work, env=env))
    assert Path(found["package"]).is_relative_to(venv), found
    annotations = Path(found["annotations"])
    assert annotations.is_relative_to(venv) and annotations.is_dir(), found
    bundled = REPO_ROOT / "rm_pipeline" / "data"
    shipped = annotations.parent
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()) == sorted(
        p.relative_to(bundled) for p in bundled.rglob("*") if p.is_file()
    )  # every bundled file: annotations, evaluation files, reviews, licenses and their READMEs
    batches = sorted(annotations.glob("*.jsonl"))

    counts = json.loads(run([str(venv / "bin" / "rm-pipeline"), "validate", *map(str, batches)], cwd=work, env=env))
    assert counts["rows_read"] > 0 and counts["pairs_kept"] > 0, counts
    assert not (work / "home").exists()  # validate stores nothing
