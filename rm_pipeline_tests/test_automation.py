"""Declarative automation, tick by tick, on a real Dagster instance: which stages each tick requests.

Stages are materialised for real up to the split (no training); a trained model is stood in for by its
materialisation event, which records the split version it was trained on, as reward_model's does.
"""

import datetime
import shutil

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from rm_pipeline.automation import automation_sensor
from rm_pipeline.definitions import build_defs
from rm_pipeline.folder_sensors import build_review_folder_sensor
from rm_pipeline.lib.automation import CRON_VARIABLE, TIMEZONE_VARIABLE, AutomationSettings
from rm_pipeline.resources import ReviewSource
from rm_pipeline_tests.test_annotation_folder import SETTLED, Sensor
from rm_pipeline_tests.test_gate_enforcement import GARBAGE, UP_TO_SPLIT, materialize

DATA_STAGES = set(UP_TO_SPLIT)
AFTER_TRAINING = {
    "shortcut_probes",
    "reward_scores",
    "response_scores",
    "evaluation_report",
    "dpo_comparison",  # records "not configured" unless a DPO policy is set
    "reward_readiness",
    "current_reward_model",
}
HOUR = datetime.timedelta(hours=1)


class Automation:
    """The automation conditions evaluated tick after tick, the cursor carried over as the sensor does."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, at: datetime.datetime | None = None):
        self.defs, self.instance, self.cursor = defs, instance, None
        assert self.tick(at) == set()  # the first evaluation only notes where things stand

    def tick(self, at: datetime.datetime | None = None) -> set[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=at
        )
        self.cursor = result.cursor
        return {r.key.to_user_string() for r in result.results if not r.true_subset.is_empty}


def next_monday_3am() -> datetime.datetime:
    """The next tick of the default retraining cron, at least a few hours ahead (events recorded now come first)."""
    now = datetime.datetime.now(datetime.UTC)
    days = (7 - now.weekday()) % 7 or 7
    return (now + datetime.timedelta(days=days)).replace(hour=3, minute=0, second=0, microsecond=0)


def report_model(instance, trained_on: str) -> None:
    """A reward_model materialisation as training records it: the split data version it was trained on."""
    instance.report_runless_asset_event(dg.AssetMaterialization("reward_model", metadata={"data_version": trained_on}))


def split_version(instance) -> str:
    return (
        instance.get_latest_materialization_event(dg.AssetKey("preference_split"))
        .asset_materialization.metadata["data_version"]
        .value
    )


@pytest.fixture
def earlier_annotations(small_annotations, tmp_path):
    """The folder before its latest batch arrived."""
    folder = tmp_path / "earlier_annotations"
    shutil.copytree(small_annotations, folder)
    (folder / "hh_rlhf_harmless_test.jsonl").unlink()
    return folder


@pytest.fixture
def bad_annotations(small_annotations, tmp_path):
    folder = tmp_path / "bad_annotations"
    shutil.copytree(small_annotations, folder)
    (folder / "vendor_batch_7.jsonl").write_text("\n".join(GARBAGE) + "\n")
    return folder


def test_a_new_batch_requests_every_data_stage_in_one_run(small_annotations, storage_root):
    with dg.instance_for_test() as instance:
        defs = build_defs(str(storage_root), str(small_annotations))
        automation = Automation(defs, instance)
        sensor_context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
        sensor_context.update_cursor(automation_sensor(sensor_context).cursor)  # the sensor's own first tick
        assert automation.tick() == set()  # no batch reported yet

        Sensor(instance, small_annotations).tick()  # annotation_folder_sensor reports the folder's version
        assert automation.tick() == DATA_STAGES  # the whole chain, not one stage per tick; training waits
        assert automation.tick() == set()  # requested once

        (run,) = automation_sensor(sensor_context).run_requests  # what the sensor launches: one run
        assert set(run.asset_selection) == {dg.AssetKey(name) for name in DATA_STAGES}
        assert run.asset_check_keys is None  # None: every check of those assets, the gates included


def test_a_folder_reported_before_automation_first_looks_is_ingested(small_annotations, storage_root):
    """`rm-pipeline ui` on a folder of batches: the folder sensor may report it before the automation sensor's
    first tick, so no dependency is "newly updated" afterwards; the never-materialised chain is requested
    all the same (on the tick after the first, which only notes where things stand), once."""
    with dg.instance_for_test() as instance:
        defs = build_defs(str(storage_root), str(small_annotations))
        Sensor(instance, small_annotations).tick()
        automation = Automation(defs, instance)
        assert automation.tick() == DATA_STAGES
        assert automation.tick() == set()


def test_a_bad_batch_stops_at_its_gate_and_nothing_downstream_is_requested(
    small_annotations, bad_annotations, storage_root
):
    with dg.instance_for_test() as instance:
        automation = Automation(build_defs(str(storage_root), str(bad_annotations)), instance)
        Sensor(instance, bad_annotations).tick()
        assert automation.tick() == DATA_STAGES
        chain = materialize(storage_root, bad_annotations, instance, UP_TO_SPLIT)  # the run the tick launches
        assert {e.check_name: e.passed for e in chain.get_asset_check_evaluations()} == {"raw_annotations_valid": False}
        assert automation.tick() == set()

        # raw_annotations materialised again on its own (no later stage planned in that run, so eager alone would
        # request them): its failed gate holds everything downstream
        ingest = materialize(storage_root, bad_annotations, instance, ["raw_annotations", "annotation_quarantine"])
        assert [e.passed for e in ingest.get_asset_check_evaluations()] == [False]
        assert automation.tick() == set()
        assert automation.tick() == set()

        # the vendor fixes the batch: a new folder version runs the whole chain again, gate first
        shutil.rmtree(bad_annotations)
        shutil.copytree(small_annotations, bad_annotations)
        Sensor(instance, bad_annotations).tick()
        assert automation.tick() == DATA_STAGES


def test_a_gate_not_evaluated_on_the_latest_materialisation_blocks_downstream(small_annotations, storage_root):
    """Only a gate that passed lets the stages after it run: one that errored or never ran holds them."""
    with dg.instance_for_test() as instance:
        automation = Automation(build_defs(str(storage_root), str(small_annotations)), instance)
        assert materialize(storage_root, small_annotations, instance, UP_TO_SPLIT).success
        assert automation.tick() == set()  # its own run: nothing to follow
        # the latest aggregated_preferences, without its gate: never evaluated on it
        assert materialize(
            storage_root,
            small_annotations,
            instance,
            dg.AssetSelection.assets("aggregated_preferences").without_checks(),
        ).success
        assert automation.tick() == set()  # review_queue, pairs and split wait for a gate that passed


def test_the_weekly_tick_retrains_only_when_the_approved_split_changed(
    small_annotations, earlier_annotations, storage_root
):
    monday = next_monday_3am()
    with dg.instance_for_test() as instance:
        assert materialize(storage_root, earlier_annotations, instance, UP_TO_SPLIT).success
        report_model(instance, trained_on=split_version(instance))  # the current model: trained on this split
        defs = build_defs(str(storage_root), str(small_annotations), automation=AutomationSettings("0 3 * * 1"))
        automation = Automation(defs, instance, at=monday - HOUR)
        assert automation.tick(monday + datetime.timedelta(seconds=30)) == set()  # the model is up to date

        before = split_version(instance)
        assert materialize(storage_root, small_annotations, instance, UP_TO_SPLIT).success  # a new batch
        assert split_version(instance) != before
        assert automation.tick(monday + HOUR) == set()  # off the tick: waits for the next one
        assert automation.tick(monday + 3 * HOUR) == set()

        next_monday = monday + datetime.timedelta(days=7)
        assert automation.tick(next_monday - HOUR) == set()
        # the tick: reward_model and the stages after it, in one run; the data stages are up to date
        assert automation.tick(next_monday + datetime.timedelta(seconds=30)) == {"reward_model"} | AFTER_TRAINING
        assert automation.tick(next_monday + HOUR) == set()  # requested once


def test_the_first_model_is_trained_on_the_tick_after_an_approved_split(small_annotations, storage_root):
    monday = next_monday_3am()
    with dg.instance_for_test() as instance:
        defs = build_defs(str(storage_root), str(small_annotations))
        automation = Automation(defs, instance, at=monday - HOUR)
        assert materialize(storage_root, small_annotations, instance, UP_TO_SPLIT).success
        assert automation.tick(monday - HOUR / 2) == set()  # no model yet, but not the tick
        assert automation.tick(monday + datetime.timedelta(seconds=30)) == {"reward_model"} | AFTER_TRAINING


def test_a_failed_gate_upstream_holds_the_retrain(small_annotations, bad_annotations, storage_root):
    """The split is still the approved one, but raw_annotations' latest batch failed its gate: no retrain."""
    monday = next_monday_3am()
    with dg.instance_for_test() as instance:
        assert materialize(storage_root, small_annotations, instance, UP_TO_SPLIT).success
        report_model(instance, trained_on="an older split")
        assert not materialize(
            storage_root, bad_annotations, instance, ["raw_annotations", "annotation_quarantine"]
        ).success
        automation = Automation(build_defs(str(storage_root), str(bad_annotations)), instance, at=monday - HOUR)
        assert automation.tick(monday + datetime.timedelta(seconds=30)) == set()
        # the batch is fixed: the tick isn't lost, the retrain follows the approved data
        assert materialize(
            storage_root, small_annotations, instance, ["raw_annotations", "annotation_quarantine"]
        ).success
        assert automation.tick(monday + HOUR) == {"reward_model"} | AFTER_TRAINING | DATA_STAGES - {
            "raw_annotations",
            "annotation_quarantine",
        }


