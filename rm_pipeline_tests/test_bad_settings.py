"""Bad settings, wherever they are set: every setting declares its range once, beside its default
(`rm_pipeline.lib.settings.setting`), and the library, the CLI options, `rm-pipeline run --config`, the Launchpad's
run config and the environment variables are all held to it before anything runs. The outcome of every case is
one line naming the setting and what it may be, with exit status 3 (2 for a command-line option), never a
traceback and never a run that trains on it. One row per case; add a row for each new case."""

import dataclasses
import json
import math

import dagster as dg
import pytest

from rm_pipeline.cli import main
from rm_pipeline.config import RunConfigError
from rm_pipeline.definitions import build_defs, reward_pipeline_job
from rm_pipeline.lib.aggregation import AggregationSettings, ReviewThresholds
from rm_pipeline.lib.automation import AutomationSettings, FolderWatchSettings
from rm_pipeline.lib.dpo import DpoSettings
from rm_pipeline.lib.evaluation.probes import ProbeSettings
from rm_pipeline.lib.evaluation.readiness import ReadinessThresholds
from rm_pipeline.lib.evaluation.report import ReportSettings
from rm_pipeline.lib.pairs import PairSettings
from rm_pipeline.lib.promotion import PromotionSettings
from rm_pipeline.lib.scoring import ScoringSettings
from rm_pipeline.lib.settings import MESSAGE_LIMIT, SettingError
from rm_pipeline.lib.split import SplitSettings
from rm_pipeline.lib.training.run import check_trained
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline.stages import reward_model, split

SETTINGS = [
    AggregationSettings,
    ReviewThresholds,
    PairSettings,
    SplitSettings,
    TrainingSettings,
    ScoringSettings,
    ProbeSettings,
    ReportSettings,
    ReadinessThresholds,
    PromotionSettings,
    DpoSettings,
    FolderWatchSettings,
    AutomationSettings,
]
NUMBER_SETTINGS = [
    (settings, field.name)
    for settings in SETTINGS
    for field in dataclasses.fields(settings)
    if isinstance(field.default, (int, float)) and not isinstance(field.default, bool)
]


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert len(lines[0]) <= MESSAGE_LIMIT + 40, len(lines[0])  # the command's name and the file's path besides
    return lines[0]


# --------------------------------------------------------------------------- the library


@pytest.mark.parametrize("settings, name", NUMBER_SETTINGS, ids=[f"{s.__name__}.{n}" for s, n in NUMBER_SETTINGS])
def test_no_number_setting_takes_nan_or_infinity(settings, name):
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(SettingError, match=rf"^{settings.__name__}\.{name} must be .*; got -?(nan|inf)$"):
            settings(**{name: value})
    settings()  # the default is within the range


LIBRARY_CASES = {
    "epochs 0 trains nothing": (TrainingSettings, {"epochs": 0}, "epochs must be a finite number, above 0"),
    "epochs -1": (TrainingSettings, {"epochs": -1}, "epochs must be a finite number, above 0 and at most 1000"),
    "epochs 1e308": (TrainingSettings, {"epochs": 1e308}, "epochs must be a finite number, above 0 and at most 1000"),
    "batch size 0": (TrainingSettings, {"batch_size": 0}, "batch_size must be a whole number, at least 1; got 0"),
    "a whole-number setting given 2.5": (TrainingSettings, {"batch_size": 2.5}, "must be a whole number"),
    "DPO max steps 0": (DpoSettings, {"max_steps": 0}, "max_steps must be -1 or a whole number, at least 1; got 0"),
    "eval fraction 1": (SplitSettings, {"eval_fraction": 1.0}, "eval_fraction must be a finite number, above 0"),
    "confidence 1": (PromotionSettings, {"confidence": 1.0}, "confidence must be a finite number, above 0 and below 1"),
    "agreement above 1": (ReviewThresholds, {"agreement_threshold": 1.5}, "agreement_threshold must be"),
    "sensor interval 0": (FolderWatchSettings, {"interval_seconds": 0}, "interval_seconds must be a whole number"),
}


@pytest.mark.parametrize("settings, values, message", LIBRARY_CASES.values(), ids=LIBRARY_CASES.keys())
def test_a_setting_outside_its_range_is_refused_by_the_library(settings, values, message):
    with pytest.raises(SettingError, match=message):
        settings(**values)


