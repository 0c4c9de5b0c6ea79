"""A storage root that is wrong, broken or out of reach: one line naming it with a distinct exit status, never a
traceback; the root is the truth, whichever process touches it. One row per case; add a row for each new case.

Each CLI row: how to break a fresh root (a function of the root), the arguments (``{root}`` is the root, ``{tmp}``
the test's folder), the exit status expected (0, or 3: bad input) and a fragment its stderr (or stdout, for
0) must hold.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from rm_pipeline.lib import storage_lock
from rm_pipeline.lib.environment import TRAINING_PROCESSES
from rm_pipeline.lib.storage_lock import LOCK_FILE, hold_storage, peek
from rm_pipeline.training_worker import process_alive


def model(root: Path, name: str = "m1", **files) -> Path:
    folder = root / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in files.items():
        (folder / file.replace("_json", ".json")).write_text(text)
    return folder


def link(root: Path, name: str, target: str) -> None:
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / name).symlink_to(target)


def with_instance(root: Path) -> None:
    (root / "dagster").mkdir(parents=True, exist_ok=True)
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")


def dangling_current(root):
    model(root)
    link(root, "current", "gone")


def looping_current(root):
    model(root)
    link(root, "current", "loop")
    link(root, "loop", "current")


def two_links_in_a_loop(root):
    model(root)
    link(root, "a", "b")
    link(root, "b", "a")


def lock_is_a_folder(root):
    (root / LOCK_FILE).mkdir(parents=True)


def card_is_a_list(root):
    with_instance(root)
    model(root, lineage_json="[1, 2]")


PROMOTION_SHAPES = json.dumps({"status": "not_promoted", "reason": 7, "held_out": {"candidate": {"estimate": "x"}}})
CASES = {
    "models: a dangling models/current": (
        dangling_current,
        ["models", "--home", "{root}"],
        3,
        "current points at gone, which is not there (a dangling link)",
    ),
    "score: a dangling models/current": (
        dangling_current,
        ["score", "--home", "{root}", "--input", "{tmp}/in.jsonl"],
        3,
        "current points at gone, which is not there (a dangling link); give --model DIR",
    ),
    "lineage: a dangling models/current": (
        dangling_current,
        ["lineage", "--home", "{root}"],
        3,
        "current points at gone, which is not there (a dangling link)",
    ),
    "lineage: models/current in a symlink loop": (
        looping_current,
        ["lineage", "--home", "{root}"],
        3,
        "current is a symlink loop, not a model directory",
    ),
    "models: a symlink loop under models/": (
        two_links_in_a_loop,
        ["models", "--home", "{root}"],
        3,
        "models/a is a symlink loop, not a model directory",
    ),
    "models: promotion.json cut short": (
        lambda root: model(root, promotion_json='{"status": "prom'),
        ["models", "--home", "{root}"],
        0,
        "promotion.json: not a readable JSON file (JSONDecodeError: Unterminated string",
    ),
    "models: promotion.json of the wrong shapes": (
        lambda root: model(root, promotion_json=PROMOTION_SHAPES),
        ["models", "--home", "{root}"],
        0,
        "not promoted: 7",
    ),
    "models: readiness.json cut short": (
        lambda root: model(root, readiness_json='{"reward_model_ready": tr'),
        ["models", "--home", "{root}"],
        0,
        "readiness.json: not a readable JSON file (JSONDecodeError: Expecting value",
    ),
    "models: readiness.json a list": (
        lambda root: model(root, readiness_json="[true]"),
        ["models", "--home", "{root}"],
        0,
        "readiness.json: not a JSON file (a JSON object expected, not a list)",
    ),
    "lineage: --home mistyped": (
        lambda root: None,
        ["lineage", "--home", "{tmp}/mistyped"],
        3,
        "mistyped: no storage root there (nothing has run on it); check --home, $RM_PIPELINE_HOME",
    ),
    "lineage: a root without its Dagster instance": (
        lambda root: (model(root), link(root, "current", "m1")),
        ["lineage", "--home", "{root}"],
        3,
        "dagster: no Dagster instance there ($DAGSTER_HOME); nothing has run",
    ),
    "lineage: lineage.json a list": (
        card_is_a_list,
        ["lineage", "{root}/models/m1", "--home", "{root}"],
        3,
        "m1/lineage.json: not a lineage file (a JSON object expected, not a list)",
    ),
    "run: .run.lock is a folder": (
        lock_is_a_folder,
        ["run", "--home", "{root}"],
        3,
        f"{LOCK_FILE} is not a lock file (a folder or a link): remove it",
    ),
}
REQUIRED = {"score": ["--input", "{tmp}/in.jsonl"], "dpo-baseline": ["--base-model", "{tmp}/no-model"]}
for command in ("models", "lineage", "run", "score", "dpo-baseline"):
    CASES[f"{command}: --home a regular file"] = (
        lambda root: root.parent.joinpath("file").write_text("x"),
        [command, "--home", "{tmp}/file", *REQUIRED.get(command, [])],
        3,
        "file: not a folder, so not a storage root (--home, $RM_PIPELINE_HOME)",
    )


def clean_environment() -> dict:
    """The environment of a user who set neither variable: the root and its instance come from --home."""
    return {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "RM_PIPELINE_HOME")}


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "rm_pipeline.cli", *args],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=600,
    )


def run_cli_here(*args):
    """`run_cli` in this process (no interpreter to start): the refusals come before any work."""
    from unittest.mock import patch

    from rm_pipeline_tests.support.cli import rm_pipeline_here

    with patch.dict(os.environ, clear=True):
        os.environ.update(clean_environment())
        return rm_pipeline_here(*args)


@pytest.mark.parametrize("breaks, argv, status, message", list(CASES.values()), ids=list(CASES))
def test_a_broken_storage_root_is_named_in_one_line(breaks, argv, status, message, tmp_path):
    root = tmp_path / "home"
    breaks(root)
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "2+2?", "candidates": ["4", "5"]}) + "\n")
    done = run_cli_here(*[arg.format(root=root, tmp=tmp_path) for arg in argv])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == status, done.stderr[-3000:]
    if status == 0:
        assert message in done.stdout, done.stdout
    else:
        lines = done.stderr.strip().splitlines()  # one line per problem, each naming the command
        assert all(line.startswith(f"rm-pipeline {argv[0]}: ") for line in lines), done.stderr[-3000:]
        assert any(message in line for line in lines), done.stderr[-3000:]
    assert not (tmp_path / "mistyped").exists()  # a command that reads creates nothing


def test_models_lists_the_models_beside_a_broken_link(tmp_path):
    root = tmp_path / "home"
    dangling_current(root)
    done = run_cli_here("models", "--home", str(root))
    assert done.returncode == 3 and done.stdout.splitlines()[1].startswith("m1 ")


# ---------------------------------------------------------------- the lock file


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe not UTF-8", b"[1, 2]", b'"a string"', b"{not json", b"[" * 100_000],
    ids=["invalid UTF-8", "a JSON list", "a JSON string", "not JSON", "nested 100,000 deep"],
)
def test_a_stale_lock_file_of_foreign_content_names_no_holder_and_is_taken(content, tmp_path):
    (tmp_path / LOCK_FILE).write_bytes(content)
    assert peek(tmp_path) == (False, {})
    with hold_storage(tmp_path, run_id="r1") as previous:
        assert previous == {}
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "r1"
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == {}


def test_run_says_it_takes_a_lock_file_of_foreign_content_as_stale(tmp_path):
    root, folder = tmp_path / "home", tmp_path / "annotations"
    root.mkdir()
    (root / LOCK_FILE).write_bytes(b"\xff\xfe[1, 2]")
    folder.mkdir()
    vote = {"prompt": "2+2?", "response_a": "4", "response_b": "5", "annotator_id": "u1", "vote": "a"}
    rows = [json.dumps({**vote, "item_id": f"i{n}"}) for n in range(3)] + ["{broken"] * 7
    (folder / "bad.jsonl").write_text("\n".join(rows) + "\n")  # stops at its gate: quick
    done = run_cli("run", "--home", str(root), "--annotations", str(folder))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"rm-pipeline: {root / LOCK_FILE} names no run (not a JSON object): taken as stale" in done.stderr
    assert json.loads((root / LOCK_FILE).read_text()) == {}  # taken, then released


# ---------------------------------------------------------------- a read-only root


def read_only(root: Path, *argv: str) -> subprocess.CompletedProcess:
    """The command with `root` mounted read-only (a mount namespace of its own: root's own rights ignore modes)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    command = ["unshare", "-rm", "sh", "-c", script, str(root), sys.executable, "-m", "rm_pipeline.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=clean_environment(), timeout=600)


@pytest.mark.parametrize("command", ["run", "lineage"])
def test_a_read_only_root_is_named_in_one_line(command, tmp_path):
    root = tmp_path / "home"
    with_instance(root)
    model(root)
    link(root, "current", "m1")
    with dg.DagsterInstance.from_config(str(root / "dagster")):
        pass  # its storage made, as after a run
    done = read_only(root, command, "--home", str(root))
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 3, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rm-pipeline {command}: ") and str(root) in lines[0], lines


# ---------------------------------------------------------------- a root copied or moved elsewhere


@dg.asset(name="preference_split")
def fake_split() -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion("split-v1"))