def test_nothing_is_requested_while_a_run_is_in_progress(small_annotations, storage_root):
    monday = next_monday_3am()
    with dg.instance_for_test() as instance:
        assert materialize(storage_root, small_annotations, instance, UP_TO_SPLIT).success
        report_model(instance, trained_on="an older split")
        automation = Automation(build_defs(str(storage_root), str(small_annotations)), instance, at=monday - HOUR)
        run = create_run_for_test(
            instance,
            job_name="__ASSET_JOB",
            status=dg.DagsterRunStatus.STARTED,
            asset_selection={dg.AssetKey(name) for name in DATA_STAGES},
        )
        Sensor(instance, small_annotations).tick()  # a new folder version, and the cron tick, during the run
        assert automation.tick(monday + datetime.timedelta(seconds=30)) == set()
        assert automation.tick(monday + HOUR) == set()

        instance.report_run_failed(run)  # the run is over: what waited is requested, in one run
        assert automation.tick(monday + 2 * HOUR) == DATA_STAGES | {"reward_model"} | AFTER_TRAINING


def test_the_retraining_schedule_is_a_setting_overridable_from_the_environment():
    assert AutomationSettings() == AutomationSettings(retrain_cron="0 3 * * 1", timezone="UTC")
    settings = AutomationSettings.from_environment({CRON_VARIABLE: "0 2 * * *", TIMEZONE_VARIABLE: "Europe/Paris"})
    assert settings == AutomationSettings(retrain_cron="0 2 * * *", timezone="Europe/Paris")
    condition = build_defs(automation=settings).resolve_asset_graph().get(dg.AssetKey("reward_model"))
    assert "0 2 * * *" in condition.automation_condition.get_label()
    with pytest.raises(ValueError, match=f"\\${CRON_VARIABLE} must be a cron schedule .*; got 'weekly'"):
        build_defs(automation=AutomationSettings(retrain_cron="weekly"))
    with pytest.raises(ValueError, match="must be an IANA time zone .*; got 'Mars/Olympus'"):
        AutomationSettings.from_environment({TIMEZONE_VARIABLE: "Mars/Olympus"})


