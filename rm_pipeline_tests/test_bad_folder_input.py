"""Bad files and folders: what in the annotation, review and evaluation folders is read, what is skipped
and why, files too large or not regular, files rewritten while read. One row per case; add a row for each
new case (docs/bad-input.md, "Files and folders").
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from rm_pipeline.asset_outputs import log_skipped
from rm_pipeline.folder_sensors import build_annotation_folder_sensor
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.batch_folder import folder_files
from rm_pipeline.lib.evaluation.inputs import EvaluationFolder
from rm_pipeline.lib.reviews import read_reviews, review_files
from rm_pipeline.lib.table_files import MAX_FILE_BYTES, TIMESTAMP_TICK_NS, AnnotationFileError, read_batch_bytes
from rm_pipeline.resources import AnnotationSource
from rm_pipeline.stages.annotations import annotation_batches, annotation_folder
from rm_pipeline_tests.test_annotation_folder import SETTLED, settle
from rm_pipeline_tests.test_annotations import vote, write_jsonl
from rm_pipeline_tests.test_reviews import comparisons  # noqa: F401 (a fixture)


def link(target):
    return lambda folder, path: path.symlink_to(target(folder) if callable(target) else target)


def write(text: str):
    return lambda folder, path: path.write_text(text)


def outside_batch(folder: Path) -> Path:
    outside = folder.parent / f"{folder.name}-outside"
    outside.mkdir(exist_ok=True)
    return write_jsonl(outside / "batch.jsonl", [vote(item_id="outside")])


# entry name -> (how to make it, the reason it is skipped)
SKIPPED = {
    "link to /etc/passwd": ("passwd.jsonl", link("/etc/passwd"), "link_outside_folder"),
    "link to a batch outside the folder": ("theirs.jsonl", link(outside_batch), "link_outside_folder"),
    "link to /dev/zero": ("zero.jsonl", link("/dev/zero"), "link_outside_folder"),
    "link leaving through ..": (
        "up.jsonl",
        link(lambda f: (outside_batch(f), Path("..") / f"{f.name}-outside" / "batch.jsonl")[1]),
        "link_outside_folder",
    ),
    "dangling link": ("gone.jsonl", link("nowhere.jsonl"), "broken_link"),
    "FIFO": ("pipe.jsonl", lambda folder, path: os.mkfifo(path), "not_regular_file"),
    "Office lock file": ("~$batch.csv", write("\x05owner"), "lock_file"),
    "LibreOffice lock file": (".~lock.batch.csv#", write("owner,host"), "lock_file"),
    "hidden upload": (".uploading.jsonl", write(json.dumps(vote()) + "\n"), "temporary_name"),
    "partial upload": ("batch.jsonl.part", write(json.dumps(vote()) + "\n"), "temporary_name"),
    ".ndjson": ("batch.ndjson", write(json.dumps(vote()) + "\n"), "unsupported_type"),
    ".jsonl.gz": ("batch.jsonl.gz", write("\x1f\x8b"), "unsupported_type"),
    "README": ("README.md", write("# notes"), "documentation"),
    "notes without a suffix": ("NOTES", write("notes"), "unsupported_type"),
    "sub-folder": ("more", lambda folder, path: path.mkdir(), "folder"),
    "sub-folder named like a batch": ("sub.jsonl", lambda folder, path: path.mkdir(), "folder"),
}


@pytest.mark.parametrize("name, make, reason", list(SKIPPED.values()), ids=list(SKIPPED))
def test_what_is_not_a_batch_of_the_folder_is_skipped_with_its_reason(tmp_path, name, make, reason):
    folder = tmp_path / "annotations"
    folder.mkdir()
    good = write_jsonl(folder / "good.jsonl", [vote()])
    make(folder, folder / name)
    listing = folder_files(folder, settle_seconds=0)
    assert listing.ready == [good]
    assert [(row["file"], row["reason"]) for row in listing.skipped] == [(str(folder / name), reason)]
    assert all(row["detail"] for row in listing.skipped)
    assert read_annotations(listing.ready).votes["item_id"].tolist() == ["good/i1"]


def test_a_link_inside_the_folder_is_read(tmp_path):
    folder = tmp_path / "annotations"
    (folder / "vendor").mkdir(parents=True)
    write_jsonl(folder / "vendor" / "b.jsonl", [vote()])
    (folder / "b.jsonl").symlink_to(Path("vendor") / "b.jsonl")
    listing = folder_files(folder, settle_seconds=0)
    assert listing.ready == [folder / "b.jsonl"]
    assert [row["reason"] for row in listing.skipped] == ["folder"]


def test_a_folder_reached_through_a_link_reads_its_own_files(tmp_path):
    (tmp_path / "real").mkdir()
    good = write_jsonl(tmp_path / "real" / "good.jsonl", [vote()])
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "same.jsonl").symlink_to(good)  # absolute, through the real path
    listing = folder_files(tmp_path / "alias", settle_seconds=0)
    assert [p.name for p in listing.ready] == ["good.jsonl", "same.jsonl"] and not listing.skipped


def test_a_lock_file_in_the_review_folder_is_skipped(comparisons, tmp_path):  # noqa: F811
    folder = tmp_path / "reviews"
    folder.mkdir()
    row = {"item_id": "batch/i1", "review_decision": "a"}
    (folder / "review_queue.csv").write_text("item_id,review_decision\nbatch/i1,a\n")
    (folder / "~$review_queue.csv").write_bytes(b"\x0bJane Doe" + b"\x00" * 40)  # what Excel writes
    write_jsonl(folder / "late.jsonl", [row])
    listing = review_files(folder)
    assert [p.name for p in listing.ready] == ["late.jsonl", "review_queue.csv"] and not listing.busy
    assert [(Path(row["file"]).name, row["reason"]) for row in listing.skipped] == [("~$review_queue.csv", "lock_file")]
    assert read_reviews(listing.ready, comparisons).counts()["applied"] == 2


def test_the_evaluation_folder_skips_links_leaving_it_and_lock_files(tmp_path):
    root = tmp_path / "eval"
    (root / "fresh-policy").mkdir(parents=True)
    (root / "oasst").mkdir()
    pair = json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n"
    for path in (root / "bench.jsonl", root / "fresh-policy" / "labelled.jsonl", root / "oasst" / "trees.jsonl"):
        path.write_text(pair)
        settle(path)
    (root / "passwd.jsonl").symlink_to("/etc/passwd")
    (root / "fresh-policy" / "~$labelled.csv").write_text("\x05owner")
    (root / "oasst" / "zero.jsonl").symlink_to("/dev/zero")
    folder = EvaluationFolder(root, root / "alpaca-eval")
    assert folder.benchmark_files() == [root / "bench.jsonl"]
    assert folder.fresh_policy_files() == [root / "fresh-policy" / "labelled.jsonl"]
    assert folder.ranking_files() == [root / "oasst" / "trees.jsonl"]
    skipped = {Path(row["file"]).name: row["reason"] for row in folder.skipped_files()}
    assert skipped == {
        "passwd.jsonl": "link_outside_folder",
        "~$labelled.csv": "lock_file",
        "zero.jsonl": "link_outside_folder",
    }


# ---- reading one file: non-regular files and sizes are refused before any read


def test_a_file_over_the_maximum_size_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as out:  # sparse: costs no disk
        out.truncate(MAX_FILE_BYTES + 1)
    started = time.perf_counter()
    with pytest.raises(AnnotationFileError, match=f"larger than the {MAX_FILE_BYTES:,}-byte maximum"):
        read_batch_bytes(huge)
    assert time.perf_counter() - started < 1


def not_a_regular_file(path: Path, kind: str) -> Path:
    """`path` made a FIFO, a link to /dev/zero, a folder, or a sparse file one byte over MAX_FILE_BYTES."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        with path.open("wb") as out:
            out.truncate(MAX_FILE_BYTES + 1)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_a_file_that_is_not_regular_is_refused_before_it_is_read(tmp_path, kind):
    path = not_a_regular_file(tmp_path / "pairs.jsonl", kind)
    with pytest.raises(AnnotationFileError, match="not a regular file") as raised:
        read_batch_bytes(path)
    assert raised.value.path == str(path)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_a_batch_swapped_for_a_file_that_is_not_regular_is_neither_hashed_nor_waited_on(tmp_path, kind):
    """What the folder sensor and `rm-pipeline lineage` hash was a batch when listed or recorded; replaced since by
    a FIFO (whose open would wait for a writer) or a link to /dev/zero (endless), it is refused at once."""
    from rm_pipeline.lib.fingerprints import digest_batch_file
    from rm_pipeline.lib.lineage import file_sha256
    from rm_pipeline.lib.table_files import NotRegularFile

    def blocked(signum, frame):
        raise TimeoutError("still opening or reading after 10 s")

    path = not_a_regular_file(tmp_path / "batch.jsonl", kind)
    before = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(10)  # a blocked open fails the test instead of hanging it
    try:
        with pytest.raises(NotRegularFile, match="not a regular file"):
            digest_batch_file(path)
        assert file_sha256(path) is None  # lineage: not the file it recorded
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def _limit_memory():  # a reader of /dev/zero fails fast instead of taking the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def run_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rm_pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
    )


