"""The code location, and the asset graph materialised on a real Dagster instance."""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

import rm_pipeline.stages
from rm_pipeline.asset_outputs import ASSET_GROUPS
from rm_pipeline.definitions import build_defs, defs, reward_pipeline_job
from rm_pipeline.lib.automation import FolderWatchSettings
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline_tests.conftest import PERMISSIVE_READINESS

PRODUCT_ASSETS = {
    "raw_annotations",
    "aggregated_preferences",
    "review_queue",
    "preference_pairs",
    "rejected_pairs",
    "preference_split",
    "reward_model",
    "reward_scores",
    "evaluation_report",
    "reward_readiness",
    "current_reward_model",
}
TABLES = PRODUCT_ASSETS - {"reward_model", "evaluation_report", "reward_readiness", "current_reward_model"} | {
    "annotation_quarantine",
    "response_scores",
    "shortcut_probes",
}
GATES = {
    "raw_annotations_valid",
    "aggregated_preferences_consistent",
    "review_queue_consistent",
    "preference_pairs_rules_hold",
    "preference_split_grouped",
    "reward_model_ready",
}


def test_definitions_load_with_the_product_asset_names():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert PRODUCT_ASSETS | {"annotation_folder"} <= keys  # the folder: an external asset, the sensor reports it
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name and node.owners and node.description, key
        assert node.code_version or not node.is_materializable, key  # an external asset has no code
    # `rm-pipeline ui`'s link opens the groups ASSET_GROUPS names: every group of the graph, and no other
    assert {graph.get(key).group_name for key in graph.get_all_asset_keys()} == set(ASSET_GROUPS)
    upstream = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert upstream["raw_annotations"] == upstream["annotation_quarantine"] == {"annotation_folder"}
    assert upstream["aggregated_preferences"] == {"raw_annotations", "review_folder"}
    assert upstream["review_queue"] == {"aggregated_preferences"}
    assert upstream["preference_split"] == {"preference_pairs"}
    assert upstream["shortcut_probes"] == {"reward_model", "preference_split"}
    assert upstream["reward_scores"] == {"reward_model", "preference_split", "review_queue", "shortcut_probes"}
    # the model flows as an input: every stage after training takes the reward_model value
    assert upstream["reward_model"] == {"preference_split"}
    assert upstream["evaluation_report"] == {
        "reward_model",
        "reward_scores",
        "response_scores",
        "preference_split",
        "dpo_comparison",
    }
    assert upstream["dpo_comparison"] == {"reward_model", "reward_scores", "preference_split"}
    assert upstream["reward_readiness"] == {"reward_model", "evaluation_report"}
    assert upstream["current_reward_model"] == {
        "reward_model",
        "reward_scores",
        "evaluation_report",
        "reward_readiness",
    }


def test_the_annotation_folder_sensor_runs_by_default_at_the_configured_interval():
    sensor = defs.resolve_sensor_def("annotation_folder_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and sensor.description
    assert sensor.minimum_interval_seconds == FolderWatchSettings().interval_seconds
    watch = FolderWatchSettings(interval_seconds=5)
    assert build_defs(folder_watch=watch).resolve_sensor_def("annotation_folder_sensor").minimum_interval_seconds == 5


def test_every_gate_is_blocking():
    graph = defs.resolve_asset_graph()
    checks = {key.name: graph.get_check_spec(key) for key in graph.asset_check_keys}
    assert GATES <= set(checks)
    assert all(checks[name].blocking for name in GATES)


@pytest.fixture
def run(labelled_eval_dir):
    """The main job on its own storage root, with fresh-policy labels and thresholds any model meets."""

    def execute(storage_root, annotations, instance, base_model=None, ops=None):
        job = build_defs(str(storage_root), str(annotations), base_model, str(labelled_eval_dir)).resolve_job_def(
            reward_pipeline_job.name
        )
        return job.execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": {**PERMISSIVE_READINESS, **(ops or {})}}
        )

    return execute


