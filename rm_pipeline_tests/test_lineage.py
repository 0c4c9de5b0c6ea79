"""Lineage: which stages, data and code made a model, and whether its batch files are still what it saw."""

import hashlib
import json

import pytest

from rm_pipeline.lib.lineage import CHAIN, CHANGED, MISSING, UNCHANGED, check_files, lineage_report, render


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage(asset: str, version: str) -> dict:
    return {"asset": asset, "run_id": "r1", "time": "2024-01-01T00:00:00+00:00", "data_version": version}


def facts(tmp_path, files: dict[str, bytes]) -> dict:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {
        "model_path": str(tmp_path / "model"),
        "stages": [stage(asset, f"v-{asset}") for asset in CHAIN],
        "batches": [
            {"file": str(tmp_path / name), "sha256": sha(data), "bytes": len(data), "votes": 2}
            for name, data in files.items()
        ],
        "review_files": [],
    }


def test_unchanged_batches_give_no_finding_and_the_chain_runs_from_model_to_folder(tmp_path):
    report = lineage_report(facts(tmp_path, {"a.jsonl": b'{"x": 1}\n', "b.jsonl": b'{"x": 2}\n'}))
    assert [s["asset"] for s in report["chain"]] == list(CHAIN)
    assert [b["status"] for b in report["batches"]] == [UNCHANGED, UNCHANGED]
    assert report["findings"] == []


def test_a_changed_and_a_missing_batch_are_named_with_both_hashes(tmp_path):
    first, second, edited = b'{"x": 1}\n', b'{"x": 2}\n', b'{"x": 3}\n'
    recorded = facts(tmp_path, {"a.jsonl": first, "b.jsonl": second})
    (tmp_path / "a.jsonl").write_bytes(edited)
    (tmp_path / "b.jsonl").unlink()
    report = lineage_report(recorded)
    changed, missing = report["batches"]
    assert (changed["status"], changed["sha256_now"]) == (CHANGED, sha(edited))
    assert (missing["status"], missing["sha256_now"]) == (MISSING, None)
    assert report["findings"] == [
        f"batch {tmp_path / 'a.jsonl'} is {CHANGED}: trained on sha256 {sha(first)}, now {sha(edited)}",
        f"batch {tmp_path / 'b.jsonl'} is {MISSING}: trained on sha256 {sha(second)}",
    ]
    text = render(report)
    assert f"{tmp_path / 'a.jsonl'} sha256 {sha(first)} 2 votes  <- CHANGED ON DISK" in text
    assert f"{tmp_path / 'b.jsonl'} sha256 {sha(second)} 2 votes  <- MISSING" in text


def test_review_files_are_checked_like_batches():
    checked = check_files([{"file": "r.csv", "sha256": "old"}], sha256_now=lambda path: "new")
    assert checked == [{"file": "r.csv", "sha256": "old", "sha256_now": "new", "status": CHANGED}]


def test_a_stage_without_record_is_a_finding_but_the_folder_sensor_is_optional(tmp_path):
    recorded = facts(tmp_path, {})
    recorded["stages"] = [s for s in recorded["stages"] if s["asset"] not in ("reward_readiness", "annotation_folder")]
    assert lineage_report(recorded)["findings"] == ["no record of reward_readiness"]


def test_a_model_card_that_disagrees_with_the_instance_is_a_finding(tmp_path):
    recorded = facts(tmp_path, {})
    card = {"stages": [stage("preference_split", "other")]}
    assert lineage_report(recorded, card)["findings"] == [
        "the model card says preference_split had data version other, the instance records v-preference_split"
    ]


# ---------------------------------------------------------------- on a real instance


@pytest.mark.trains
def test_lineage_of_a_trained_model_and_a_batch_changed_on_disk(
    annotations_slice, tiny_encoder, labelled_eval_dir, tmp_path
):
    import shutil

    import dagster as dg

    from rm_pipeline.folder_sensors import folder_version
    from rm_pipeline.lib.fingerprints import fingerprint_folder
    from rm_pipeline_tests.support.cli import rm_pipeline

    folder = tmp_path / "annotations"
    shutil.copytree(annotations_slice, folder)
    home = tmp_path / "home"
    env = {"DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # what the folder sensor reports when the daemon runs: the folder's version, raw_annotations' input
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        instance.report_runless_asset_event(folder_version(str(folder), fingerprint_folder(folder, None, 0)))
    args = ["--home", str(home), "--annotations", str(folder), "--base-model", tiny_encoder]
    done = rm_pipeline("run", *args, "--eval-dir", str(labelled_eval_dir), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    model = (home / "models" / "current").resolve()

    done = rm_pipeline("lineage", "--home", str(home), "--json", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["model_path"] == str(model) and report["findings"] == []
    chain = {s["asset"]: s for s in report["chain"]}
    assert list(chain) == list(CHAIN)
    split_version = chain["preference_split"]["data_version"]
    assert chain["reward_model"]["data_version"] == split_version  # trained on exactly that split
    assert all(s["data_version"] for s in report["chain"])
    assert all(s["run_id"] and s["code_version"] for s in report["chain"] if s["asset"] != "annotation_folder")
    assert chain["raw_annotations"]["counts"]["rows_read"] == chain["annotation_folder"]["counts"]["rows"]
    files = sorted(folder.iterdir())
    assert [(b["file"], b["sha256"], b["status"]) for b in report["batches"]] == [
        (str(path), sha(path.read_bytes()), UNCHANGED) for path in files
    ]
    assert sum(b["votes"] for b in report["batches"]) == chain["raw_annotations"]["counts"]["rows"]
    # the model card and lineage.json say the same
    card = json.loads((model / "lineage.json").read_text())
    assert [b["sha256"] for b in card["batches"]] == [b["sha256"] for b in report["batches"]]
    assert card["code_versions"]["reward_model"] == chain["reward_model"]["code_version"]
    readme = (model / "README.md").read_text()
    assert split_version in readme and all(b["sha256"] in readme for b in report["batches"])

    changed = files[0]
    changed.write_bytes(changed.read_bytes() + changed.read_bytes().splitlines(keepends=True)[0])
    done = rm_pipeline("lineage", str(model), "--home", str(home), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{changed} sha256 {report['batches'][0]['sha256']}" in done.stdout
    assert "<- CHANGED ON DISK" in done.stdout and done.stdout.count("CHANGED ON DISK") == 2  # marker, finding
    assert f"data version {split_version}" in done.stdout

    done = rm_pipeline("lineage", str(tmp_path), "--home", str(home), env=env)
    assert done.returncode == 3 and "no reward_model materialisation" in done.stderr
    assert "Traceback" not in done.stderr