@pytest.mark.parametrize(
    "resource, values",
    [
        ("QualityGates", {"max_quarantine_fraction": float("nan")}),
        ("QualityGates", {"max_quarantine_fraction": 1.5}),
        ("QualityGates", {"max_quarantine_fraction": -0.1}),
        ("DpoPolicyResource", {"beta": float("inf")}),
        ("DpoPolicyResource", {"beta": float("nan")}),
    ],
)
def test_a_resource_setting_outside_its_range_is_refused(resource, values):
    import pydantic

    from rm_pipeline import resources

    with pytest.raises(pydantic.ValidationError, match=next(iter(values))):
        getattr(resources, resource)(**values)


def test_a_model_trained_for_zero_steps_is_never_published():
    with pytest.raises(ValueError, match="training took 0 optimiser steps .* nothing to publish"):
        check_trained(0)
    check_trained(1)


# --------------------------------------------------------------------------- rm-pipeline run --config

RUN_CONFIG_CASES = {
    "epochs 0": ("ops: {reward_model: {config: {epochs: 0}}}", "ops.reward_model.config.epochs must be a finite"),
    "epochs -1": ("ops: {reward_model: {config: {epochs: -1}}}", "above 0 and at most 1000; got -1"),
    "epochs 1e308": ("ops: {reward_model: {config: {epochs: 1e308}}}", "at most 1000; got 1e+308"),
    "learning rate .nan": ("ops: {reward_model: {config: {learning_rate: .nan}}}", "learning_rate must be a finite"),
    "batch size 0": ("ops: {reward_model: {config: {batch_size: 0}}}", "batch_size must be a whole number, at least 1"),
    "eval fraction 2": ("ops: {preference_split: {config: {eval_fraction: 2}}}", "ops.preference_split.config.eval_"),
    "readiness ece -1": ("ops: {evaluation_report: {config: {max_ece: -1.0}}}", "max_ece must be a finite number"),
    "billion laughs": (
        "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n"
        + "".join(f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
        + "ops: {reward_model: {config: {epochs: *i}}}\n",
        "line 2, column 8: aliases (*name) are not allowed in a run config",
    ),
    "a key given twice": (
        "ops:\n  reward_model:\n    config:\n      epochs: 3\n      epochs: 1\n",
        "line 5, column 7: key 'epochs' given twice in one mapping",
    ),
    "a JSON key given twice": ('{"ops": {}, "ops": {}}', "key 'ops' given twice in one object"),
    "a 1 MB value of the wrong type": (
        "ops: {reward_model: {config: {epochs: " + "x" * 1_000_000 + "}}}",
        "not a valid run config for reward_pipeline_job",
    ),
    "a 1 MB unclosed quote": ('ops: "' + "x" * 1_000_000, "not YAML"),
}


@pytest.mark.parametrize("text, message", RUN_CONFIG_CASES.values(), ids=RUN_CONFIG_CASES.keys())
def test_a_bad_run_config_is_one_line_before_anything_runs(text, message, tmp_path, capsys):
    config = tmp_path / ("run_config.json" if text.startswith("{") else "run_config.yaml")
    config.write_text(text)
    home = tmp_path / "home"
    assert main(["run", "--home", str(home), "--config", str(config)]) == 3
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"rm-pipeline run: {config}: ") and message in line, line
    assert not (home / "tables").exists() and not (home / "models").exists()  # no step ran


def _job():
    return build_defs().resolve_job_def(reward_pipeline_job.name)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_numbers_are_read_as_json_and_yaml_1_2_write_them(suffix, tmp_path):
    from rm_pipeline.cli.run import read_run_config

    config = {"ops": {"reward_model": {"config": {"learning_rate": 2e-05, "epochs": 1e1, "batch_size": 8}}}}
    path = tmp_path / f"run_config{suffix}"
    path.write_text(
        json.dumps(config)
        if suffix == ".json"
        else "ops: {reward_model: {config: {learning_rate: 2e-05, epochs: 1e1, batch_size: 8}}}"
    )
    assert read_run_config(_job(), path) == config


# --------------------------------------------------------------------------- the Launchpad


def test_a_launched_run_config_outside_a_range_fails_the_run_before_any_step(tmp_path):
    job = build_defs(str(tmp_path / "home")).resolve_job_def(reward_pipeline_job.name)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config={"ops": {"reward_model": {"config": {"epochs": 0}}}}, instance=instance, raise_on_error=False
        )
    assert not result.success
    assert not [event for event in result.all_events if event.is_step_start]  # not even ingestion ran
    (failure,) = [event for event in result.all_events if event.event_type_value == "RESOURCE_INIT_FAILURE"]
    error = failure.event_specific_data.error
    while error.cause is not None and error.cls_name != "RunConfigError":
        error = error.cause
    assert error.message.strip().endswith(
        "RunConfigError: ops.reward_model.config.epochs must be a finite number, above 0 and at most 1000; got 0"
    )
    assert not (tmp_path / "home" / "tables").exists()