@pytest.mark.trains
def test_whole_graph_materialises_with_every_gate_passing(annotations_slice, storage_root, tiny_encoder, run):
    with dg.instance_for_test() as instance:
        result = run(storage_root, annotations_slice, instance, tiny_encoder)
        assert result.success
        materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert PRODUCT_ASSETS <= materialised
        evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations == {name: True for name in GATES}

        pairs_event = instance.get_latest_materialization_event(dg.AssetKey("preference_pairs"))
        metadata = pairs_event.asset_materialization.metadata
        rejected_meta = instance.get_latest_materialization_event(
            dg.AssetKey("rejected_pairs")
        ).asset_materialization.metadata
        assert metadata["comparisons_in"].value == (
            metadata["dagster/row_count"].value + rejected_meta["dagster/row_count"].value
        )
        raw = instance.get_latest_materialization_event(dg.AssetKey("raw_annotations")).asset_materialization.metadata
        quarantine = instance.get_latest_materialization_event(
            dg.AssetKey("annotation_quarantine")
        ).asset_materialization.metadata
        assert raw["rows_read"].value == raw["dagster/row_count"].value + quarantine["dagster/row_count"].value

    tables = storage_root / "tables"
    split = pd.read_parquet(tables / "preference_split.parquet")
    assert set(split["split"]) == {"train", "eval"}
    assert split.groupby("prompt_id")["split"].nunique().max() == 1
    assert (storage_root / "review" / "review_queue.csv").exists()
    assert not list(storage_root.rglob("*.pkl")) and not list(storage_root.rglob("*.pickle"))
    # Parquet only: every stored table opens as a table
    for asset in TABLES:
        assert isinstance(pd.read_parquet(tables / f"{asset}.parquet"), pd.DataFrame)
    model = (storage_root / "models" / "current").resolve()
    assert json.loads((model / "readiness.json").read_text())["optimize_against_reward"] is True
    assert "Readiness: READY" in (storage_root / "reports" / model.name / "evaluation_report.md").read_text()