def test_a_copied_storage_root_keeps_its_lineage(tmp_path):
    """The instance records absolute model paths; read against the root they are found again after a move."""
    first = tmp_path / "first"
    with_instance(first)
    trained = model(first, "m1")
    link(first, "current", "m1")

    @dg.asset(name="reward_model", deps=[fake_split])
    def fake_model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"model_path": dg.MetadataValue.path(str(trained))})

    with dg.DagsterInstance.from_config(str(first / "dagster")) as instance:
        assert dg.materialize([fake_split, fake_model], instance=instance).success
    assert run_cli("lineage", "--home", str(first), "--json").returncode == 0

    moved = tmp_path / "moved"
    shutil.copytree(first, moved, symlinks=True)
    shutil.rmtree(first)
    done = run_cli("lineage", "--home", str(moved), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["model_path"] == str(moved / "models" / "m1")
    assert [stage["asset"] for stage in report["chain"]] == ["reward_model", "preference_split"]
    assert report["chain"][1]["data_version"] == "split-v1"


# ---------------------------------------------------------------- the root's own Dagster instance


def materialize(root: Path, annotations: Path, dagster_home: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    """`dagster asset materialize` as the README shows it, with or without DAGSTER_HOME."""
    env = {**clean_environment(), "RM_PIPELINE_HOME": str(root), "RM_PIPELINE_ANNOTATIONS": str(annotations)}
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    command = ["asset", "materialize", "-m", "rm_pipeline.definitions", "--select", "raw_annotations"]
    return subprocess.run(
        [sys.executable, "-m", "dagster", *command[:-1], command[-1] + ",annotation_quarantine"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_a_run_from_another_instance_than_the_roots_is_refused(annotations_slice, tmp_path):
    root, own = tmp_path / "home", tmp_path / "home" / "dagster"
    with_instance(root)
    first = materialize(root, annotations_slice, own, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    claim = json.loads((root / storage_lock.INSTANCE_FILE).read_text())
    assert claim["dagster_home"] == str(own)
    published = (root / "tables" / "annotation_quarantine.parquet").stat().st_mtime_ns

    other = tmp_path / "other"
    with_instance(other)
    for dagster_home in (None, other):  # DAGSTER_HOME unset: Dagster's temporary instance
        refused = materialize(root, annotations_slice, dagster_home, tmp_path)
        assert refused.returncode != 0
        assert f"storage root {root} belongs to the Dagster instance at {own}" in refused.stderr
        assert f"set DAGSTER_HOME={own}" in refused.stderr
    assert (root / "tables" / "annotation_quarantine.parquet").stat().st_mtime_ns == published

    again = materialize(root, annotations_slice, own, tmp_path)  # its own instance, from anywhere
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_throwaway_instance_claims_nothing(annotations_slice, tmp_path):
    root = tmp_path / "home"
    done = materialize(root, annotations_slice, None, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (root / storage_lock.INSTANCE_FILE).exists()


BAD_CLAIMS = {
    "cut short": ('{"instance_id": "ab', "not a readable claim (JSONDecodeError:"),
    "a list": ('["ab"]', "not a claim (a JSON object expected, not a list)"),
    "no instance_id": ('{"dagster_home": "/x"}', "names no instance_id"),
    "not UTF-8": (b'{"instance_id": "\xff"}', "not a readable claim (UnicodeDecodeError:"),
}


@pytest.mark.parametrize("content, message", list(BAD_CLAIMS.values()), ids=list(BAD_CLAIMS))
def test_an_unreadable_claim_refuses_the_run_in_one_line_and_is_left_as_it_was(content, message, tmp_path):
    path = tmp_path / storage_lock.INSTANCE_FILE
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    with pytest.raises(storage_lock.ForeignInstance) as refused:
        storage_lock.check_instance(tmp_path, str(tmp_path / "dagster"), lambda create: "this-instance", False)
    text = str(refused.value)
    assert str(path) in text and message in text and "restore it, or remove it" in text and "\n" not in text
    assert path.read_bytes() == before  # a damaged claim is the user's to mend: nothing overwrites it


# ---------------------------------------------------------------- files written, rows read


def test_every_file_of_a_saved_model_has_the_same_mode(tiny_encoder, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rm_pipeline.lib.training.publish import save_model_directory
    from rm_pipeline.lib.training.settings import TrainingSettings

    directory = tmp_path / "model"
    save_model_directory(
        directory,
        AutoModelForSequenceClassification.from_pretrained(tiny_encoder),
        AutoTokenizer.from_pretrained(tiny_encoder),
        TrainingSettings(base_model=tiny_encoder),
        {"reward_mean": 0.0, "reward_std": 1.0},
        [],
        {},
    )
    umask = os.umask(0)
    os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~umask
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_rewardbench2_row_over_the_answer_limit_is_quarantined_unexpanded(tmp_path):
    from rm_pipeline.lib.evaluation.pair_files import read_pair_file
    from rm_pipeline.lib.evaluation.rewardbench2 import MAX_ANSWERS_PER_ROW

    many = [f"answer {i}" for i in range(300)]
    rows = [
        {"id": "1", "prompt": "p", "subset": "Focus", "chosen": ["good"], "rejected": ["bad", "worse", "worst"]},
        {"id": "2", "prompt": "q", "subset": "Focus", "chosen": many, "rejected": [f"no {i}" for i in range(300)]},
    ]
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs, quarantine = read_pair_file(path)
    assert len(pairs) == 3 and set(pairs["line"]) == {1}
    (bad,) = quarantine.itertuples()
    assert (bad.line, bad.reason) == (2, "too_many_answers")
    assert f"300 chosen + 300 rejected answers, over the {MAX_ANSWERS_PER_ROW} a row may hold" in bad.detail
    assert "90000 pairs" in bad.detail


# ---------------------------------------------------------------- training: a killed run, a full disk


def children(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def is_worker(pid: int) -> bool:
    try:
        return b"rm_pipeline.training_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


KILLED_WHILE = {  # (training processes, seconds from the worker's start to the kill)
    "importing": (1, 0),  # before its imports end: its parent-watch must already be set
    "training under accelerate": (2, 3),  # the workers' parent is accelerate, which outlives the run
}


@pytest.mark.trains
@pytest.mark.parametrize("processes, after", list(KILLED_WHILE.values()), ids=list(KILLED_WHILE))
def test_sigkill_to_run_kills_the_training_workers(processes, after, annotations_slice, tiny_encoder, tmp_path):
    root = tmp_path / "home"
    slow = tmp_path / "slow.yaml"
    slow.write_text("ops:\n  reward_model:\n    config:\n      epochs: 50\n")
    run = subprocess.Popen(
        [sys.executable, "-m", "rm_pipeline.cli", "run", "--home", str(root), "--annotations", str(annotations_slice)]
        + ["--base-model", tiny_encoder, "--config", str(slow)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**clean_environment(), TRAINING_PROCESSES.name: str(processes)},
    )
    workers = []
    try:
        deadline = time.time() + 300
        while len(workers := [pid for pid in children(run.pid) if is_worker(pid)]) < processes + (processes > 1):
            assert run.poll() is None and time.time() < deadline, f"training never started: {workers}"
            time.sleep(0.05)
        time.sleep(after)
        run.send_signal(signal.SIGKILL)
        run.wait()
        deadline = time.time() + 30
        while any(map(process_alive, workers)) and time.time() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if process_alive(pid)], "a training process outlived its run"
    finally:
        run.kill()
        for pid in workers:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not [path for path in (root / "models").iterdir() if not path.name.startswith(".")]


@pytest.mark.trains
def test_a_full_disk_during_training_is_said_with_where(annotations_slice, tiny_encoder, tmp_path):
    """The models folder is a 64 KiB tmpfs (mounted in a namespace of the run's own): the model can't be written."""
    root = tmp_path / "home"
    (root / "models").mkdir(parents=True)
    script = 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"'
    argv = ["run", "--home", str(root), "--annotations", str(annotations_slice), "--base-model", tiny_encoder]
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(root / "models"), sys.executable, "-m", "rm_pipeline.cli", *argv],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=900,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("step reward_model failed: ")]
    assert "the training worker failed: OSError: [Errno 28] No space left on device" in line, line
    assert f"writing the model under {root / 'models'} (" in line and "bytes free there now" in line, line
