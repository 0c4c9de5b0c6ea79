"""The annotation folder as a source asset: its fingerprint, and the sensor reporting new versions."""

import hashlib
import json
import os
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.definitions.data_version import StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver  # what the UI's "stale" badge uses

from rm_pipeline.folder_sensors import build_annotation_folder_sensor, record_folder_versions
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.automation import INTERVAL_VARIABLE, FolderWatchSettings
from rm_pipeline.lib.fingerprints import digest_batch_file, fingerprint_folder
from rm_pipeline.lib.table_files import AnnotationFileError
from rm_pipeline.resources import AnnotationSource
from rm_pipeline.stages.annotations import annotation_batches, annotation_folder
from rm_pipeline_tests.test_annotations import vote, write_jsonl

SETTLED = FolderWatchSettings(settle_seconds=0)  # files written by a test are complete at once


def settle(path: Path, age_seconds: float = 60) -> Path:
    """Give a file an mtime in the past, as if written a while ago."""
    past = time.time_ns() - int(age_seconds * 1e9)
    os.utime(path, ns=(past, past))
    return path


def write_batch(folder: Path, name: str, voters: list[str]) -> Path:
    return write_jsonl(folder / name, [vote(item_id=f"{name}-{v}", annotator_id=v) for v in voters])


class Sensor:
    """The sensor ticking on one instance, its cursor carried from tick to tick as the daemon does."""

    def __init__(self, instance, folder: Path, settings: FolderWatchSettings = SETTLED):
        self.instance, self.folder, self.cursor = instance, folder, None
        self.sensor = build_annotation_folder_sensor(settings)

    def tick(self):
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={"annotation_source": AnnotationSource(directory=str(self.folder))},
        )
        result = self.sensor(context)
        if isinstance(result, dg.SensorResult):
            self.cursor = result.cursor or self.cursor
            for event in result.asset_events:  # what the sensor daemon does with them
                self.instance.report_runless_asset_event(event)
        return result


def new_version(result) -> dg.AssetMaterialization:
    assert isinstance(result, dg.SensorResult) and not result.skip_reason, result
    (event,) = result.asset_events
    assert event.asset_key == dg.AssetKey("annotation_folder")
    return event


