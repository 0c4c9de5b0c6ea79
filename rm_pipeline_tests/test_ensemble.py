"""Ensembles (one model directory of K members, scored as mean - λ·std with the std as uncertainty) and post-hoc
length calibration (the reward's fitted dependence on length, subtracted)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.evaluation.uncertainty import accuracy_by_uncertainty, render_uncertainty
from rm_pipeline.lib.length_calibration import (
    fit_length_calibration,
    remove_length_effect,
    write_length_calibration,
)
from rm_pipeline.lib.model_files import (
    ENSEMBLE_FILE,
    LENGTH_CALIBRATION_FILE,
    TRAINING_SETTINGS_FILE,
    WEIGHTS_FILE,
    ModelDirectoryError,
    read_manifest,
    write_manifest,
)
from rm_pipeline.lib.model_registry import current_model_dir, list_models, switch_current
from rm_pipeline.lib.promotion import PROMOTED, decide
from rm_pipeline.lib.scoring import EnsembleScorer, RewardScorer, trl_reward_function
from rm_pipeline.lib.training.ensemble import train_ensemble
from rm_pipeline_tests.support.cli import rm_pipeline_here

WEIGHT = 0.5  # λ
PROMPTS = ["2+2?", "Name a colour.", "Say hi.", "What is the sky?"]
ANSWERS = ["4", "Blue, like the sky on a clear summer day.", "Hello there!", "The sky is the air above us, blue."]
PAIRS = pd.DataFrame(
    {
        "prompt": PROMPTS,
        "conversational": [False] * 4,
        "chosen": ANSWERS,
        "rejected": ["five", "no", "go away", "a sky"],
    }
)


def tiny_member(folder: Path, like: str, seed: int) -> Path:
    """A copy of the tiny encoder (config, tokenizer, settings) with its own random weights."""
    import torch
    from transformers import AutoConfig, BertForSequenceClassification

    shutil.copytree(like, folder)
    torch.manual_seed(seed)
    BertForSequenceClassification(AutoConfig.from_pretrained(like)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ensemble_dir(tiny_encoder, tmp_path_factory) -> Path:
    """models/ens: three members with their own weights, λ = WEIGHT."""
    folder = tmp_path_factory.mktemp("models") / "ens"
    for k in range(3):
        tiny_member(folder / "members" / str(k), tiny_encoder, seed=10 + k)
    write_manifest(folder, [{"path": f"members/{k}", "seed": 10 + k} for k in range(3)], WEIGHT, "seeds")
    return folder


def members_alone(ensemble_dir: Path) -> np.ndarray:
    """Each member's rewards on PROMPTS/ANSWERS, loaded on its own: shape (members, answers)."""
    return np.stack(
        [
            RewardScorer.load(ensemble_dir / "members" / str(k), precision="fp32")
            .score(PROMPTS, ANSWERS, [False] * 4)["reward"]
            .to_numpy()
            for k in range(3)
        ]
    )