def test_a_config_built_outside_a_range_names_it():
    assert reward_model.RewardModelConfig(epochs=2).epochs == 2
    with pytest.raises(RunConfigError, match=r"^RewardModelConfig.epochs must be a finite number, above 0"):
        reward_model.RewardModelConfig(epochs=0)

    @dg.asset
    def uses_split_config(config: split.SplitConfig) -> float:
        return config.eval_fraction

    result = dg.materialize(
        [uses_split_config],
        run_config={"ops": {"uses_split_config": {"config": {"eval_fraction": math.nan}}}},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    error = failure.step_failure_data.error
    while error.cause is not None and error.cls_name != "RunConfigError":
        error = error.cause
    assert error.message.strip().endswith(
        "RunConfigError: SplitConfig.eval_fraction must be a finite number, above 0 and below 1; got nan"
    )


# --------------------------------------------------------------------------- command-line options

OPTION_CASES = {
    "dpo-baseline --beta nan": (["--beta", "nan"], "argument --beta: must be a finite number, above 0 and at most 100"),
    "dpo-baseline --beta 0": (["--beta", "0"], "argument --beta: must be a finite number, above 0"),
    "dpo-baseline --learning-rate inf": (["--learning-rate", "inf"], "argument --learning-rate: must be a finite"),
    "dpo-baseline --epochs nan": (["--epochs", "nan"], "argument --epochs: must be a finite number"),
    "dpo-baseline --max-steps 0": (["--max-steps", "0"], "argument --max-steps: must be -1 or a whole number"),
    "dpo-baseline --batch-size 0": (["--batch-size", "0"], "argument --batch-size: must be a whole number, at least 1"),
    "dpo-baseline --max-length x": (["--max-length", "x"], "argument --max-length: must be a whole number, at least 1"),
}


@pytest.mark.parametrize("arguments, message", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_a_dpo_option_outside_its_setting_range_is_a_bad_option(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["dpo-baseline", "--base-model", str(tmp_path), "--home", str(tmp_path / "home"), *arguments])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "home").exists()


def test_validate_max_length_must_be_at_least_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["validate", str(tmp_path / "any.jsonl"), "--max-length", "-5"])
    assert exited.value.code == 2
    assert "argument --max-length: must be a whole number of at least 1, not '-5'" in capsys.readouterr().err


# --------------------------------------------------------------------------- environment variables

ENVIRONMENT_CASES = {
    "sensor interval not a number": (
        "RM_PIPELINE_SENSOR_INTERVAL",
        "soon",
        "$RM_PIPELINE_SENSOR_INTERVAL must be a whole number, at least 1; got 'soon'",
    ),
    "sensor interval 0": ("RM_PIPELINE_SENSOR_INTERVAL", "0", "at least 1; got '0'"),
    "launcher unknown": (
        "RM_PIPELINE_TRAINING_LAUNCHER",
        "slurm",
        "$RM_PIPELINE_TRAINING_LAUNCHER must be one of subprocess, docker, k8s; got 'slurm'",
    ),
    "time zone unknown": (
        "RM_PIPELINE_RETRAIN_TIMEZONE",
        "Mars/Olympus",
        "$RM_PIPELINE_RETRAIN_TIMEZONE must be an IANA time zone such as UTC or Europe/Paris; got 'Mars/Olympus'",
    ),
    "cron not a schedule": (
        "RM_PIPELINE_RETRAIN_CRON",
        "weekly",
        "$RM_PIPELINE_RETRAIN_CRON must be a cron schedule Dagster accepts, such as '0 3 * * 1'; got 'weekly'",
    ),
    "GPUs -1 (the subprocess launcher, which doesn't use it)": (
        "RM_PIPELINE_TRAINING_GPUS",
        "-1",
        "$RM_PIPELINE_TRAINING_GPUS must be a whole number, at least 0; got '-1'",
    ),
    "a 1 MB value": ("RM_PIPELINE_RETRAIN_TIMEZONE", "x" * 1_000_000, "(1000002 characters)"),
}


@pytest.mark.parametrize("variable, value, message", ENVIRONMENT_CASES.values(), ids=ENVIRONMENT_CASES.keys())
def test_a_bad_environment_variable_is_one_line_at_start_and_at_load(
    variable, value, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingError) as raised:  # as Dagster loads the code location
        build_defs()
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert main(["run", "--home", str(tmp_path / "home")]) == 3
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("rm-pipeline run: $") and message in line
    assert not (tmp_path / "home").exists()  # refused before the storage root was made