CLI_FILES = {
    "validate: link to /dev/zero": (["validate", "{path}"], "dev_zero", "not a regular file (a character device)"),
    "validate: FIFO": (["validate", "{path}"], "fifo", "not a regular file (a FIFO)"),
    "validate: over the maximum size": (["validate", "{path}"], "huge", "-byte maximum"),
    "evaluate --pairs: link to /dev/zero": (
        ["evaluate", "--model", "{model}", "--pairs", "{path}"],
        "dev_zero",
        "not a regular file (a character device)",
    ),
}


@pytest.mark.parametrize("argv, kind, message", list(CLI_FILES.values()), ids=list(CLI_FILES))
def test_the_commands_refuse_a_file_that_is_not_regular_or_too_large(tmp_path, tiny_encoder, argv, kind, message):
    path = not_a_regular_file(tmp_path / "pairs.jsonl", kind)
    done = run_cli(*[arg.format(path=path, model=tiny_encoder) for arg in argv])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"{path}: " in done.stderr and message in done.stderr


# ---- validate: the folder's rules, and the settle wait


def test_validate_reads_a_folder_by_the_folder_rules_and_names_what_it_skipped(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    settle(write_jsonl(folder / "good.jsonl", [vote(), vote(item_id="i2")]))
    (folder / "passwd.jsonl").symlink_to("/etc/passwd")
    (tmp_path / "~$votes.csv").write_text("\x05owner")  # a shell glob (*.csv) picks it up
    done = run_cli("validate", str(folder), str(tmp_path / "~$votes.csv"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rows_read"] == report["votes"] == 2
    assert [(row["file"], row["reason"]) for row in report["skipped"]] == [
        (str(folder / "passwd.jsonl"), "link_outside_folder"),
        (str(tmp_path / "~$votes.csv"), "lock_file"),
    ]
    assert f"{folder / 'passwd.jsonl'}: skipped: link_outside_folder" in done.stderr


WRITER = textwrap.dedent(
    """
    import sys, os, time
    path, stop, log, window, *versions = sys.argv[1:]
    contents = [open(v, "rb").read() for v in versions]
    i = 0
    while not os.path.exists(stop):
        started = time.time_ns()
        with open(path, "wb") as out:  # truncate, then write a page at a time: a rewrite in place
            data = contents[i % len(contents)]
            for start in range(0, len(data), 4096):
                out.write(data[start : start + 4096])
                out.flush()
        ended = time.time_ns()
        if ended - started > int(window):  # descheduled mid-rewrite: the half file may have lain still
            with open(log, "a") as out:
                out.write(f"{started} {ended}\\n")
        i += 1
    """
)


def rewritten_in_place(tmp_path: Path, versions: list[bytes]):
    """A batch file and a process rewriting it in place, in a loop, with each version in turn. It logs the
    rewrites slow enough for a half file to look settled (a busy machine descheduled the writer mid-rewrite)."""
    path, stop, log, names = tmp_path / "batch.jsonl", tmp_path / "stop", tmp_path / "slow", []
    for number, content in enumerate(versions):
        names.append(tmp_path / f"v{number}")
        names[-1].write_bytes(content)
    path.write_bytes(versions[0])
    log.write_text("")
    # still for the window less the file clock's lag (a kernel tick, 10 ms at most; half the window allowed)
    arguments = [str(path), str(stop), str(log), str(TIMESTAMP_TICK_NS // 2), *map(str, names)]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, *arguments])
    return path, stop, writer


def two_versions() -> list[bytes]:
    """Two batches of the same size, many pages long: a mixed read has no telltale length."""
    return [
        "".join(json.dumps(vote(item_id=f"{side}{n:05d}", annotator_id=side * 8)) + "\n" for n in range(300)).encode()
        for side in ("a", "b")
    ]


def test_a_batch_rewritten_in_place_is_never_read_half_and_half(tmp_path):
    """No read that overlaps a change is returned. A half-written file that lies still longer than the quiet
    window (the writer descheduled mid-rewrite on a busy machine) is at rest, not changing: that is the settle
    wait's case (test_validate_waits_...), so a wrong read is allowed only while the writer was that slow."""
    versions = two_versions()
    path, stop, writer = rewritten_in_place(tmp_path, versions)
    wrong, read, refused = [], 0, 0
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            started = time.time_ns()
            try:
                data = read_batch_bytes(path)
            except AnnotationFileError as error:
                assert "changed while being read" in str(error)
                refused += 1
                continue
            read += 1
            if data not in versions:
                wrong.append((started, time.time_ns()))
    finally:
        stop.touch()
        writer.wait(timeout=30)
    slow = [tuple(map(int, line.split())) for line in (tmp_path / "slow").read_text().splitlines()]
    unexplained = [(a, b) for a, b in wrong if not any(start <= b and end >= a for start, end in slow)]
    assert not unexplained, f"{len(unexplained)} of {read} reads returned a mix of two versions ({refused} refused)"
    assert refused > 0


def test_validate_waits_for_a_file_being_rewritten_and_leaves_it_out_named(tmp_path):
    versions = two_versions()
    path, stop, writer = rewritten_in_place(tmp_path, versions)
    done_path = settle(write_jsonl(tmp_path / "done.jsonl", [vote(item_id="done")]))
    try:
        done = run_cli("validate", str(done_path), str(path))
    finally:
        stop.touch()
        writer.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rows_read"] == 1 and report["votes"] == 1
    assert [(row["file"], row["reason"]) for row in report["skipped"]] == [(str(path), "still_being_written")]
    assert f"{path}: skipped: still_being_written" in done.stderr


# ---- the annotation stage and the folder sensor list what they skipped


def test_raw_annotations_and_the_sensor_list_every_skipped_file_with_its_reason(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    settle(write_jsonl(folder / "good.jsonl", [vote()]))
    (folder / "~$good.csv").write_text("\x05owner")
    (folder / "batch.ndjson").write_text(json.dumps(vote()) + "\n")
    expected = [
        {"file": str(folder / "batch.ndjson"), "reason": "unsupported_type"},
        {"file": str(folder / "~$good.csv"), "reason": "lock_file"},
    ]
    resources = {"annotation_source": AnnotationSource(directory=str(folder))}
    with dg.instance_for_test() as instance:
        sensor = build_annotation_folder_sensor(SETTLED)
        context = dg.build_sensor_context(instance=instance, resources=resources)
        (event,) = sensor(context).asset_events
        assert skipped_rows(event.metadata["skipped"]) == expected
        result = dg.materialize([annotation_folder, annotation_batches], instance=instance, resources=resources)
        metadata = result.asset_materializations_for_node("annotation_batches")[0].metadata
        assert skipped_rows(metadata["skipped"]) == expected
        assert metadata["rows_read"].value == 1


def skipped_rows(table) -> list[dict]:
    return [{"file": row.data["file"], "reason": row.data["reason"]} for row in table.value.records]


# ---- a reviewer's row showing only one side is checked against that side


ONE_SIDE = {
    "only response_a, unchanged": ({"response_a": "Paris"}, "a", None),
    "only response_a, changed": ({"response_a": "Marseille"}, None, ("changed_item", "response_a")),
    "only response_b, changed": ({"response_b": "Nice"}, None, ("changed_item", "response_b")),
    "only response_a, the other side": ({"response_a": "Lyon"}, "b", None),
    "response_b empty, response_a changed": (
        {"response_a": "Marseille", "response_b": ""},
        None,
        ("changed_item", "response_a"),
    ),
}


@pytest.mark.parametrize("shown, applied, quarantined", list(ONE_SIDE.values()), ids=list(ONE_SIDE))
def test_a_review_showing_one_side_is_checked_against_it(comparisons, tmp_path, shown, applied, quarantined):  # noqa: F811
    path = write_jsonl(tmp_path / "review.jsonl", [{"item_id": "batch/i4", "review_decision": "a", **shown}])
    result = read_reviews([path], comparisons)
    assert result.decisions["review_decision"].tolist() == ([applied] if applied else [])
    assert [(row.reason, row.field) for row in result.quarantine.itertuples()] == ([quarantined] if quarantined else [])


def test_a_readme_beside_the_batches_is_logged_quietly_and_a_file_not_read_is_not(tmp_path, caplog):
    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / "README.md").write_text("# where these batches come from")
    (folder / "batch.ndjson").write_text(json.dumps(vote()) + "\n")
    caplog.set_level(logging.DEBUG)
    log_skipped(logging.getLogger("rm_pipeline_tests"), folder_files(folder, settle_seconds=0).skipped)
    levels = {Path(record.message.split(":")[0]).name: record.levelname for record in caplog.records}
    assert levels == {"README.md": "DEBUG", "batch.ndjson": "INFO"}
