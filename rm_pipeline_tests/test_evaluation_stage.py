"""The evaluation assets in a real Dagster instance: scores, the report files, and the readiness verdict."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from rm_pipeline.definitions import build_defs, reward_pipeline_job
from rm_pipeline.lib.evaluation.probes import PROBE_NAMES
from rm_pipeline_tests.conftest import PERMISSIVE_READINESS, REPO_ROOT
from rm_pipeline_tests.test_report import metrics_without_interval
from rm_pipeline_tests.test_rewardbench2 import GOOD_ROWS, write_jsonl

pytestmark = pytest.mark.trains

QUICK_TRAINING = {"reward_model": {"config": {"batch_size": 16, "early_stopping_patience": None}}}


@pytest.fixture(scope="module")
def evaluated(annotations_slice, tiny_encoder, tmp_path_factory):
    """The whole graph materialised once, with an evaluation folder that has human-labelled fresh-policy
    pairs, a second benchmark file with one broken line and a RewardBench 2 file."""
    root = tmp_path_factory.mktemp("evaluation")
    eval_dir = root / "eval"
    shutil.copytree(REPO_ROOT / "rm_pipeline" / "data" / "eval", eval_dir)
    (eval_dir / "fresh-policy").mkdir()
    fresh = [{"prompt": f"Name a fruit ({i})", "chosen": "An apple.", "rejected": "I won't."} for i in range(5)]
    (eval_dir / "fresh-policy" / "labelled.jsonl").write_text("\n".join(map(json.dumps, fresh)) + "\n")
    (eval_dir / "extra.jsonl").write_text(
        json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math"}) + "\n" + '{"prompt": 3}\n'
    )
    write_jsonl(eval_dir / "rb2.jsonl", GOOD_ROWS)
    (eval_dir / "fresh-policy" / "~$labelled.csv").write_bytes(b"\x0bJane Doe")  # a spreadsheet's lock file
    storage = root / "home"
    defs = build_defs(str(storage), str(annotations_slice), tiny_encoder, str(eval_dir))
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(reward_pipeline_job.name).execute_in_process(
        instance=instance, raise_on_error=False, run_config={"ops": QUICK_TRAINING}
    )
    return {"defs": defs, "instance": instance, "result": result, "storage": storage, "eval_dir": eval_dir}


def materialization(result, key):
    [event] = [
        e for e in result.get_asset_materialization_events() if e.materialization.asset_key.to_user_string() == key
    ]
    return event.materialization.metadata


def test_every_evaluation_source_is_scored_once(evaluated):
    scores = pd.read_parquet(evaluated["storage"] / "tables" / "reward_scores.parquet")
    split = pd.read_parquet(evaluated["storage"] / "tables" / "preference_split.parquet")
    counts = scores["source"].value_counts()
    assert counts["held_out"] == (split["split"] == "eval").sum()
    assert counts["fresh_policy"] == 5
    assert counts["benchmark"] == 100 + 1 + 20  # alpacaeval-easy, the good line of extra.jsonl, rb2's answer pairs
    assert counts["disagreement"] > 0
    assert not scores.duplicated(["source", "file", "pair_id"]).any()
    assert scores[["chosen_reward", "rejected_reward"]].notna().all().all()
    metadata = materialization(evaluated["result"], "reward_scores")
    assert metadata["rows_quarantined"].value == 1  # the broken line, named in the run's log
    [record] = metadata["quarantined"].value.records
    assert record.data == {"file: reason": "extra.jsonl: wrong_type", "count": 1}
    logs = [
        e.message for e in evaluated["instance"].all_logs(evaluated["result"].run_id) if e.step_key == "reward_scores"
    ]
    assert any(message.startswith(f"{evaluated['eval_dir']}/extra.jsonl:2: prompt: wrong_type") for message in logs)
    assert any("sequences, ETA" in message for message in logs)  # progress while scoring
    responses = pd.read_parquet(evaluated["storage"] / "tables" / "response_scores.parquet")
    probes = {f"probe:{name}" for name in PROBE_NAMES}
    assert set(responses["source"]) == {"policy_outputs", "rankings"} | probes
    assert responses.loc[responses["source"] == "policy_outputs", "candidate"].nunique() == 6
    # only the perturbed answers are scored, once each, for the sampled held-out pairs
    probed = responses[responses["source"].isin(probes)]
    held_out = scores[scores["source"] == "held_out"]
    assert probed["group_id"].nunique() == min(100, len(held_out)) and set(probed["group_id"]) <= set(
        held_out["pair_id"]
    )
    assert not probed.duplicated(["source", "group_id"]).any()


def test_the_report_is_written_with_plots_and_the_temperature_is_stored_with_the_model(evaluated):
    metadata = materialization(evaluated["result"], "evaluation_report")
    model_dir = metadata["model_path"].value
    report = json.loads(open(metadata["report_json"].value).read())
    assert report["facts"]["model_path"] == model_dir
    assert report["facts"]["trained_on_split"] == report["facts"]["evaluated_split"]
    assert report["report"]["held_out"]["n"] == metadata["held_out_pairs"].value > 0
    assert set(report["report"]["benchmarks"]) == {"alpacaeval-easy.jsonl", "extra.jsonl", "rb2.jsonl"}
    best = report["report"]["benchmarks"]["rb2.jsonl"]["best_of_n"]
    assert best["rows"] == len(GOOD_ROWS) and "ties_score" in best["subsets"]["Ties"]
    assert metrics_without_interval(report["report"]) == []  # every accuracy and correlation has an interval
    for name in ("held_out_accuracy", "length_spearman", "longer_wins_accuracy", "policy_leaderboard_spearman"):
        interval = metadata[f"{name}_interval"].value  # in the UI too
        assert interval["low"] <= interval["high"] and interval["confidence"] == 0.95
    assert metadata["held_out_accuracy_interval"].value["estimate"] == metadata["held_out_accuracy"].value
    shown = metadata["benchmarks"].value["rb2.jsonl"]
    assert shown["rows"] == len(GOOD_ROWS) and shown["rewardbench2_score"] == best["rewardbench2_score"]
    assert shown["rewardbench2_score_interval"] == best["rewardbench2_score_interval"]
    probe = [row["policy"] for row in report["report"]["length"]["length_probe"]]
    assert probe == ["alpaca-7b_concise", "alpaca-7b", "alpaca-7b_verbose"]
    assert report["report"]["policies"]["leaderboard"]["n_policies"] == 6
    assert report["report"]["policies"]["leaderboard"]["column"] == "length_controlled_winrate"
    rankings = report["report"]["rankings"]
    assert rankings["n_groups"] == 155 and rankings["top1_chance"] < 1 / 3  # the bundled OpenAssistant groups
    assert "| domain " in metadata["by_domain"].value and "| agreement " in metadata["by_agreement"].value
    assert "alpaca-7b_verbose" in metadata["policies"].value
    for name in ("reliability_diagram", "reward_histograms", "reward_vs_length"):
        assert metadata[name].value.startswith(f"![{name}](data:image/png;base64,")
    calibration = json.loads(open(f"{model_dir}/calibration.json").read())  # a sidecar: config.json stays as trained
    assert calibration["reward_temperature"] == pytest.approx(metadata["temperature"].value)
    assert "reward_temperature" not in json.loads(open(f"{model_dir}/config.json").read())
    probes = report["report"]["probes"]
    assert [row["probe"] for row in probes["table"]] == list(PROBE_NAMES)
    worst = probes["worst"]
    assert worst["flip_rate_interval"]["low"] <= worst["flip_rate"] <= worst["flip_rate_interval"]["high"]
    assert metadata["worst_probe_flip_rate"].value == pytest.approx(worst["flip_rate"])
    assert (
        "| probe " in metadata["shortcut_probes"].value
        and "## Shortcut probes" in open(metadata["report"].value).read()
    )


def test_the_model_flows_as_a_value_and_its_published_directory_is_never_rewritten(evaluated):
    storage = evaluated["storage"]
    trained = materialization(evaluated["result"], "reward_model")
    model_dir = Path(trained["model_path"].value)
    pointer = json.loads((storage / "values" / "reward_model.json").read_text())
    assert pointer["type"] == "PublishedModel" and pointer["value"]["path"] == str(model_dir)
    assert pointer["value"]["split_data_version"] == trained["data_version"].value
    scores = pd.read_parquet(storage / "tables" / "reward_scores.parquet")
    assert set(scores["scored_by"]) == {model_dir.name}  # each score row names the model that made it
    scored = materialization(evaluated["result"], "reward_scores")
    skipped = [(Path(r.data["file"]).name, r.data["reason"]) for r in scored["evaluation_files_skipped"].value.records]
    assert ("~$labelled.csv", "lock_file") in skipped and ("README.md", "documentation") in skipped  # named, not read
    # once reward_model is materialised, only each evaluation asset's own sidecar is written into the model directory
    published_at = evaluated["instance"].get_latest_materialization_event(dg.AssetKey("reward_model")).timestamp
    written_after = {path.name for path in model_dir.rglob("*") if path.stat().st_mtime > published_at}
    assert written_after == {"calibration.json", "readiness.json", "promotion.json"}


def test_a_model_that_is_not_ready_is_a_verdict_the_run_succeeds_with_and_says_why(evaluated):
    result = evaluated["result"]
    assert result.success  # not ready is a result, not a failure
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "reward_model_ready"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "fresh_policy_accuracy" in check.metadata["reasons"].value
    metadata = materialization(result, "reward_readiness")
    logs = evaluated["instance"].all_logs(result.run_id)
    events = {
        e.dagster_event_type.value: e.timestamp for e in logs if e.dagster_event and e.step_key == "reward_readiness"
    }
    assert events["ASSET_CHECK_EVALUATION"] >= events["ASSET_MATERIALIZATION"]  # of the verdict it judges
    assert metadata["optimize_against_reward"].value is False
    verdict = json.loads(open(metadata["readiness_file"].value).read())
    assert metadata["readiness_file"].value == f"{metadata['model_path'].value}/readiness.json"
    assert verdict["optimize_against_reward"] is False
    failed = {c["check"] for c in verdict["checks"] if not c["passed"]}
    assert "fresh_policy_accuracy" in failed  # 5 labelled pairs are fewer than the 30 required
    assert "only 5 human-labelled pairs" in " ".join(verdict["reasons"])
    shown = f"{Path(metadata['model_path'].value).name}: NOT READY, {len(failed)} of {len(verdict['checks'])} checks"
    assert check.description.startswith(shown)  # the verdict, where the UI shows a check first
    assert "only 5 human-labelled pairs" in check.description
    # the report's page leads with the same verdict, decided where the report is
    report_page = materialization(result, "evaluation_report")
    assert list(report_page)[:3] == ["verdict", "optimize_against_reward", "checks"]
    assert report_page["verdict"].value == check.description
    assert report_page["optimize_against_reward"].value is False
    assert "FAIL `fresh_policy_accuracy`" in report_page["checks"].value
    markdown = open(metadata["report"].value).read()
    assert "Readiness: NOT READY" in markdown and verdict["recommendation"] in markdown


def test_under_the_strict_setting_a_model_that_is_not_ready_fails_the_run(evaluated):
    job = evaluated["defs"].resolve_job_def(reward_pipeline_job.name)
    result = job.execute_in_process(
        instance=evaluated["instance"],
        raise_on_error=False,
        asset_selection=[dg.AssetKey("reward_readiness")],
        run_config={"ops": {"reward_readiness": {"config": {"strict": True}}}},
    )
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "reward_readiness"
    assert failure.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
    verdict = json.loads(open(materialization(result, "reward_readiness")["readiness_file"].value).read())
    assert verdict["optimize_against_reward"] is False and verdict["strict"] is True


def test_the_gate_passes_when_every_check_does(evaluated):
    job = evaluated["defs"].resolve_job_def(reward_pipeline_job.name)
    result = job.execute_in_process(
        instance=evaluated["instance"],
        raise_on_error=False,
        asset_selection=[dg.AssetKey("evaluation_report"), dg.AssetKey("reward_readiness")],
        run_config={"ops": PERMISSIVE_READINESS},  # the thresholds are the report's: it decides the verdict
    )
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    assert materialization(result, "evaluation_report")["verdict"].value.endswith(": ready")
    verdict = json.loads(open(materialization(result, "reward_readiness")["readiness_file"].value).read())
    assert verdict["optimize_against_reward"] is True and verdict["reasons"] == []


def test_the_leaderboard_column_is_a_setting_and_a_wrong_one_is_named(evaluated):
    job = evaluated["defs"].resolve_job_def(reward_pipeline_job.name)

    def report_with(column):
        return job.execute_in_process(
            instance=evaluated["instance"],
            raise_on_error=False,
            asset_selection=[dg.AssetKey("evaluation_report")],
            run_config={"ops": {"evaluation_report": {"config": {"leaderboard_column": column}}}},
        )

    result = report_with("win_rate")
    assert result.success
    report = json.loads(open(materialization(result, "evaluation_report")["report_json"].value).read())
    board = report["report"]["policies"]["leaderboard"]
    leaderboard = pd.read_csv(
        REPO_ROOT / "rm_pipeline" / "data" / "eval" / "alpaca-eval" / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
        index_col=0,
    )["win_rate"]
    means = {row["policy"]: row["mean_reward"] for row in report["report"]["policies"]["summary"]}
    expected = pd.Series(means).rank().corr(leaderboard.loc[list(means)].rank())  # Spearman = Pearson of ranks
    assert board["column"] == "win_rate" and board["spearman_rho"] == pytest.approx(expected)

    failed = report_with("no_such_column")
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.is_step_failure]
    assert "no column 'no_such_column'" in failure.step_failure_data.error.message