def changes(event: dg.AssetMaterialization) -> dict:
    return {name: event.metadata[name].value for name in ("added", "changed", "removed")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_batch_is_listed_with_its_sha256_and_the_rows_the_reader_reads(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [vote(annotator_id="x"), "", "   ", vote(annotator_id="y")])
    jsonl.write_bytes(b"\xef\xbb\xbf" + jsonl.read_bytes() + b'{"no newline at the end": 1}')
    csv = tmp_path / "b.csv"
    csv.write_text('item_id,prompt,response_a,response_b,annotator_id,vote\n\ni2,p,"two\nlines",r,v,a\ni3,p,r,s,v,b\n')
    (tmp_path / "c.json").write_text(json.dumps([vote(item_id="j1"), vote(item_id="j2"), vote(item_id="j3")]))
    pd.DataFrame([vote(item_id="q1"), vote(item_id="q2")]).to_parquet(tmp_path / "d.parquet")
    for temporary in (".e.jsonl", "f.jsonl.tmp", "g.jsonl.part", "README.md"):
        (tmp_path / temporary).write_text(json.dumps(vote()) + "\n")

    look = fingerprint_folder(tmp_path, settle_seconds=0)

    batches = read_annotations(sorted(tmp_path.glob("[a-d].*"))).batches
    assert sorted(look.state) == ["a.jsonl", "b.csv", "c.json", "d.parquet"]  # temporary names ignored
    assert look.added == sorted(look.state) and look.changed == [] and look.removed == []
    for path, rows_read, read_sha256 in zip(batches["file"], batches["rows_read"], batches["sha256"]):
        entry = look.state[Path(path).name]
        assert (entry["sha256"], entry["rows"]) == (sha256(Path(path)), rows_read) == (read_sha256, rows_read)
        assert entry["size"] == Path(path).stat().st_size
    assert [look.state[name]["rows"] for name in sorted(look.state)] == [3, 2, 3, 2]


def test_rows_of_a_file_that_does_not_parse_are_unknown_but_its_hash_is_not(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert digest_batch_file(broken) == (sha256(broken), None)
    (tmp_path / "broken.json").write_text('[{"a": 1}, {"b"')
    assert digest_batch_file(tmp_path / "broken.json") == (sha256(tmp_path / "broken.json"), None)


def test_an_unchanged_folder_is_not_read_again(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        settle(write_batch(tmp_path, name, ["x", "y"]))
    reads = []

    def counting_digest(path):
        reads.append(path.name)
        return digest_batch_file(path)

    first = fingerprint_folder(tmp_path, digest=counting_digest)
    again = fingerprint_folder(tmp_path, first.state, digest=counting_digest)

    assert reads == ["a.jsonl", "b.jsonl"]  # the second look read nothing
    assert again.hashed == [] and again.state == first.state and again.version == first.version
    assert again.changes == {"added": [], "changed": [], "removed": []}


def test_a_touched_file_is_hashed_again_and_reported_only_if_its_content_changed(tmp_path):
    path = settle(write_batch(tmp_path, "a.jsonl", ["x"]))
    first = fingerprint_folder(tmp_path)
    settle(path, age_seconds=30)  # new mtime, same bytes
    touched = fingerprint_folder(tmp_path, first.state)
    assert touched.hashed == ["a.jsonl"] and touched.version == first.version and touched.changed == []


def test_a_batch_replaced_with_the_same_size_and_mtime_is_still_seen(tmp_path):
    """A writer renames a new file into place and restores the old mtime (rsync -t, cp -p): new inode."""
    path = settle(write_batch(tmp_path, "a.jsonl", ["x"]))
    first = fingerprint_folder(tmp_path)
    replacement = write_jsonl(tmp_path / ".a.jsonl", [vote(item_id="a.jsonl-y", annotator_id="y")])  # same length
    stat = path.stat()
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(path)
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert [c["file"] for c in fingerprint_folder(tmp_path, first.state).changed] == ["a.jsonl"]


def test_a_file_still_being_written_is_left_for_the_next_look(tmp_path):
    write_batch(tmp_path, "fresh.jsonl", ["x"])  # modified just now
    look = fingerprint_folder(tmp_path, settle_seconds=60)
    assert look.pending == ["fresh.jsonl"] and look.state == {}
    settle(tmp_path / "fresh.jsonl", age_seconds=120)
    assert fingerprint_folder(tmp_path, look.state, settle_seconds=60).added == ["fresh.jsonl"]


def test_a_batch_being_rewritten_keeps_its_last_version_until_it_settles(tmp_path):
    path = settle(write_batch(tmp_path, "a.jsonl", ["x"]))
    first = fingerprint_folder(tmp_path, settle_seconds=60)

    def digest_while_appended(target):
        digested = digest_batch_file(target)
        with open(target, "a") as file:  # the writer goes on while we hash
            file.write(json.dumps(vote(annotator_id="late")) + "\n")
        settle(target)
        return digested

    settle(write_batch(tmp_path, "a.jsonl", ["x", "y"]))
    during = fingerprint_folder(tmp_path, first.state, settle_seconds=60, digest=digest_while_appended)
    assert during.pending == ["a.jsonl"] and during.state == first.state and during.version == first.version
    write_batch(tmp_path, "a.jsonl", ["x", "y", "z"])  # modified just now
    young = fingerprint_folder(tmp_path, first.state, settle_seconds=60)
    assert young.pending == ["a.jsonl"] and young.state == first.state and young.changed == []
    settle(path)
    assert [c["file"] for c in fingerprint_folder(tmp_path, first.state, settle_seconds=60).changed] == ["a.jsonl"]


def test_the_sensor_reports_new_changed_and_removed_batches_and_nothing_when_unchanged(tmp_path):
    write_batch(tmp_path, "a.jsonl", ["x", "y"])
    write_batch(tmp_path, "b.jsonl", ["x"])
    with dg.instance_for_test() as instance:
        sensor = Sensor(instance, tmp_path)
        first = new_version(sensor.tick())
        assert changes(first) == {"added": ["a.jsonl", "b.jsonl"], "changed": [], "removed": []}
        batches = {row.data["file"]: row.data for row in first.metadata["batches"].value.records}
        assert batches["a.jsonl"]["rows"] == 2 and batches["a.jsonl"]["sha256"] == sha256(tmp_path / "a.jsonl")
        assert first.metadata["rows"].value == 3

        unchanged = sensor.tick()
        assert isinstance(unchanged, dg.SkipReason) and unchanged.skip_message == "annotation_folder unchanged"

        write_batch(tmp_path, "c.jsonl", ["z"])
        assert changes(new_version(sensor.tick())) == {"added": ["c.jsonl"], "changed": [], "removed": []}

        old = sha256(tmp_path / "a.jsonl")
        write_batch(tmp_path, "a.jsonl", ["x", "y", "z"])  # a new version of batch a, not a silent overwrite
        changed = new_version(sensor.tick())
        assert changes(changed) == {
            "added": [],
            "changed": [{"file": "a.jsonl", "old_sha256": old, "new_sha256": sha256(tmp_path / "a.jsonl")}],
            "removed": [],
        }

        (tmp_path / "b.jsonl").unlink()
        removed = new_version(sensor.tick())
        assert changes(removed) == {"added": [], "changed": [], "removed": ["b.jsonl"]}
        assert sorted(row.data["file"] for row in removed.metadata["batches"].value.records) == ["a.jsonl", "c.jsonl"]

        (tmp_path / ".d.jsonl").write_text(json.dumps(vote()) + "\n")  # a writer's temporary name
        assert isinstance(sensor.tick(), dg.SkipReason)

        versions = [record.asset_materialization.tags["dagster/data_version"] for record in _versions(instance)]
        assert len(versions) == len(set(versions)) == 4  # one new data version per change, none when unchanged


def test_a_first_tick_reports_nothing_the_instance_already_holds(tmp_path):
    """A new UI on a root `rm-pipeline run` used: its sensor's first tick must not set the stages running again."""
    write_batch(tmp_path, "a.jsonl", ["x", "y"])
    with dg.instance_for_test() as instance:
        assert record_folder_versions(instance, str(tmp_path), str(tmp_path / "no_reviews")) == ["annotation_folder"]
        sensor = Sensor(instance, tmp_path)
        first = sensor.tick()
        assert isinstance(first, dg.SensorResult) and first.skip_reason and not first.asset_events
        assert sensor.cursor  # the folder is known from now on: its files are not hashed again
        assert isinstance(sensor.tick(), dg.SkipReason) and len(_versions(instance)) == 1
        write_batch(tmp_path, "b.jsonl", ["z"])
        assert changes(new_version(sensor.tick())) == {"added": ["b.jsonl"], "changed": [], "removed": []}


def test_a_touched_file_updates_the_cursor_without_a_new_version(tmp_path):
    path = settle(write_batch(tmp_path, "a.jsonl", ["x"]))
    with dg.instance_for_test() as instance:
        sensor = Sensor(instance, tmp_path)
        new_version(sensor.tick())
        settle(path, age_seconds=30)
        touched = sensor.tick()
        assert isinstance(touched, dg.SensorResult) and touched.skip_reason and not touched.asset_events
        assert json.loads(touched.cursor)["files"]["a.jsonl"]["mtime_ns"] == path.stat().st_mtime_ns
        assert isinstance(sensor.tick(), dg.SkipReason)
        assert len(_versions(instance)) == 1


def test_a_new_folder_version_makes_raw_annotations_stale(tmp_path):
    write_batch(tmp_path, "a.jsonl", ["x", "y"])
    resources = {"annotation_source": AnnotationSource(directory=str(tmp_path))}
    raw = dg.AssetKey("raw_annotations")

    def status(instance):
        return get_stale_status_resolver(
            instance, [dg.AssetsDefinition(specs=[annotation_folder]), annotation_batches]
        ).get_status(raw)

    with dg.instance_for_test() as instance:
        sensor = Sensor(instance, tmp_path)
        first = new_version(sensor.tick())
        record = instance.get_latest_data_version_record(annotation_folder.key)
        assert record.asset_materialization.tags["dagster/data_version"] == first.tags["dagster/data_version"]

        assert dg.materialize([annotation_folder, annotation_batches], instance=instance, resources=resources).success
        tags = instance.get_latest_materialization_event(raw).asset_materialization.tags
        assert tags["dagster/input_data_version/annotation_folder"] == first.tags["dagster/data_version"]
        assert status(instance) == StaleStatus.FRESH

        write_batch(tmp_path, "b.jsonl", ["z"])
        new_version(sensor.tick())
        assert status(instance) == StaleStatus.STALE


def test_a_missing_folder_is_an_error_naming_it(tmp_path):
    with (
        dg.instance_for_test() as instance,
        pytest.raises(AnnotationFileError, match="annotation folder does not exist"),
    ):
        Sensor(instance, tmp_path / "nowhere").tick()


def test_the_interval_is_a_setting_overridable_from_the_environment():
    assert FolderWatchSettings.from_environment({}).interval_seconds == FolderWatchSettings().interval_seconds == 30
    assert FolderWatchSettings.from_environment({INTERVAL_VARIABLE: "5"}).interval_seconds == 5
    assert build_annotation_folder_sensor(FolderWatchSettings(interval_seconds=5)).minimum_interval_seconds == 5
    for bad in ("0", "soon", "1.5"):
        with pytest.raises(ValueError, match=f"{INTERVAL_VARIABLE} must be a whole number, at least 1"):
            FolderWatchSettings.from_environment({INTERVAL_VARIABLE: bad})


def _versions(instance) -> list:
    """Every version of the folder the instance recorded."""
    return instance.fetch_materializations(annotation_folder.key, limit=100).records
