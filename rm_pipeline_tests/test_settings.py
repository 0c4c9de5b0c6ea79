"""Every setting is declared once, in lib/; the Dagster configs, the CLI and the library agree on it."""

import argparse
import ast
import dataclasses
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.lib.aggregation import AggregationSettings, ReviewThresholds
from rm_pipeline.lib.environment import VARIABLES, EnvironmentVariable
from rm_pipeline.lib.evaluation.probes import ProbeSettings
from rm_pipeline.lib.evaluation.readiness import ReadinessGate
from rm_pipeline.lib.evaluation.report import EvaluationSettings
from rm_pipeline.lib.pairs import PairSettings
from rm_pipeline.lib.promotion import PromotionSettings
from rm_pipeline.lib.scoring import ScoringSettings
from rm_pipeline.lib.settings import allowed, build_settings
from rm_pipeline.lib.split import SplitSettings
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline.resources import BaseModelResource
from rm_pipeline.stages import aggregation, pairs, promotion, readiness, report, reward_model, scoring, split
from rm_pipeline_tests.test_gate_enforcement import UP_TO_SPLIT

# (run config of a stage, the library settings it carries, the fields a resource owns instead)
STAGE_CONFIGS = [
    (aggregation.AggregationConfig, AggregationSettings, set()),
    (aggregation.ReviewConfig, ReviewThresholds, set()),
    (pairs.PairsConfig, PairSettings, set()),
    (split.SplitConfig, SplitSettings, set()),
    (reward_model.RewardModelConfig, TrainingSettings, {"trust_remote_code", "max_length"}),
    (readiness.ReadinessConfig, ReadinessGate, set()),
    (scoring.ScoringConfig, ScoringSettings, set()),
    (report.EvaluationReportConfig, EvaluationSettings, set()),
    (scoring.ProbeConfig, ProbeSettings, set()),
    (promotion.PromotionConfig, PromotionSettings, set()),
]


@pytest.mark.parametrize(
    "config, settings, owned_by_resources", STAGE_CONFIGS, ids=[c.__name__ for c, _, _ in STAGE_CONFIGS]
)
def test_a_stage_config_has_exactly_the_library_settings_and_defaults(config, settings, owned_by_resources):
    library = {f.name: f for f in dataclasses.fields(settings)}
    assert set(config.model_fields) == set(library) - owned_by_resources
    for name, field in config.model_fields.items():
        assert field.default == library[name].default, name
        assert field.description, f"{config.__name__}.{name} has no help text"
    assert settings_from_config(settings, config(), **{n: library[n].default for n in owned_by_resources}) == settings()


def test_an_unknown_or_renamed_setting_is_an_error_not_ignored():
    with pytest.raises(ValueError, match="TrainingSettings has no setting 'epoch'"):
        build_settings(TrainingSettings, {"epoch": 3})
    with pytest.raises(ValueError, match="no setting 'learning_rate_typo'"):
        settings_from_config(TrainingSettings, reward_model.RewardModelConfig(), learning_rate_typo=1.0)


def test_a_config_field_without_a_default_is_refused():
    @dataclasses.dataclass
    class NoDefault:
        needed: int

    with pytest.raises(TypeError, match="NoDefault.needed needs a default"):
        config_class(NoDefault, "NoDefaultConfig")


def test_dagster_refuses_an_unknown_run_config_field():
    @dg.asset
    def uses_split_config(config: split.SplitConfig) -> int:
        return 1

    with pytest.raises(dg.DagsterInvalidConfigError, match="eval_fractoin"):
        dg.materialize(
            [uses_split_config], run_config={"ops": {"uses_split_config": {"config": {"eval_fractoin": 0.3}}}}
        )


def test_training_takes_max_length_and_remote_code_from_the_base_model_resource():
    resource = BaseModelResource(name_or_path="some/model", max_length=99, trust_remote_code=True)
    settings = reward_model.training_settings(reward_model.RewardModelConfig(epochs=2.0), resource)
    assert (settings.base_model, settings.max_length, settings.trust_remote_code, settings.epochs) == (
        "some/model",
        99,
        True,
        2.0,
    )
    overridden = reward_model.training_settings(reward_model.RewardModelConfig(base_model="other/model"), resource)
    assert overridden.base_model == "other/model" and overridden.max_length == 99


def test_the_pair_stage_and_its_gate_use_the_resource_max_length(tmp_path, annotations_slice):
    from rm_pipeline.definitions import build_defs

    defs = build_defs(str(tmp_path / "home"), str(annotations_slice))
    resources = {**defs.resources, "base_model": BaseModelResource(max_length=64)}
    data_stages = dg.AssetSelection.assets(*UP_TO_SPLIT) - dg.AssetSelection.assets("preference_split")
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        resources=resources,
        selection=data_stages,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    metadata = result.asset_materializations_for_node("pair_validation")[0].metadata
    assert metadata["max_length"].value == 64
    assert metadata["longest_pair_tokens"].value <= 64
    kept = pd.read_parquet(tmp_path / "home" / "tables" / "preference_pairs.parquet")
    assert kept[["chosen_tokens", "rejected_tokens"]].max().max() <= 64
    rejected = pd.read_parquet(tmp_path / "home" / "tables" / "rejected_pairs.parquet")
    assert (rejected["reason"] == "too_long").sum() > 0
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()}["preference_pairs_rules_hold"]


def _split_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": ["p1", "p2", "p3"],
            "prompt": ["q1", "q2", "q3"],
            "conversational": False,
            "chosen": ["good", "fine", "yes"],
            "rejected": ["bad", "poor", "no"],
            "strength": [1.0, np.nan, 2.0],
            "split": ["train", "train", "eval"],
            "domain": "d",
        }
    )


