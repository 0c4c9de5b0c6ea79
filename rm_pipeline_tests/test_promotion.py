"""A retrained model replaces the current one only when it is not significantly worse on the same pairs:
the intervals, the decision rule, `current` switched by evaluation, and `rm-pipeline models`."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.cli import main
from rm_pipeline.lib.evaluation.statistics import bootstrap_interval, paired_difference
from rm_pipeline.lib.model_registry import current_model_dir, list_models, switch_current
from rm_pipeline.lib.promotion import NOT_PROMOTED, PROMOTED, PromotionSettings, decide, evidence_pairs

# ---------------------------------------------------------------- intervals


def test_the_interval_of_a_bernoulli_mean_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        sample = rng.random(200) < 0.7
        interval = bootstrap_interval(sample, resamples=500, seed=trial)
        assert interval.low <= interval.estimate <= interval.high
        covered += interval.low <= 0.7 <= interval.high
    assert 0.88 <= covered / 200 <= 0.99
    # about the normal approximation's width: 2 * 1.96 * sqrt(p(1 - p) / n)
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 200), rel=0.25)


def test_resampling_groups_widens_the_interval_when_pairs_of_a_group_agree():
    rng = np.random.default_rng(2)
    per_group = rng.random(40) < 0.6  # 40 prompts, each of whose 10 pairs goes the same way
    values = np.repeat(per_group, 10).astype(float)
    groups = np.repeat(np.arange(40), 10)
    iid = bootstrap_interval(values)
    clustered = bootstrap_interval(values, groups)
    assert clustered.estimate == iid.estimate and clustered.groups == 40 and iid.groups == 400
    assert clustered.high - clustered.low > 2 * (iid.high - iid.low)  # sqrt(10) times wider, about


def test_intervals_are_seeded_and_reject_what_they_cannot_use():
    values = np.arange(10) % 2
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, statistic=np.median).estimate == 0.5
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="3 group labels for 10 values"):
        bootstrap_interval(values, groups=[1, 2, 3])
    with pytest.raises(ValueError, match="same pairs"):
        paired_difference([1, 0], [1, 0, 1])


def test_a_paired_difference_is_narrower_than_the_two_accuracies_apart():
    rng = np.random.default_rng(4)
    hard = rng.random(300) < 0.5  # pairs both models get right or wrong together
    current = hard.astype(float)
    candidate = current.copy()
    candidate[:15] = 1.0 - candidate[:15]  # the candidate differs on 15 pairs only
    difference = paired_difference(candidate, current)
    assert difference.estimate == pytest.approx(candidate.mean() - current.mean())
    separate = bootstrap_interval(candidate)
    assert difference.high - difference.low < (separate.high - separate.low) / 2


# ---------------------------------------------------------------- the decision rule


def credits(accuracy: float, n: int = 400, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < accuracy).astype(float)


GROUPS = np.repeat(np.arange(200), 2)


def test_the_first_model_is_promoted():
    candidate = credits(0.55)
    decision = decide(candidate, None, GROUPS)
    assert decision.status == PROMOTED and "first model" in decision.reason
    assert decision.current is None and decision.difference is None
    assert decision.candidate["low"] < decision.candidate["estimate"] == candidate.mean() < decision.candidate["high"]


def test_a_better_candidate_is_promoted():
    current = credits(0.6)
    candidate = np.maximum(current, credits(0.5, seed=1))  # right wherever the current model is, and more
    decision = decide(candidate, current, GROUPS)
    assert decision.status == PROMOTED and decision.difference["low"] > 0
    assert "not significantly worse" in decision.reason


def test_an_equal_candidate_is_promoted():
    current = credits(0.7)
    decision = decide(current.copy(), current, GROUPS)
    assert decision.status == PROMOTED
    assert decision.difference["estimate"] == decision.difference["low"] == decision.difference["high"] == 0


def test_a_significantly_worse_candidate_is_not_promoted_and_says_why():
    current = credits(0.8)
    candidate = current * credits(0.7, seed=1)  # wrong wherever the current model is, and more
    decision = decide(candidate, current, GROUPS)
    assert decision.status == NOT_PROMOTED
    assert decision.difference["high"] < -0.02
    assert "significantly worse" in decision.reason and "margin 0.02" in decision.reason
    assert decision.candidate["estimate"] < decision.current["estimate"]


def test_a_loss_within_the_margin_is_not_significant():
    current = np.ones(1000)
    candidate = current.copy()
    candidate[:50] = 0.0  # 5% worse, clearly: the interval is about [-0.064, -0.037]
    assert decide(candidate, current, None, PromotionSettings(promotion_margin=0.0)).status == NOT_PROMOTED
    assert decide(candidate, current, None, PromotionSettings(promotion_margin=0.1)).status == PROMOTED


def test_without_shared_pairs_a_second_model_is_not_promoted():
    assert decide([], None, []).status == PROMOTED
    decision = decide([], [], [])
    assert decision.status == NOT_PROMOTED and "no evaluation pairs" in decision.reason


def test_the_evidence_is_held_out_and_benchmark_pairs_grouped_by_prompt():
    scores = pd.DataFrame(
        {
            "source": ["held_out", "held_out", "held_out", "benchmark", "benchmark", "disagreement", "fresh_policy"],
            "prompt_id": ["p1", "p2", "p3", None, None, "p9", None],
            "prompt": ["Sky?", "sky? ", "Sea?", "2+2?", "2+2?", "x", "y"],
        }
    )
    evidence = evidence_pairs(scores)
    assert list(evidence["source"]) == ["held_out"] * 3 + ["benchmark"] * 2
    group = evidence["prompt_group"]
    assert group[0] == group[1] != group[2]  # one prompt text under two ids: one group
    assert group[3] == group[4] and group[3] not in set(group[:3])


# ---------------------------------------------------------------- the models on disk


def make_model(models_dir: Path, name: str, data_version: str | None = None, **files) -> Path:
    folder = models_dir / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if data_version:
        (folder / "training_facts.json").write_text(json.dumps({"data_version": data_version}))
    for file_name, document in files.items():
        (folder / f"{file_name}.json").write_text(json.dumps(document))
    return folder


def interval(estimate, low, high, n=50):
    return {"estimate": estimate, "low": low, "high": high, "n": n, "groups": n, "confidence": 0.95}


def test_switching_current_is_atomic_relative_and_only_to_a_published_model(tmp_path):
    models_dir = tmp_path / "models"
    assert current_model_dir(models_dir) is None
    make_model(models_dir, "a")
    make_model(models_dir, "b")
    switch_current(models_dir, "a")
    switch_current(models_dir, "b")
    link = models_dir / "current"
    assert link.is_symlink() and Path(link.readlink()) == Path("b")  # relative: the root can move
    assert current_model_dir(models_dir) == (models_dir / "b").resolve()
    with pytest.raises(FileNotFoundError):
        switch_current(models_dir, "missing")
    assert sorted(p.name for p in models_dir.iterdir()) == ["a", "b", "current"]  # no temporary link left


@pytest.fixture
def home_with_models(tmp_path) -> Path:
    """Four models: superseded, current, not promoted, never evaluated (one saved before training_facts.json)."""
    models_dir = tmp_path / "home" / "models"
    make_model(
        models_dir,
        "rm-v1-first",
        "v1",
        promotion={
            "status": "promoted",
            "reason": "the first model",
            "held_out": {"candidate": interval(0.6, 0.5, 0.7)},
        },
        readiness={"optimize_against_reward": False},
    )
    make_model(
        models_dir,
        "rm-v2-second",
        "v2",
        promotion={"status": "promoted", "reason": "not worse", "held_out": {"candidate": interval(0.7, 0.6, 0.8)}},
        readiness={"optimize_against_reward": True},
    )
    make_model(
        models_dir,
        "rm-v3-third",
        "v3",
        promotion={
            "status": "not_promoted",
            "reason": "significantly worse than the current model: accuracy 0.400 against 0.700",
            "held_out": {"candidate": interval(0.4, 0.3, 0.5)},
        },
        readiness={"optimize_against_reward": False},
    )
    old = make_model(models_dir, "rm-v4-fourth")
    (old / "README.md").write_text("- data version of the split: `v4`\n")
    reports = tmp_path / "home" / "reports" / "rm-v4-fourth"
    reports.mkdir(parents=True)
    (reports / "evaluation_report.json").write_text(json.dumps({"report": {"held_out": {"accuracy": 0.55, "n": 20}}}))
    (models_dir / ".checkpoints").mkdir()
    switch_current(models_dir, "rm-v2-second")
    return tmp_path / "home"


def test_models_lists_every_model_with_status_data_version_accuracy_and_verdict(home_with_models):
    rows = {row["model"]: row for row in list_models(home_with_models / "models", home_with_models / "reports")}
    assert list(rows) == ["rm-v1-first", "rm-v2-second", "rm-v3-third", "rm-v4-fourth"]  # no dot-dirs, no link
    assert rows["rm-v2-second"]["status"] == "current"
    assert rows["rm-v1-first"]["status"] == "superseded (was current)"
    assert rows["rm-v3-third"]["status"].startswith("not promoted: significantly worse than the current model")
    assert rows["rm-v4-fourth"]["status"] == "candidate (not yet evaluated)"
    assert [row["data_version"] for row in rows.values()] == ["v1", "v2", "v3", "v4"]
    assert rows["rm-v2-second"]["held_out"] == {"accuracy": 0.7, "interval": [0.6, 0.8], "n": 50}
    assert rows["rm-v4-fourth"]["held_out"] == {"accuracy": 0.55, "interval": None, "n": 20}  # from its report
    assert [row["verdict"] for row in rows.values()] == ["not ready", "ready", "not ready", "not evaluated"]


def test_the_models_command_prints_a_table_or_json(home_with_models, capsys):
    assert main(["models", "--home", str(home_with_models)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["model", "data", "version"] and len(lines) == 5
    [current] = [line for line in lines if line.startswith("rm-v2-second")]
    assert "0.700 [0.600, 0.800] (n=50)" in current and "ready" in current and current.endswith("current")
    assert main(["models", "--home", str(home_with_models), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["status"].split(":")[0] for row in rows] == [
        "superseded (was current)",
        "current",
        "not promoted",
        "candidate (not yet evaluated)",
    ]
    assert main(["models", "--home", str(home_with_models / "nowhere")]) == 0
    assert capsys.readouterr().out.strip() == "no models"


def test_score_and_evaluate_without_a_model_and_without_a_current_one_say_so(tmp_path, capsys):
    pairs, candidates = tmp_path / "pairs.jsonl", tmp_path / "candidates.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    candidates.write_text('{"prompt": "p", "candidates": ["a", "b"]}\n')
    assert main(["evaluate", "--home", str(tmp_path / "home"), "--pairs", str(pairs)]) == 3
    error = capsys.readouterr().err
    assert f"{tmp_path}/home/models/current: no current model" in error and "--model" in error
    assert main(["score", "--home", str(tmp_path / "home"), "--input", str(candidates)]) == 3
    assert "no current model" in capsys.readouterr().err


# ---------------------------------------------------------------- through Dagster


def learnable(n: int, start: int = 0, flipped: frozenset = frozenset()) -> list[dict]:
    """TRL standard pairs whose chosen answer says `excellent` and rejected one `terrible`; the prompts
    in ``flipped`` have the two swapped (a batch of bad labels)."""
    rows = []
    for i in range(start, start + n):
        prompt = f"what colour is the sky question {i}"
        good, bad = (
            f"the answer is {['red', 'blue'][i % 2]} excellent",
            f"the answer is {['red', 'blue'][i % 2]} terrible",
        )
        chosen, rejected = (bad, good) if prompt in flipped else (good, bad)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.trains
def test_a_first_model_is_promoted_and_a_worse_retrained_one_is_not(tmp_path, tiny_encoder):
    import dagster as dg

    from rm_pipeline.definitions import build_defs, reward_pipeline_job
    from rm_pipeline_tests.conftest import PERMISSIVE_READINESS

    home, eval_dir = tmp_path / "home", tmp_path / "eval"
    write_jsonl(eval_dir / "sky.jsonl", learnable(40, start=1000))  # a benchmark file
    write_jsonl(eval_dir / "fresh-policy" / "labelled.jsonl", learnable(5, start=2000))
    training = {
        "reward_model": {
            "config": {
                "epochs": 2.0,
                # not 1e-2: at that rate this 32-wide model saturates its pooler's tanh, most rewards collapse
                # to one value and their differences are float noise (ties, or a sign that fp32 and bf16 disagree on)
                "learning_rate": 3e-3,
                "warmup_ratio": 0.0,
                "batch_size": 8,
                "early_stopping_patience": None,
            }
        },
        "reward_scores": {"config": {"precision": "fp32"}},  # whatever the CPU: the current model is scored alike
    }

    def run(annotations: Path, instance):
        job = build_defs(str(home), str(annotations), tiny_encoder, str(eval_dir)).resolve_job_def(
            reward_pipeline_job.name
        )
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": {**PERMISSIVE_READINESS, **training}}
        )
        assert result.success
        [event] = [
            e
            for e in result.get_asset_materialization_events()
            if e.materialization.asset_key.to_user_string() == "current_reward_model"
        ]
        return event.materialization.metadata

    with dg.instance_for_test() as instance:
        write_jsonl(tmp_path / "batch-1" / "sky.jsonl", learnable(120))
        first = run(tmp_path / "batch-1", instance)
        models_dir = home / "models"
        first_model = current_model_dir(models_dir)
        assert first["status"].value == PROMOTED and "first model" in first["reason"].value
        assert first_model is not None and first["model_path"].value == str(first_model)
        record = json.loads((first_model / "promotion.json").read_text())
        assert record["status"] == PROMOTED and record["current_model"] is None
        assert record["pairs_by_source"]["benchmark"] == 40 and record["pairs_by_source"]["held_out"] > 10
        assert record["candidate"]["estimate"] > 0.9  # it learnt the pattern
        assert record["readiness"]["optimize_against_reward"] is True  # the verdict, recorded beside it

        # A second batch of annotations with every training prompt's labels swapped: the retrained model
        # learns the opposite, and is compared with the first on the same held-out and benchmark pairs.
        split = pd.read_parquet(home / "tables" / "preference_split.parquet")
        train_prompts = frozenset(split.loc[split["split"] == "train", "prompt"])
        write_jsonl(tmp_path / "batch-2" / "sky.jsonl", learnable(120, flipped=train_prompts))
        second = run(tmp_path / "batch-2", instance)

    assert second["status"].value == NOT_PROMOTED, second["reason"].value
    assert second["reason"].value.startswith("significantly worse than the current model")
    assert current_model_dir(models_dir) == first_model  # current did not move
    candidate = Path(second["candidate_path"].value)
    assert candidate != first_model and (candidate / "model.safetensors").exists()  # kept on disk
    record = json.loads((candidate / "promotion.json").read_text())
    assert record["status"] == NOT_PROMOTED and record["current_model"] == first_model.name
    assert record["scored_in"] == "fp32"  # the current model scored as reward_scores scored the candidate
    assert record["difference"]["high"] < -record["margin"]
    assert record["candidate"]["estimate"] < 0.2 < 0.9 < record["current"]["estimate"]
    assert record["candidate"]["n"] == record["current"]["n"] == record["pairs"]  # the same pairs for both
    table = second["models"].value
    assert first_model.name in table and candidate.name in table and "| current " in table

    rows = {row["model"]: row for row in list_models(models_dir, home / "reports")}
    assert rows[first_model.name]["status"] == "current"
    assert rows[candidate.name]["status"].startswith("not promoted: significantly worse")
    assert rows[first_model.name]["data_version"] != rows[candidate.name]["data_version"]
    assert rows[candidate.name]["held_out"]["interval"] is not None