def test_the_automation_sensor_runs_by_default():
    sensor = build_defs().get_sensor_def("rm_pipeline_automation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)


def test_a_new_review_file_runs_the_data_stages_from_aggregation_on(small_annotations, storage_root, tmp_path):
    reviews = tmp_path / "reviews"
    reviews.mkdir()
    review_sensor = build_review_folder_sensor(SETTLED)

    def review_tick(cursor=None):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"review_source": ReviewSource(directory=str(reviews))}
        )
        result = review_sensor(context)
        for event in getattr(result, "asset_events", []):  # what the sensor daemon does with them
            instance.report_runless_asset_event(event)
        return result

    with dg.instance_for_test() as instance:
        defs = build_defs(str(storage_root), str(small_annotations), reviews_dir=str(reviews))
        Sensor(instance, small_annotations).tick()
        first = review_tick()
        assert [event.asset_key.to_user_string() for event in first.asset_events] == ["review_folder"]
        automation = Automation(defs, instance)
        assert automation.tick() == DATA_STAGES
        assert materialize(storage_root, small_annotations, instance, UP_TO_SPLIT).success
        assert automation.tick() == set()

        (reviews / "reviewed.csv").write_text("item_id,review_decision,reviewer_id\nx/1,a,rev-1\n")
        assert review_tick(first.cursor).asset_events  # a new version of review_folder
        assert automation.tick() == DATA_STAGES - {"raw_annotations", "annotation_quarantine"}