@pytest.mark.trains
def test_reward_model_is_trained_in_a_child_process_with_lineage(annotations_slice, storage_root, tiny_encoder, run):
    from transformers import AutoModelForSequenceClassification

    with dg.instance_for_test() as instance:
        result = run(
            storage_root,
            annotations_slice,
            instance,
            tiny_encoder,
            ops={"reward_model": {"config": {"eval_steps": 5, "logging_steps": 2}}},
        )
        assert result.success
        split_version = (
            instance.get_latest_materialization_event(dg.AssetKey("preference_split"))
            .asset_materialization.metadata["data_version"]
            .value
        )
        event = instance.get_latest_materialization_event(dg.AssetKey("reward_model"))
        metadata = event.asset_materialization.metadata
        logs = [e.message for e in instance.all_logs(result.run_id) if e.step_key == "reward_model"]
    assert metadata["data_version"].value == split_version
    assert event.asset_materialization.tags["dagster/data_version"] == split_version
    for key in (
        "steps",
        "pairs_per_second",
        "tokens_per_second",
        "device",
        "train_seconds",
        "peak_memory_mb",
        "eval_accuracy",
        "reward_mean",
        "reward_std",
    ):
        assert key in metadata, key
    # what it was trained from and how: the base model and every training setting
    assert metadata["base_model"].value == tiny_encoder
    settings = metadata["settings"].value
    assert set(settings) == {field.name for field in fields(TrainingSettings)}
    assert settings["eval_steps"] == 5 and settings["logging_steps"] == 2 and settings["base_model"] == tiny_encoder
    assert any("progress" in message and "eta_s" in message for message in logs)  # streamed from the child
    model_dir = storage_root / "models" / "current"
    assert (
        model_dir.is_symlink()
        and model_dir.resolve()
        == storage_root.joinpath("models", metadata["model_path"].value.split("/")[-1]).resolve()
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 1 and hasattr(model.config, "reward_mean")
    card = (model_dir / "README.md").read_text()
    assert split_version in card and "pandalm_testset_v1" in card


def test_a_batch_that_breaks_a_gate_stops_the_run_before_later_stages(annotations_slice, tmp_path, storage_root, run):
    folder = tmp_path / "annotations"
    shutil.copytree(annotations_slice, folder)
    good = '{"item_id": "x1", "prompt": "p", "response_a": "r1", "response_b": "r2", "annotator_id": "v", "vote": "a"}'
    garbage = ["{not json"] * 8 + [good] * 2  # 80% unreadable: over the 20% the gate allows
    (folder / "vendor_batch_7.jsonl").write_text("\n".join(garbage) + "\n")

    with dg.instance_for_test() as instance:
        result = run(storage_root, folder, instance)
        assert not result.success
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        gate = evaluations["raw_annotations_valid"]
        assert not gate.passed
        assert "quarantined_share" in gate.metadata["failures"].value
        words = "9 of 10 rows quarantined (malformed_json: 8, duplicate_vote annotator_id: 1), above the 20% limit"
        assert f"`vendor_batch_7.jsonl`: {words}" in gate.description
        assert all("failures" not in e.metadata for e in evaluations.values() if e.passed)
        materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert "raw_annotations" in materialised
        assert materialised.isdisjoint(
            {"aggregated_preferences", "review_queue", "preference_pairs", "preference_split"}
        )
    assert not (storage_root / "tables" / "preference_split.parquet").exists()


@pytest.mark.trains
def test_stage_settings_change_the_outputs(annotations_slice, storage_root, tiny_encoder, run):
    """Settings are dg.Config: disputed comparisons become pairs when asked to, another aggregation method runs."""
    with dg.instance_for_test() as instance:
        result = run(
            storage_root,
            annotations_slice,
            instance,
            tiny_encoder,
            ops={
                "pair_validation": {"config": {"include_disputed": True}},
                "reward_model": {"config": {"epochs": 0.1}},
                "aggregated_preferences": {"config": {"method": "majority_vote"}},
            },
        )
        assert result.success
    rejected = pd.read_parquet(storage_root / "tables" / "rejected_pairs.parquet")
    queue = pd.read_parquet(storage_root / "tables" / "review_queue.parquet")
    pairs = pd.read_parquet(storage_root / "tables" / "preference_pairs.parquet")
    comparisons = pd.read_parquet(storage_root / "tables" / "aggregated_preferences.parquet")
    assert len(queue) and "disputed" not in set(rejected["reason"])
    assert pairs["pair_id"].isin(queue["item_id"]).any()
    assert set(comparisons["method"]) == {"majority_vote"}


@pytest.mark.parametrize("asset", ["aggregated_preferences", "preference_split"])
def test_assets_called_directly(asset, annotations_slice, tmp_path):
    """Dagster's direct-invocation idiom: stage code is thin over the pure functions."""
    from rm_pipeline.lib.annotations import read_annotations
    from rm_pipeline.lib.batch_folder import list_batch_files
    from rm_pipeline.lib.pairs import build_pairs
    from rm_pipeline.resources import ReviewSource
    from rm_pipeline.stages import aggregation, split

    votes = read_annotations(list_batch_files(annotations_slice)).votes
    comparisons = aggregation.aggregated_preferences(
        dg.build_asset_context(),
        aggregation.AggregationConfig(method="majority_vote"),
        ReviewSource(directory=str(tmp_path)),  # an empty review folder
        votes,
    ).value
    if asset == "aggregated_preferences":
        assert comparisons["item_id"].is_unique and len(comparisons) == votes["item_id"].nunique()
    else:
        pairs, _ = build_pairs(comparisons, include_disputed=True)
        out = split.preference_split(dg.build_asset_context(), split.SplitConfig(eval_fraction=0.3), pairs).value
        assert out.groupby("prompt_id")["split"].nunique().max() == 1


def test_no_stage_finds_its_input_by_reading_another_assets_events():
    """Data flows between assets as inputs and outputs: a stage never looks up another asset's latest event or
    reads a published table behind the IO manager's back."""
    stages = Path(rm_pipeline.stages.__file__).parent
    lookups = ("get_latest_materialization_event", "fetch_materializations", "published_table", "latest_table")
    found = [
        f"{path.name}: {name}" for path in sorted(stages.glob("*.py")) for name in lookups if name in path.read_text()
    ]
    assert not found, found