def test_an_ensemble_scores_mean_minus_lambda_std_with_the_members_std_as_uncertainty(ensemble_dir):
    scorer = RewardScorer.load(ensemble_dir, precision="fp32")
    assert isinstance(scorer, EnsembleScorer) and len(scorer.members) == 3
    scored = scorer.score(PROMPTS, ANSWERS, [False] * 4)
    alone = members_alone(ensemble_dir)
    assert np.ptp(alone, axis=0).min() > 1e-4  # the members really disagree: the std is not trivially zero
    np.testing.assert_allclose(scored["uncertainty"], alone.std(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scored["reward"], alone.mean(axis=0) - WEIGHT * alone.std(axis=0), atol=1e-6)
    pairs = scorer.score_pairs(PAIRS)
    np.testing.assert_allclose(pairs["chosen_uncertainty"], alone.std(axis=0), rtol=1e-5, atol=1e-6)
    assert {"chosen_reward", "rejected_reward", "rejected_uncertainty", "truncated"} <= set(pairs.columns)
    single = RewardScorer.load(ensemble_dir / "members" / "0", precision="fp32").score_pairs(PAIRS)
    assert "chosen_uncertainty" not in single  # one model has no uncertainty


def test_the_trl_adapter_returns_the_conservative_score(ensemble_dir):
    reward = trl_reward_function(ensemble_dir, precision="fp32")
    completions = [[{"role": "assistant", "content": answer}] for answer in ANSWERS]
    got = reward(prompts=PROMPTS, completions=completions)
    alone = members_alone(ensemble_dir)
    np.testing.assert_allclose(got, alone.mean(axis=0) - WEIGHT * alone.std(axis=0), atol=1e-6)


def test_score_and_evaluate_output_the_uncertainty(ensemble_dir, tmp_path):
    source = tmp_path / "candidates.jsonl"
    source.write_text(
        "".join(json.dumps({"prompt": p, "candidates": [a, "no"]}) + "\n" for p, a in zip(PROMPTS, ANSWERS))
    )
    output = tmp_path / "ranked.jsonl"
    done = rm_pipeline_here(
        "score", "--model", str(ensemble_dir), "--input", str(source), "--output", str(output), "--precision", "fp32"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ranked = [json.loads(line) for line in output.read_text().splitlines()]
    alone = members_alone(ensemble_dir)
    np.testing.assert_allclose([r["uncertainties"][0] for r in ranked], alone.std(axis=0), rtol=1e-5, atol=1e-6)
    assert "8/8" in done.stderr  # the progress bar counts answers, not members' passes

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": f"answer {i} " * (i % 4 + 1), "rejected": "no"} for i in range(20)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = rm_pipeline_here("evaluate", "--model", str(ensemble_dir), "--pairs", str(pairs))
    assert done.returncode == 0, done.stderr[-2000:]
    uncertainty = json.loads(done.stdout)[str(pairs)]["uncertainty"]
    assert uncertainty["n"] == 20 and [row["n"] for row in uncertainty["table"]] == [4] * 5
    assert all(row["accuracy_interval"] for row in uncertainty["table"])


@pytest.mark.parametrize(
    "damage, named",
    [
        pytest.param(lambda d: shutil.rmtree(d / "members" / "1"), "member 1 (members/1)", id="missing-member"),
        pytest.param(
            lambda d: (d / "members" / "2" / WEIGHTS_FILE).write_bytes(b"\x00" * 12),
            "member 2 (members/2)",
            id="corrupt-weights",
        ),
        pytest.param(lambda d: (d / ENSEMBLE_FILE).write_text("{not json"), ENSEMBLE_FILE, id="corrupt-manifest"),
        pytest.param(
            lambda d: (d / ENSEMBLE_FILE).write_text(json.dumps({"lambda": 1, "members": [{"path": "../x"}]})),
            "must lie inside",
            id="member-outside",
        ),
    ],
)
def test_a_broken_ensemble_is_one_line_naming_what_is_wrong(ensemble_dir, tmp_path, damage, named):
    broken = tmp_path / "ens"
    shutil.copytree(ensemble_dir, broken)
    damage(broken)
    with pytest.raises(ModelDirectoryError) as error:
        RewardScorer.load(broken)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_the_cli_names_a_broken_member_in_one_line(ensemble_dir, tmp_path):
    broken = tmp_path / "ens"
    shutil.copytree(ensemble_dir, broken)
    shutil.rmtree(broken / "members" / "1")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    done = rm_pipeline_here("evaluate", "--model", str(broken), "--pairs", str(pairs))
    assert done.returncode == 3 and "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if "member 1" in line]
    assert "members/1" in line and "not a model directory" in line


def test_promotion_handles_an_ensemble_directory(ensemble_dir):
    """An ensemble becomes `current`, is listed, and is scored as the current model when a candidate comes."""
    models_dir = ensemble_dir.parent
    switch_current(models_dir, ensemble_dir.name)
    assert current_model_dir(models_dir) == ensemble_dir.resolve()
    [row] = [row for row in list_models(models_dir, models_dir / "reports") if row["model"] == ensemble_dir.name]
    assert row["status"] == "current"
    # as current_reward_model scores the current model on the candidate's evidence
    current = RewardScorer.load(current_model_dir(models_dir), precision="fp32").score_pairs(PAIRS)
    credit = (current["chosen_reward"] > current["rejected_reward"]).astype(float)
    decision = decide(credit, credit, np.arange(len(PAIRS)))
    assert decision.status == PROMOTED and decision.current["n"] == len(PAIRS)


def test_accuracy_by_uncertainty_falls_where_the_ensemble_is_unsure():
    n = 100
    uncertainty = np.linspace(0.01, 1.0, n)
    right = np.arange(n) < 60  # the 40 most unsure pairs are the wrong ones
    pairs = pd.DataFrame(
        {
            "chosen_reward": np.where(right, 1.0, -1.0),
            "rejected_reward": 0.0,
            "chosen_uncertainty": uncertainty,
            "rejected_uncertainty": 0.0,
        }
    )
    result = accuracy_by_uncertainty(pairs.sample(frac=1, random_state=0))
    accuracies = [row["accuracy"] for row in result["table"]]
    assert result["n"] == n and [row["n"] for row in result["table"]] == [20] * 5
    assert accuracies[:3] == [1.0, 1.0, 1.0] and accuracies[-1] == 0.0
    assert all(row["accuracy_interval"]["low"] <= row["accuracy"] for row in result["table"])
    assert (
        "bin" in render_uncertainty(result)
        and render_uncertainty(accuracy_by_uncertainty(pairs.drop(columns="chosen_uncertainty"))) is None
    )


# ---------------------------------------------------------------- length calibration


@pytest.mark.parametrize("per_token", [0.01, -0.02], ids=["longer-rewarded", "shorter-rewarded"])
def test_length_calibration_removes_the_length_slope_and_keeps_equal_length_rankings(per_token):
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 400, size=2000)
    quality = rng.normal(size=2000)
    rewards = quality + per_token * tokens
    fit = fit_length_calibration(rewards, tokens)
    calibrated = remove_length_effect(rewards, tokens, fit)
    slope_before, slope_after = np.polyfit(tokens, rewards, 1)[0], np.polyfit(tokens, calibrated, 1)[0]
    assert abs(slope_before - per_token) < 0.1 * abs(per_token)
    assert abs(slope_after) < 0.05 * abs(per_token)
    assert abs(calibrated.mean() - rewards.mean()) < 1e-9  # the mean reward is kept
    assert np.corrcoef(calibrated, quality)[0, 1] > 0.95  # what is left is quality
    for length in np.unique(tokens)[:20]:  # answers of one length keep their order
        same = tokens == length
        assert list(np.argsort(rewards[same])) == list(np.argsort(calibrated[same]))


def test_scoring_with_length_calibration_applies_the_sidecar_and_says_when_there_is_none(tiny_encoder, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_encoder, model)
    with pytest.raises(ModelDirectoryError, match=f"no {LENGTH_CALIBRATION_FILE}"):
        RewardScorer.load(model, length_calibration=True)
    per_token = 0.5  # a straight line: each token of length was worth 0.5
    write_length_calibration(model, {"method": "lowess", "tokens": [0, 100], "reward": [0.0, 50.0], "offset": 10.0})
    raw = RewardScorer.load(model, precision="fp32").score(PROMPTS, ANSWERS, [False] * 4)
    calibrated = RewardScorer.load(model, precision="fp32", length_calibration=True).score(
        PROMPTS, ANSWERS, [False] * 4
    )
    expected = raw["reward"] - (per_token * raw["tokens"] - 10.0)
    np.testing.assert_allclose(calibrated["reward"], expected, atol=1e-6)


def test_the_cli_says_in_one_line_when_a_model_has_no_length_calibration(tiny_encoder, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    done = rm_pipeline_here("evaluate", "--model", tiny_encoder, "--pairs", str(pairs), "--length-calibration")
    assert done.returncode == 3 and "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if LENGTH_CALIBRATION_FILE in line]
    assert tiny_encoder in line


# ---------------------------------------------------------------- training


@pytest.mark.trains
def test_an_ensemble_trains_each_member_once_and_publishes_one_directory(tiny_encoder, tmp_path):
    from rm_pipeline.lib.model_files import weights_sha256
    from rm_pipeline_tests.test_reward_training import encoder_settings, learnable_pairs

    settings = encoder_settings(
        tiny_encoder, ensemble_members=2, ensemble_member_data="bootstrap", ensemble_lambda=0.7, seed=5
    )
    train, evaluation = learnable_pairs(40), learnable_pairs(8, start=100)
    models_dir = tmp_path / "models"
    first = train_ensemble(train, evaluation, settings, models_dir, "rm-a")
    # a run stopped after its first member: that member is kept, not trained again
    staging = models_dir / ".ensemble-rm-b"
    shutil.copytree(first.model_dir / "members" / "0", staging / "members" / "0")
    logs = []
    result = train_ensemble(train, evaluation, settings, models_dir, "rm-b", lambda kind, p: logs.append(p))
    messages = [p.get("message", "") for p in logs]
    assert any("member 1/2: already trained, kept" in m for m in messages), messages
    assert any("member 2/2: training with seed 6" in m for m in messages)
    assert not any("member 1/2: training" in m for m in messages)
    assert not staging.exists() and not list(models_dir.glob(".staging-*"))  # published by one rename
    directory = result.model_dir
    assert weights_sha256(directory / "members" / "0") == weights_sha256(first.model_dir / "members" / "0")

    manifest = read_manifest(directory)
    assert manifest["lambda"] == 0.7 and [m["seed"] for m in manifest["members"]] == [5, 6]
    assert all(m["data"] == "bootstrap" and m["distinct_train_pairs"] < 40 for m in manifest["members"])
    recorded = json.loads((directory / TRAINING_SETTINGS_FILE).read_text())
    assert recorded["ensemble_members"] == 2 and recorded["ensemble_lambda"] == 0.7
    member_settings = json.loads((directory / "members" / "1" / TRAINING_SETTINGS_FILE).read_text())
    assert member_settings["ensemble_members"] == 1 and member_settings["seed"] == 6
    card = (directory / "README.md").read_text()
    assert card.startswith("---") and "Ensemble of 2 reward models" in card and "members/1" in card
    fit = json.loads((directory / LENGTH_CALIBRATION_FILE).read_text())
    assert 20 <= fit["answers"] <= 2 * len(train)  # training-side answers only
    assert (directory / "members" / "1" / LENGTH_CALIBRATION_FILE).exists()  # each member's own, as one model's
    assert result.metrics["ensemble_members"] == 2 and len(result.metrics["member_eval_accuracy"]) == 2
    scorer = RewardScorer.load(directory, length_calibration=True)
    assert isinstance(scorer, EnsembleScorer) and scorer.weight == 0.7
    assert scorer.score_pairs(evaluation)["chosen_uncertainty"].notna().all()


@pytest.mark.trains
def test_the_pipeline_trains_evaluates_and_promotes_an_ensemble(tmp_path, tiny_encoder):
    import dagster as dg

    from rm_pipeline.definitions import build_defs, reward_pipeline_job
    from rm_pipeline_tests.conftest import PERMISSIVE_READINESS
    from rm_pipeline_tests.test_promotion import learnable, write_jsonl

    home, eval_dir = tmp_path / "home", tmp_path / "eval"
    write_jsonl(eval_dir / "sky.jsonl", learnable(20, start=1000))
    write_jsonl(tmp_path / "batch-1" / "sky.jsonl", learnable(80))
    settings = {"epochs": 1.0, "learning_rate": 3e-3, "batch_size": 8, "early_stopping_patience": None}
    ops = {
        **PERMISSIVE_READINESS,
        "reward_model": {"config": {**settings, "ensemble_members": 2, "ensemble_lambda": 0.5}},
        "reward_scores": {"config": {"precision": "fp32", "length_calibration": True}},
    }
    job = build_defs(str(home), str(tmp_path / "batch-1"), tiny_encoder, str(eval_dir)).resolve_job_def(
        reward_pipeline_job.name
    )
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False, run_config={"ops": ops})
    assert result.success
    current = current_model_dir(home / "models")
    assert current is not None and (current / ENSEMBLE_FILE).is_file()  # the ensemble was promoted
    record = json.loads((current / "promotion.json").read_text())
    assert record["status"] == PROMOTED and record["length_calibrated"] is True
    scores = pd.read_parquet(home / "tables" / "reward_scores.parquet")
    assert scores["chosen_uncertainty"].gt(0).all() and scores["length_calibrated"].all()
    report = json.loads((home / "reports" / current.name / "evaluation_report.json").read_text())["report"]
    assert report["uncertainty"]["n"] == report["held_out"]["n"] > 0
    assert report["benchmarks"]["sky.jsonl"]["uncertainty"]["n"] == 20
    markdown = (home / "reports" / current.name / "evaluation_report.md").read_text()
    assert "## Accuracy against uncertainty (ensemble)" in markdown
