"""Every recipe in recipes/ is a run config `rm-pipeline run --config FILE` accepts, and says when to use it."""

from pathlib import Path

import dagster as dg
import pytest
import yaml

from rm_pipeline.definitions import build_defs, reward_pipeline_job

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


@pytest.fixture(scope="module")
def job():
    return build_defs().resolve_job_def(reward_pipeline_job.name)


def test_there_are_recipes():
    assert RECIPE_FILES, f"no recipes in {RECIPES}"


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda path: path.name)
def test_a_recipe_is_a_valid_run_config_of_the_main_job(job, recipe):
    config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    try:
        dg.validate_run_config(job, config)  # the check `rm-pipeline run --config` makes before running
    except dg.DagsterInvalidConfigError as error:
        pytest.fail(f"{recipe.name}: " + "; ".join(problem.message for problem in error.errors))


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda path: path.name)
def test_a_recipe_says_when_to_use_it_and_is_listed(recipe):
    text = recipe.read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("#") and len(header) >= 2, f"{recipe.name} needs a header comment saying when to use it"
    assert f"--config recipes/{recipe.name}" in text, f"{recipe.name}'s header should show its command"
    assert f"({recipe.name})" in (RECIPES / "README.md").read_text(encoding="utf-8"), f"list {recipe.name} in README"


def test_a_misspelt_setting_fails_the_check(job):
    config = yaml.safe_load(RECIPE_FILES[0].read_text(encoding="utf-8"))
    step = next(iter(config["ops"]))
    settings = config["ops"][step]["config"]
    name = next(iter(settings))
    settings[name + "s"] = settings.pop(name)
    with pytest.raises(dg.DagsterInvalidConfigError, match=name + "s"):
        dg.validate_run_config(job, config)