def test_the_split_data_version_covers_what_training_sees():
    base = _split_frame()
    version = split.split_data_version(base)
    flipped = base.copy()  # a changed vote on an existing item: the other answer now wins
    flipped.loc[0, ["chosen", "rejected"]] = ["bad", "good"]
    stronger = base.assign(strength=[2.0, np.nan, 2.0])
    moved = base.assign(split=["train", "eval", "eval"])
    reworded = base.assign(prompt=["q1", "q2 (edited)", "q3"])
    assert len({version, *map(split.split_data_version, [flipped, stronger, moved, reworded])}) == 5
    # what training doesn't read, and the row order, leave it alone
    assert split.split_data_version(base.assign(domain="other")) == version
    assert split.split_data_version(base.iloc[::-1]) == version


# ---------------------------------------------------------------- environment variables, declared once

PACKAGE = Path(__file__).resolve().parents[1] / "rm_pipeline"
VARIABLE_NAME = re.compile(r"RM_PIPELINE_[A-Z0-9_]+")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_every_environment_variable_is_declared_once():
    names = [variable.name for variable in VARIABLES]
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)
    for variable in VARIABLES:
        assert variable.meaning.strip(), f"{variable.name} has no meaning"
        assert variable.name == variable.name.strip() and variable.default == variable.default.strip()


def test_no_module_reads_an_rm_pipeline_variable_by_name_but_lib_environment():
    """A name spelt out as a string anywhere else (`os.environ["RM_PIPELINE_X"]`, `getenv(...)`, a constant
    later looked up) is a second declaration: read it through its EnvironmentVariable."""
    spelt_out = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value}"
        for path, tree in _modules()
        if path.name != "environment.py" or path.parent.name != "lib"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE_NAME.fullmatch(node.value)
    ]
    assert not spelt_out, spelt_out


def test_every_variable_the_code_mentions_is_declared():
    """Help texts and docstrings name variables as `$RM_PIPELINE_X`: each must be one the code reads."""
    declared = {variable.name for variable in VARIABLES}
    mentioned = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in VARIABLE_NAME.findall(path.read_text(encoding="utf-8"))
        if not name.endswith("_")  # a prefix in prose
    }
    assert mentioned <= declared, sorted(mentioned - declared)


def test_a_variable_is_its_stripped_value_or_its_default():
    variable = EnvironmentVariable("RM_PIPELINE_EXAMPLE", "fallback", "for this test")
    assert variable.get({}) == "fallback"
    assert variable.get({"RM_PIPELINE_EXAMPLE": "  "}) == "fallback"
    assert variable.get({"RM_PIPELINE_EXAMPLE": " value\n"}) == "value"


def test_the_settings_that_variables_set_default_to_the_variables_defaults():
    from rm_pipeline.lib.automation import AutomationSettings, FolderWatchSettings
    from rm_pipeline.training_launcher import DockerTrainingLauncher, K8sTrainingLauncher, TrainingLauncherResource

    assert AutomationSettings.from_environment({}) == AutomationSettings()
    assert FolderWatchSettings.from_environment({}) == FolderWatchSettings()
    assert TrainingLauncherResource.from_environment({"RM_PIPELINE_TRAINING_LAUNCHER": "docker"}) == (
        DockerTrainingLauncher()
    )
    assert TrainingLauncherResource.from_environment({"RM_PIPELINE_TRAINING_LAUNCHER": "k8s"}) == K8sTrainingLauncher()


# ---------------------------------------------------------------- command-line options from settings


SETTINGS_OPTIONS = [  # (command, settings dataclass, its fields the command takes as options)
    ("score", ScoringSettings, ["batch_size", "precision"]),
    ("evaluate", ScoringSettings, ["batch_size", "precision"]),
    ("evaluate", ProbeSettings, ["probe_pairs"]),
    ("dpo-baseline", "DpoSettings", ["beta", "learning_rate", "epochs", "max_steps", "batch_size", "max_length"]),
]


@pytest.mark.parametrize(
    "command, settings, names", SETTINGS_OPTIONS, ids=[f"{c}-{n[0]}" for c, _, n in SETTINGS_OPTIONS]
)
def test_settings_options_carry_the_fields_help_default_and_choices(command, settings, names):
    import typing

    from rm_pipeline.cli import build_parser
    from rm_pipeline.lib import dpo

    settings = getattr(dpo, settings) if isinstance(settings, str) else settings
    actions = {action.dest: action for action in _subparser(build_parser(), command)._actions}
    hints = typing.get_type_hints(settings)
    for field in dataclasses.fields(settings):
        if field.name not in names:
            continue
        action = actions[field.name]
        described = f"{field.metadata['help']} ({allowed(settings, field.name)}; default: {field.default})"
        assert action.help == described.replace("%", "%%")  # the range too, as the field declares it
        assert action.default is None  # unset: the dataclass's default applies
        if typing.get_origin(hints[field.name]) is typing.Literal:
            assert tuple(action.choices) == typing.get_args(hints[field.name])


def _subparser(parser, name):
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def test_an_option_given_overrides_its_setting_and_the_others_keep_their_defaults():
    from rm_pipeline.cli import build_parser
    from rm_pipeline.cli.common import settings_from_args
    from rm_pipeline.lib.dpo import DpoSettings

    args = build_parser().parse_args(["dpo-baseline", "--base-model", "m", "--beta", "0.3", "--max-steps", "5"])
    settings = settings_from_args(DpoSettings, args, ["beta", "learning_rate", "max_steps", "batch_size"])
    assert settings == dataclasses.replace(DpoSettings(), beta=0.3, max_steps=5)
