"""The evaluation report and the readiness verdict, from scored data (no model involved)."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.aggregation import aggregate_votes, review_queue
from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.batch_folder import list_batch_files
from rm_pipeline.lib.evaluation.inputs import (
    EvaluationFolder,
    file_pairs_to_score,
    responses_to_score,
    split_pairs_to_score,
)
from rm_pipeline.lib.evaluation.pair_files import read_pair_file
from rm_pipeline.lib.evaluation.probes import PROBES, TRAINED_AGAINST
from rm_pipeline.lib.evaluation.readiness import ReadinessThresholds, readiness, split_overlap
from rm_pipeline.lib.evaluation.report import ReportSettings, build_report, write_plots, write_report
from rm_pipeline.lib.evaluation.report_markdown import render_markdown
from rm_pipeline.lib.markdown import inline_png, markdown_table
from rm_pipeline.lib.pairs import build_pairs
from rm_pipeline.lib.split import split_by_group

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def scored(source, chosen_reward, rejected_reward, chosen_tokens, rejected_tokens, domain="d", file=None, **extra):
    n = len(chosen_reward)
    return pd.DataFrame(
        {
            "source": source,
            "file": file,
            "pair_id": [f"{source}{i}" for i in range(n)],
            "prompt_id": [f"p{i}" for i in range(n)],
            "domain": domain,
            "n_votes": 1.0,
            "chosen_share": 1.0,
            "in_review_queue": source == "disagreement",
            "chosen_reward": chosen_reward,
            "rejected_reward": rejected_reward,
            "chosen_tokens": chosen_tokens,
            "rejected_tokens": rejected_tokens,
            "truncated": False,
            **extra,
        }
    )


def no_responses():
    return pd.DataFrame(columns=["source", "group_id", "candidate", "rank", "domain", "reward", "tokens", "truncated"])


@pytest.fixture(scope="module")
def split_and_queue(annotations_slice):
    votes = read_annotations(list_batch_files(annotations_slice)).votes
    comparisons = aggregate_votes(votes, "majority_vote").comparisons
    queue = review_queue(comparisons)
    pairs, _ = build_pairs(comparisons, queue["item_id"])
    return split_by_group(pairs, 0.3, 0), queue


def test_scored_pairs_are_the_held_out_side_and_the_untrained_disputed_comparisons(split_and_queue):
    split, queue = split_and_queue
    rows = split_pairs_to_score(split, queue)
    held_out = rows[rows["source"] == "held_out"]
    assert set(held_out["pair_id"]) == set(split.loc[split["split"] == "eval", "pair_id"])
    disputed = rows[rows["source"] == "disagreement"]
    assert len(disputed) > 0
    assert set(disputed["pair_id"]) <= set(queue["item_id"])
    assert not set(disputed["pair_id"]) & set(split["pair_id"]) and disputed["in_review_queue"].all()
    assert (held_out["in_review_queue"] == held_out["pair_id"].isin(queue["item_id"])).all()
    decided = queue.set_index("item_id")["winner"]
    assert decided.loc[disputed["pair_id"]].isin(["a", "b"]).all()  # a tie has no chosen answer to score
    winner_a = decided.loc[disputed["pair_id"]].to_numpy() == "a"
    response_a = queue.set_index("item_id").loc[disputed["pair_id"], "response_a"].to_numpy()
    assert (disputed["chosen"].to_numpy() == response_a)[winner_a].all()


def test_a_length_only_model_is_exposed_by_the_length_audit():
    chosen_tokens = np.array([120, 40, 300, 50, 80, 100, 100])
    rejected_tokens = np.array([60, 90, 100, 200, 80, 95, 104])
    pairs = scored(
        "held_out", chosen_tokens.astype(float), rejected_tokens.astype(float), chosen_tokens, rejected_tokens
    )
    policies = pd.DataFrame(
        {
            "source": "policy_outputs",
            "group_id": "0",
            "candidate": ["alpaca-7b_concise", "alpaca-7b", "alpaca-7b_verbose"],
            "rank": np.nan,
            "domain": "x",
            "reward": [1.0, 2.0, 3.0],
            "tokens": [10, 20, 30],
            "truncated": False,
        }
    )
    report = build_report(pairs, policies, train_domains=["d"])
    length = report["length"]
    assert length["spearman_rho"] == pytest.approx(1.0)
    assert length["model_prefers_longer"] == 1.0
    assert report["held_out"]["accuracy"] == pytest.approx(length["longer_wins_accuracy"])
    assert length["length_matched_n"] == 3  # 80/80, 100/95 and 100/104 are within 10%
    assert [row["policy"] for row in length["length_probe"]] == ["alpaca-7b_concise", "alpaca-7b", "alpaca-7b_verbose"]
    assert [row["mean_reward"] for row in length["length_probe"]] == [1.0, 2.0, 3.0]
    json.dumps(report, allow_nan=False)  # valid JSON: NaN became null


def test_report_sections_count_every_source_apart():
    pairs = pd.concat(
        [
            scored("held_out", [2.0, 1.0, 0.5], [1.0, 2.0, 0.5], [10, 10, 10], [10, 10, 10], domain=["a", "b", "new"]),
            scored("disagreement", [1.0, 0.0], [0.0, 1.0], [5, 5], [5, 5]),
            scored(
                "benchmark",
                [1.0, 1.0],
                [0.0, 2.0],
                [5, 5],
                [5, 5],
                domain=["alpacaeval-easy", "mystery"],
                file="/x/bench.jsonl",
            ),
            scored("fresh_policy", [3.0], [1.0], [5], [5], file="/x/fresh/labels.jsonl"),
        ],
        ignore_index=True,
    )
    report = build_report(pairs, no_responses(), train_domains=["a", "b"])
    assert report["held_out"]["n"] == 3 and report["held_out"]["ties"] == 1
    assert report["held_out"]["accuracy"] == pytest.approx(0.5)  # right, wrong, tie (half)
    assert report["domains"]["spillover_domains"] == ["new"]
    assert report["disagreement"]["n"] == 2 and report["disagreement"]["accuracy"] == 0.5
    bench = report["benchmarks"]["bench.jsonl"]
    subsets = {
        name: {k: v for k, v in row.items() if k != "accuracy_interval"} for name, row in bench["subsets"].items()
    }
    assert subsets == {"alpacaeval-easy": {"n": 1, "accuracy": 1.0}, "mystery": {"n": 1, "accuracy": 0.0}}
    assert bench["subsets"]["mystery"]["accuracy_interval"]["high"] > 0.5  # one pair says little
    assert bench["rewardbench_sections"]["Chat"]["accuracy"] == 1.0
    assert report["fresh_policy"]["n"] == 1 and report["fresh_policy"]["files"]["labels.jsonl"]["accuracy"] == 1.0
    assert report["policies"] == {"n_policies": 0} and report["rankings"] == {"n_groups": 0}


def test_bundled_evaluation_folder_yields_policy_outputs_rankings_and_a_benchmark():
    folder = EvaluationFolder(
        REPO_ROOT / "rm_pipeline" / "data" / "eval", REPO_ROOT / "rm_pipeline" / "data" / "eval" / "alpaca-eval"
    )
    responses = responses_to_score(folder)
    policies = responses[responses["source"] == "policy_outputs"]
    assert policies["candidate"].nunique() == 6 and policies["domain"].nunique() == 5
    rankings = responses[responses["source"] == "rankings"]
    assert rankings.groupby("group_id").size().min() >= 3
    assert json.loads(rankings["prompt"].iloc[0])[0]["role"] == "user"  # the conversation so far
    assert [p.name for p in folder.benchmark_files()] == ["alpacaeval-easy.jsonl"]
    assert folder.fresh_policy_files() == []  # no human-labelled fresh-policy pairs are bundled


def test_a_bad_benchmark_line_is_quarantined_with_file_and_line(tmp_path):
    bench = tmp_path / "mine.jsonl"
    good = {"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math"}
    bench.write_text(
        "\n".join(
            [json.dumps(good), json.dumps({**good, "chosen": None}), "{oops", json.dumps({**good, "prompt": "3+3?"})]
        )
        + "\n"
    )
    rows, quarantine = file_pairs_to_score([bench], "benchmark")
    assert len(rows) == 2 and set(rows["domain"]) == {"math"}
    assert sorted(quarantine["line"]) == [2, 3]
    assert set(quarantine["file"]) == {str(bench)}
    assert dict(zip(quarantine["line"], quarantine["field"]))[2] == "chosen"  # the file's own field name
    assert len(rows) + len(quarantine) == 4


def probe_responses(chosen_reward, flips: dict | None = None):
    """Every probe's answer to each held-out pair, scored below the chosen answer but for ``flips[name]``
    answers of that probe scored above it."""
    n = len(chosen_reward)
    frames = [
        pd.DataFrame(
            {
                "source": f"probe:{probe.name}",
                "group_id": [f"held_out{i}" for i in range(n)],
                "candidate": probe.perturbs,
                "rank": np.nan,
                "domain": "d",
                "reward": np.asarray(chosen_reward)
                - np.where(np.arange(n) < (flips or {}).get(probe.name, 0), -1.0, 1.0),
                "tokens": 10,
                "truncated": False,
            }
        )
        for probe in PROBES
    ]
    return pd.concat(frames, ignore_index=True)


def good_report(fresh_accuracy=0.8, fresh_n=50, flips=None, probes=True):
    chosen = np.linspace(1, 3, 60)
    pairs = pd.concat(
        [
            scored("held_out", chosen, chosen - 3.0, [100] * 60, [100] * 60),  # length-matched, large margins
            scored(
                "fresh_policy",
                [1.0] * fresh_n,
                [0.0 if i < fresh_accuracy * fresh_n else 2.0 for i in range(fresh_n)],
                [5] * fresh_n,
                [5] * fresh_n,
                file="/f/fresh.jsonl",
            ),
        ],
        ignore_index=True,
    )
    return build_report(pairs, probe_responses(chosen, flips) if probes else no_responses(), ["d"])


SPLIT = pd.DataFrame(
    {
        "split": ["train", "train", "eval"],
        "prompt_id": ["p1", "p2", "p3"],
        "prompt": ["Hello there", "Name a colour", "Something else"],
    }
)
PERMISSIVE_ECE = ReadinessThresholds(max_ece=0.5)


def test_every_check_passing_makes_the_model_ready():
    verdict = readiness(good_report(), split_overlap(SPLIT), PERMISSIVE_ECE)
    assert verdict["optimize_against_reward"] is True
    assert [c["check"] for c in verdict["checks"]] == [
        "split_has_no_prompt_overlap",
        "length_matched_accuracy",
        "fresh_policy_accuracy",
        "calibration_error",
        "shortcut_probe_flip_rate",
    ]
    assert all(c["passed"] for c in verdict["checks"]) and verdict["reasons"] == []
    assert "worth it" in verdict["recommendation"]
    # every accuracy a check reports carries its interval, as in the rest of the report
    reasons = {c["check"]: c["reason"] for c in verdict["checks"]}
    for check in ("length_matched_accuracy", "fresh_policy_accuracy", "shortcut_probe_flip_rate"):
        assert re.search(r"[\d.]+ \[[\d.]+, [\d.]+\]", reasons[check]), reasons[check]
    # and the calibration check its own value, as every other check does
    ece = good_report()["calibration"]["ece"]
    assert f"{ece:.3f}" in reasons["calibration_error"], reasons["calibration_error"]


def test_missing_fresh_policy_labels_mean_not_ready_saying_why():
    verdict = readiness(good_report(fresh_n=0), split_overlap(SPLIT), PERMISSIVE_ECE)
    assert verdict["optimize_against_reward"] is False
    [reason] = verdict["reasons"]
    assert reason.startswith("fresh_policy_accuracy: no human-labelled pairs") and "fresh-policy/" in reason
    assert "DPO on the same 2 training pairs" in verdict["recommendation"]


@pytest.mark.parametrize(
    "thresholds, failing",
    [
        (ReadinessThresholds(max_ece=0.5, min_fresh_policy_accuracy=0.9), "fresh_policy_accuracy"),
        (ReadinessThresholds(max_ece=0.5, min_pairs=61), "length_matched_accuracy"),
        (ReadinessThresholds(max_ece=0.0001), "calibration_error"),
    ],
)
def test_each_threshold_can_fail_its_check(thresholds, failing):
    verdict = readiness(good_report(), split_overlap(SPLIT), thresholds)
    assert verdict["optimize_against_reward"] is False
    assert [c["check"] for c in verdict["checks"] if not c["passed"]][:1] == [failing]


def test_the_worst_held_out_probe_fails_readiness_naming_the_probe_and_its_rate():
    report = good_report(flips={"disclaimers": 15})
    section = render_markdown(report, {}, {}).split("## Shortcut probes")[1]
    [row] = [line for line in section.splitlines() if line.startswith("| disclaimers ")]
    cells = [cell.strip() for cell in row.split("|")[2:6]]
    assert cells[0] == "held_out" and cells[2:] == ["60", "0.25 [0.158, 0.372]"]  # family, n, rate [interval]
    assert "Worst held-out: `disclaimers` flips 0.250 of 60 pairs." in section
    verdict = readiness(report, split_overlap(SPLIT), PERMISSIVE_ECE)
    assert verdict["optimize_against_reward"] is False
    [reason] = verdict["reasons"]
    assert reason.startswith("shortcut_probe_flip_rate: worst held-out probe `disclaimers` (rejected answer padded")
    assert "flip rate 0.25 [0.158, 0.372] on 60 pairs" in reason
    lenient = ReadinessThresholds(max_ece=0.5, max_probe_flip_rate=0.3)
    assert readiness(report, split_overlap(SPLIT), lenient)["optimize_against_reward"]


@pytest.mark.parametrize("probe", [p.name for p in PROBES if p.family == TRAINED_AGAINST])
def test_readiness_judges_the_held_out_family_only(probe):
    """A model trained against a family could learn its wordings: only the held-out family decides."""
    report = good_report(flips={probe: 30})
    assert report["probes"]["worst"]["probe"] == probe  # reported, with its rate
    assert report["probes"]["worst_by_family"][TRAINED_AGAINST]["flip_rate"] == pytest.approx(0.5)
    verdict = readiness(report, split_overlap(SPLIT), PERMISSIVE_ECE)
    assert verdict["optimize_against_reward"] is True
    [check] = [c for c in verdict["checks"] if c["check"] == "shortcut_probe_flip_rate"]
    assert check["value"] == 0.0 and "held-out probe" in check["reason"]


def test_without_probe_answers_the_probe_check_fails_for_want_of_evidence():
    report = good_report(probes=False)
    assert report["probes"]["sampled_pairs"] == 0 and report["probes"]["worst"] is None
    verdict = readiness(report, split_overlap(SPLIT), PERMISSIVE_ECE)
    assert verdict["reasons"] == [
        "shortcut_probe_flip_rate: no shortcut probes were scored: materialise shortcut_probes, then reward_scores"
    ]
    too_few = readiness(good_report(), split_overlap(SPLIT), ReadinessThresholds(max_ece=0.5, min_pairs=61))
    [probe_check] = [c for c in too_few["checks"] if c["check"] == "shortcut_probe_flip_rate"]
    assert not probe_check["passed"] and "only 60 pairs count for the `authority` probe" in probe_check["reason"]


def test_the_same_prompt_under_two_ids_is_overlap():
    leaky = SPLIT.assign(prompt=["Hello there", "Name a colour", "hello   THERE"])
    overlap = split_overlap(leaky)
    assert overlap["shared_prompt_ids"] == 0 and overlap["shared_prompt_texts"] == 1
    verdict = readiness(good_report(), overlap, PERMISSIVE_ECE)
    assert verdict["checks"][0]["passed"] is False and verdict["optimize_against_reward"] is False


def test_report_files_carry_every_section_and_the_verdict(tmp_path):
    pairs = scored("held_out", np.linspace(0, 2, 40), np.linspace(0.5, 1, 40), [10] * 40, [12] * 40)
    report = build_report(pairs, no_responses(), ["d"])
    plots = write_plots(pairs, no_responses(), report, tmp_path)
    assert sorted(plots) == ["reliability_diagram", "reward_histograms", "reward_vs_length"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in plots.values())
    verdict = readiness(report, split_overlap(SPLIT))
    document = {
        "facts": {"model_name": "rm-x"},
        "plots": {k: p.name for k, p in plots.items()},
        "report": report,
        "readiness": verdict,
    }
    json_path, markdown_path = write_report(tmp_path, document)
    assert json.loads(json_path.read_text())["readiness"]["optimize_against_reward"] is False
    markdown = markdown_path.read_text()
    for heading in (
        "Readiness: NOT READY",
        "Held-out pairs",
        "By domain",
        "Disagreement slice",
        "Length bias",
        "Calibration",
        "Fresh policy outputs",
        "K > 2",
        "External benchmark files",
        "Shortcut probes",
        "Plots",
    ):
        assert heading in markdown
    for check in verdict["checks"]:
        assert check["check"] in markdown
    assert "![reliability_diagram](reliability_diagram.png)" in markdown
    assert render_markdown(report, {}, {}) != markdown  # without a verdict, no readiness section


def test_policy_outputs_can_come_from_any_folder(tmp_path):
    from rm_pipeline.resources import EvaluationSource

    outputs = tmp_path / "my_policies"
    (outputs / "model_outputs").mkdir(parents=True)
    (outputs / "prompts.jsonl").write_text(json.dumps({"idx": 0, "dataset": "mine", "instruction": "Say hi"}) + "\n")
    for policy in ("sft-v1", "sft-v2"):
        (outputs / "model_outputs" / f"{policy}.jsonl").write_text(json.dumps({"idx": 0, "output": "hi"}) + "\n")
    folder = EvaluationSource(directory=str(tmp_path / "empty"), policy_outputs=str(outputs)).folder()
    responses = responses_to_score(folder)
    assert sorted(responses["candidate"]) == ["sft-v1", "sft-v2"] and set(responses["domain"]) == {"mine"}
    assert folder.benchmark_files() == [] and folder.ranking_files() == []


def test_queued_pairs_trained_with_include_disputed_are_scored_once_or_not_at_all(annotations_slice):
    votes = read_annotations(list_batch_files(annotations_slice)).votes
    comparisons = aggregate_votes(votes, "majority_vote").comparisons
    queue = review_queue(comparisons)
    pairs, _ = build_pairs(comparisons, queue["item_id"], include_disputed=True)
    split = split_by_group(pairs, 0.3, 0)
    rows = split_pairs_to_score(split, queue)
    assert rows["pair_id"].is_unique
    queued_in_split = split[split["pair_id"].isin(queue["item_id"])]
    assert set(queued_in_split["split"]) == {"train", "eval"}
    flagged = rows.loc[rows["in_review_queue"], "pair_id"]
    assert set(queued_in_split.loc[queued_in_split["split"] == "eval", "pair_id"]) <= set(flagged)
    assert not set(queued_in_split.loc[queued_in_split["split"] == "train", "pair_id"]) & set(rows["pair_id"])
    scored_rows = rows.assign(
        chosen_reward=1.0, rejected_reward=0.0, chosen_tokens=5, rejected_tokens=5, truncated=False
    )
    report = build_report(scored_rows, no_responses(), split["domain"].unique())
    assert report["disagreement"]["n"] == len(flagged) and report["disagreement"]["accuracy"] == 1.0


def test_markdown_table_shows_the_columns_asked_for_with_three_significant_digits():
    rows = [
        {"policy": "a", "mean_reward": 1.23456, "n": 3, "extra": "hidden"},
        {"policy": "b", "mean_reward": None, "n": 4},
        {"policy": "c", "mean_reward": float("nan"), "n": 5},
    ]
    table = markdown_table(rows, ["policy", "n", "mean_reward"]).splitlines()
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == ["policy", "n", "mean_reward"]
    assert [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]] == [
        ["a", "3", "1.23"],
        ["b", "4", "n/a"],
        ["c", "5", "n/a"],
    ]
    assert "extra" in markdown_table(rows)  # every column by default
    assert markdown_table([]) == "_none_\n"


def test_inline_png_embeds_the_image_itself(tmp_path):
    path = tmp_path / "plot.png"
    image = b"\x89PNG fake"
    path.write_bytes(image)
    assert inline_png(path, "curves") == f"![curves](data:image/png;base64,{base64.b64encode(image).decode()})"


def test_small_domains_fold_into_other_and_every_row_has_an_interval():
    rng = np.random.default_rng(0)
    big = scored("held_out", rng.normal(1, 1, 60), rng.normal(0, 1, 60), [5] * 60, [5] * 60, domain="big")
    small = [scored("held_out", [1.0] * 3, [0.0] * 3, [5] * 3, [5] * 3, domain=name) for name in ("tiny", "wee")]
    pairs = pd.concat([big, *small], ignore_index=True).assign(pair_id=lambda f: [f"h{i}" for i in range(len(f))])
    pairs["prompt_id"] = [f"p{i // 2}" for i in range(len(pairs))]  # two pairs per prompt group
    report = build_report(pairs, no_responses(), train_domains=["big", "tiny"], settings=ReportSettings())
    rows = {row["domain"]: row for row in report["domains"]["table"]}
    assert set(rows) == {"big", "other (2 domains)"} and report["domains"]["folded_domains"] == ["tiny", "wee"]
    assert sum(row["n"] for row in rows.values()) == report["held_out"]["n"] == 66
    assert rows["other (2 domains)"]["accuracy"] == 1.0
    assert report["domains"]["spillover_domains"] == ["wee"]  # spillover still sees the domains as they are
    for row in rows.values():
        assert row["accuracy_interval"]["low"] <= row["accuracy"] <= row["accuracy_interval"]["high"]
    assert {row["domain"] for row in report["domains"]["all_domains"]} == {"big", "tiny", "wee"}  # JSON keeps each
    interval = report["held_out"]["accuracy_interval"]
    assert interval["low"] < report["held_out"]["accuracy"] < interval["high"] and interval["groups"] == 33
    markdown = render_markdown(report, {}, {})
    assert "| other (2 domains) |" in markdown and "| tiny " not in markdown
    other = rows["other (2 domains)"]["accuracy_interval"]
    assert f"1 [{other['low']:.3g}, 1]" in markdown  # the folded row's accuracy shown with its interval


def test_the_domain_minimum_is_a_setting():
    rng = np.random.default_rng(0)
    big = scored("held_out", rng.normal(1, 1, 30), rng.normal(0, 1, 30), [5] * 30, [5] * 30, domain="big")
    small = scored("held_out", [1.0] * 3, [0.0] * 3, [5] * 3, [5] * 3, domain="tiny")
    pairs = pd.concat([big, small], ignore_index=True).assign(pair_id=lambda f: [f"h{i}" for i in range(len(f))])
    folded = build_report(pairs, no_responses(), ["big"], settings=ReportSettings(min_domain_pairs=5))
    kept = build_report(pairs, no_responses(), ["big"], settings=ReportSettings(min_domain_pairs=3))
    assert [row["domain"] for row in folded["domains"]["table"]] == ["big", "other (1 domains)"]
    assert [row["domain"] for row in kept["domains"]["table"]] == ["big", "tiny"] and not kept["domains"][
        "folded_domains"
    ]
    assert "| tiny " in render_markdown(kept, {}, {})


METRIC = __import__("re").compile(r"(accuracy|rho|tau|agreement|score|prefers_longer|preferred|preferred_hard)$")


def metrics_without_interval(value, path="report") -> list[str]:
    """Every accuracy, rate, correlation and score in a report that lacks ``<name>_interval`` beside it."""
    missing = []
    if isinstance(value, dict):
        for key, item in value.items():
            if METRIC.search(key) and isinstance(item, (int, float)) and not isinstance(item, bool):
                interval = value.get(f"{key}_interval")
                if not (isinstance(interval, dict) and interval["low"] <= interval["high"]):
                    missing.append(f"{path}.{key}")
            missing += metrics_without_interval(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            missing += metrics_without_interval(item, f"{path}[{index}]")
    return missing


def test_every_accuracy_and_correlation_in_the_report_has_an_interval(tmp_path):
    from rm_pipeline_tests.test_rewardbench2 import GOOD_ROWS, write_jsonl
    from rm_pipeline_tests.test_rewardbench2 import scored as rb2_scored

    rng = np.random.default_rng(1)
    n = 40
    held = scored("held_out", rng.normal(1, 1, n), rng.normal(0, 1, n), rng.integers(5, 50, n), rng.integers(5, 50, n))
    held["domain"] = ["big"] * 30 + ["small"] * 10
    held["chosen_share"] = rng.choice([1.0, 0.75, 0.6], n)
    held["n_votes"] = 3.0
    queue = scored("disagreement", rng.normal(0, 1, 6), rng.normal(0, 1, 6), [5] * 6, [7] * 6)
    rb1 = scored("benchmark", rng.normal(1, 1, 8), rng.normal(0, 1, 8), [5] * 8, [6] * 8, file="/x/rb1.jsonl")
    rb1["domain"] = ["alpacaeval-easy"] * 4 + ["hep-go"] * 4
    rb2_pairs, _ = read_pair_file(write_jsonl(tmp_path / "rb2.jsonl", GOOD_ROWS))
    rb2 = rb2_scored(rb2_pairs).assign(source="benchmark", prompt_id=None, n_votes=np.nan, chosen_share=np.nan)
    fresh = scored("fresh_policy", rng.normal(1, 1, 5), rng.normal(0, 1, 5), [5] * 5, [5] * 5, file="/x/f/l.jsonl")
    pairs = pd.concat([held, queue, rb1, rb2, fresh], ignore_index=True)
    policies = pd.DataFrame(
        {
            "source": "policy_outputs",
            "group_id": [str(i % 6) for i in range(24)],
            "candidate": [f"policy{i // 6}" for i in range(24)],
            "rank": np.nan,
            "domain": "x",
            "reward": rng.normal(0, 1, 24),
            "tokens": rng.integers(5, 80, 24),
            "truncated": False,
        }
    )
    rankings = pd.DataFrame(
        {
            "source": "rankings",
            "group_id": [f"g{i // 3}" for i in range(15)],
            "candidate": [f"m{i}" for i in range(15)],
            "rank": [i % 3 for i in range(15)],
            "domain": "oasst",
            "reward": rng.normal(0, 1, 15),
            "tokens": 10,
            "truncated": False,
        }
    )
    board = pd.Series([10.0, 20.0, 30.0, 40.0], index=[f"policy{i}" for i in range(4)], name="winrate")
    report = build_report(
        pairs, pd.concat([policies, rankings], ignore_index=True), ["big"], board, ReportSettings(min_domain_pairs=15)
    )
    # every section is there to be checked
    assert report["policies"]["leaderboard"]["spearman_rho"] is not None and report["rankings"]["n_groups"] == 5
    assert "best_of_n" in report["benchmarks"]["rb2.jsonl"] and "rewardbench_score" in report["benchmarks"]["rb1.jsonl"]
    assert report["domains"]["spillover"]["accuracy"] is not None and report["length"]["responses_spearman_rho"]
    assert metrics_without_interval(report) == []
    assert report["held_out"]["accuracy_interval"]["confidence"] == 0.95
    narrower = build_report(pairs, no_responses(), ["big"], settings=ReportSettings(confidence=0.5))
    assert narrower["held_out"]["accuracy_interval"]["confidence"] == 0.5  # the setting reaches the intervals
    # a metric without an interval is caught
    assert metrics_without_interval({"x": {"accuracy": 0.5}}) == ["report.x.accuracy"]
    markdown = render_markdown(report, {}, {})
    assert "over 4 policies (interval: a bootstrap over the 4 policies)" in markdown
    best = report["benchmarks"]["rb2.jsonl"]["best_of_n"]
    score = best["rewardbench2_score_interval"]
    assert f"RewardBench 2 score (mean over the subsets present) **{best['rewardbench2_score']:.3g} [" in markdown
    assert f"{score['low']:.3g}, {score['high']:.3g}]**" in markdown
    assert "Ties: score " in markdown and "| Focus " in markdown
    assert "best_of_n" not in report["benchmarks"]["rb1.jsonl"]  # pairs without the flag (NaN) are not RB2 rows
    assert markdown.count("RewardBench 2 rows:") == 1
