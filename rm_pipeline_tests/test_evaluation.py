"""Pure evaluation functions on hand-made frames whose right answers are known by construction."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.evaluation.accuracy import grouped_accuracy, pair_accuracy
from rm_pipeline.lib.evaluation.calibration import (
    calibration,
    fit_temperature,
    negative_log_likelihood,
    win_probability,
)
from rm_pipeline.lib.evaluation.length_bias import length_audit
from rm_pipeline.lib.evaluation.pair_files import read_pair_file
from rm_pipeline.lib.evaluation.policies import (
    policy_ranking,
    policy_reward_summary,
    read_leaderboard,
    read_policy_outputs,
)
from rm_pipeline.lib.evaluation.rankings import oasst_ranked_groups, ranking_agreement
from rm_pipeline.lib.evaluation.rewardbench import (
    REWARDBENCH_EXAMPLE_COUNTS,
    REWARDBENCH_SECTIONS,
    rewardbench_accuracy,
)
from rm_pipeline.lib.evaluation.slices import by_agreement, by_domain
from rm_pipeline.lib.evaluation.statistics import _average_ranks, correlation_with_interval, spearman
from rm_pipeline.lib.split import NO_DOMAIN

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL_DATA = REPO_ROOT / "rm_pipeline" / "data" / "eval"
OASST_FILE = EVAL_DATA / "oasst" / "en_100_tree.jsonl"
ALPACA_EVAL = EVAL_DATA / "alpaca-eval"
SHARED = REPO_ROOT.parent / "shared" / "data"
BUNDLED_POLICIES = [
    "alpaca-7b",
    "alpaca-7b_concise",
    "alpaca-7b_verbose",
    "falcon-7b-instruct",
    "gpt4_1106_preview",
    "llama-2-70b-chat-hf",
]
ALPACA_EVAL_DATASETS = ["helpful_base", "koala", "oasst", "selfinstruct", "vicuna"]  # AlpacaEval's five sources
PROMPTS_PER_DATASET = 20  # scripts/sample_eval_data.py --per-dataset default


def pairs(chosen, rejected, chosen_tokens=None, rejected_tokens=None, **extra) -> pd.DataFrame:
    n = len(chosen)
    frame = pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(n)],
            "chosen_reward": chosen,
            "rejected_reward": rejected,
            "chosen_tokens": chosen_tokens if chosen_tokens is not None else [10] * n,
            "rejected_tokens": rejected_tokens if rejected_tokens is not None else [10] * n,
            "domain": ["general"] * n,
        }
    )
    for name, values in extra.items():
        frame[name] = values
    return frame


# --------------------------------------------------------------------------- accuracy and ties


def test_ties_are_counted_as_ties_and_half_correct():
    # correct (2 > 1), wrong (0 < 1), exact tie, tie within 1e-6 (a float-noise difference).
    frame = pairs([2.0, 0.0, 0.5, 1.0 + 1e-7], [1.0, 1.0, 0.5, 1.0])
    result = pair_accuracy(frame)
    assert (result["n"], result["correct"], result["wrong"], result["ties"]) == (4, 1, 1, 2)
    assert result["accuracy"] == pytest.approx((1 + 2 / 2) / 4)  # ties count half: (correct + ties/2) / n
    assert result["mean_margin"] == pytest.approx((1 - 1 + 0 + 1e-7) / 4)
    assert (result["reward_min"], result["reward_max"]) == (0.0, 2.0)
    assert result["reward_mean"] == pytest.approx((2 + 0 + 0.5 + 1 + 1e-7 + 1 + 1 + 0.5 + 1) / 8)


def test_a_constant_reward_model_scores_chance_with_every_pair_a_tie():
    result = pair_accuracy(pairs([0.3] * 5, [0.3] * 5))
    assert result["ties"] == 5 and result["correct"] == result["wrong"] == 0
    assert result["accuracy"] == 0.5


def test_empty_frame_gives_zero_pairs_and_nan_statistics():
    result = pair_accuracy(pairs([], []))
    assert result["n"] == 0 and math.isnan(result["accuracy"]) and math.isnan(result["reward_mean"])


def test_grouped_accuracy_matches_pair_accuracy_per_group():
    frame = pairs([1, 0, 1, 1, 0.2], [0, 1, 1, 0, 0.1])
    groups = pd.Series(["x", "x", "y", "y", "y"], name="g")
    table = grouped_accuracy(frame, groups)
    for key, members in frame.groupby(groups.to_numpy()):
        expected = pair_accuracy(members)
        assert table.loc[key, ["n", "correct", "wrong", "ties"]].tolist() == [
            expected["n"],
            expected["correct"],
            expected["wrong"],
            expected["ties"],
        ]
        assert table.loc[key, "accuracy"] == pytest.approx(expected["accuracy"])


# --------------------------------------------------------------------------- slices


def test_by_domain_lists_domains_absent_from_training_separately():
    frame = pairs([1, 1, 0, 1, 0], [0, 0, 1, 0, 1])
    frame["domain"] = ["code", "code", "math", "poetry", None]
    result = by_domain(frame, train_domains=["code", "legal"])
    table = result["table"]
    assert table.loc["code", "accuracy"] == 1.0 and table.loc["code", "in_training"]
    assert result["spillover_domains"] == sorted(["math", "poetry", NO_DOMAIN])
    # Spillover pairs: math (wrong), poetry (right), no domain (wrong) -> 1 of 3.
    assert result["spillover"]["n"] == 3 and result["spillover"]["accuracy"] == pytest.approx(1 / 3)
    assert list(table.index[:1]) == ["code"]  # training domains come first
    assert "legal" not in table.index  # a training domain with no eval pairs has no row


def test_by_domain_without_spillover():
    result = by_domain(pairs([1], [0]), train_domains=["general"])
    assert result["spillover_domains"] == [] and result["spillover"] is None


def test_by_agreement_bins_chosen_share_and_keeps_single_votes_apart():
    frame = pairs(
        [1, 0, 1, 1, 0, 1, 1],
        [0, 1, 0, 0, 1, 0, 0],
        chosen_share=[1.0, 1.0, 2 / 3, 0.75, 0.5, 1.0, np.nan],
        n_votes=[3, 3, 3, 4, 2, 1, 2],
    )
    table = by_agreement(frame)
    assert list(table.index) == ["unanimous", "at least 2/3", "below 2/3", "single vote", "unknown"]
    assert table["n"].tolist() == [2, 2, 1, 1, 1]
    assert table.loc["unanimous", "accuracy"] == 0.5  # one right, one wrong
    assert table.loc["below 2/3", "accuracy"] == 0.0


def test_by_agreement_without_agreement_columns_is_all_unknown():
    table = by_agreement(pairs([1, 0], [0, 1]))
    assert list(table.index) == ["unknown"] and table.loc["unknown", "n"] == 2


# --------------------------------------------------------------------------- length bias


def test_a_model_that_always_prefers_the_longer_answer():
    chosen_tokens = [120, 40, 300, 50, 80]
    rejected_tokens = [60, 90, 100, 200, 80]
    # reward = length: the model prefers whichever answer is longer, and ties on equal lengths.
    frame = pairs(
        [float(t) for t in chosen_tokens], [float(t) for t in rejected_tokens], chosen_tokens, rejected_tokens
    )
    audit = length_audit(frame)
    assert audit["model_prefers_longer"] == 1.0
    assert audit["length_differs_n"] == 4 and audit["equal_length"] == 1
    # Longer-wins baseline: chosen longer in pairs 0 and 2, shorter in 1 and 3, equal in 4 -> (2 + 0.5) / 5.
    assert audit["longer_wins_accuracy"] == pytest.approx(2.5 / 5)
    # Such a model *is* the longer-wins baseline, so its accuracy equals the baseline's.
    assert pair_accuracy(frame)["accuracy"] == pytest.approx(audit["longer_wins_accuracy"])
    # Reward is a monotone function of length: rank correlation 1 over all 10 answers.
    assert audit["spearman_rho"] == pytest.approx(1.0) and audit["spearman_n"] == 10


def test_a_model_that_always_prefers_the_shorter_answer_never_agrees_with_length():
    frame = pairs([-120.0, -40.0], [-60.0, -90.0], [120, 40], [60, 90])
    audit = length_audit(frame)
    assert audit["model_prefers_longer"] == 0.0 and audit["spearman_rho"] == pytest.approx(-1.0)


def test_length_matched_slice_is_within_ten_percent_of_the_longer_answer():
    # |100 - 91| = 9 <= 10% of 100: matched; |100 - 89| = 11 > 10: not; 50 vs 55: 5 <= 5.5: matched;
    # 10 vs 10: matched (equal). The model is right on the first two and wrong on the others.
    frame = pairs([1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [100, 100, 50, 10], [91, 89, 55, 10])
    audit = length_audit(frame)
    assert audit["length_matched_n"] == 3
    assert audit["length_matched_accuracy"] == pytest.approx(1 / 3)


def test_no_length_matched_pairs_gives_nan_not_an_error():
    audit = length_audit(pairs([1.0], [0.0], [100], [10]))
    assert audit["length_matched_n"] == 0 and math.isnan(audit["length_matched_accuracy"])


def test_length_audit_correlates_extra_scored_answers_too():
    extra = pd.DataFrame({"reward": [3.0, 2.0, 1.0, 0.0], "tokens": [10, 20, 30, 40]})  # strictly decreasing
    audit = length_audit(pairs([1.0], [0.0]), rewards_and_lengths=extra)
    assert audit["responses_spearman_rho"] == pytest.approx(-1.0) and audit["responses_spearman_n"] == 4
    assert math.isnan(audit["spearman_rho"])  # two answers of equal length: correlation undefined


# --------------------------------------------------------------------------- calibration


def test_ece_on_a_hand_computed_example():
    # margin ln 3 -> sigmoid = 3/4, and the chosen answer always won: gap 1/4 in the 0.7-0.8 bin.
    # Symmetrised, the mirror points sit at 1/4 with observed 0: gap 1/4 again, so ECE = 1/4.
    result = calibration(np.full(4, math.log(3)), np.ones(4))
    assert result["ece"] == pytest.approx(0.25)
    table = result["table"].set_index("bin")
    assert table.loc[7, "mean_predicted"] == pytest.approx(0.75) and table.loc[7, "observed"] == 1.0
    assert table.loc[2, "mean_predicted"] == pytest.approx(0.25) and table.loc[2, "observed"] == 0.0
    assert table["count"].sum() == 8 and table.loc[7, "count"] == 4
    # margin 0 predicts 1/2; one win and one loss observe 1/2: perfectly calibrated.
    assert calibration(np.zeros(2), np.array([1.0, 0.0]))["ece"] == pytest.approx(0.0)


def test_perfectly_calibrated_synthetic_margins_have_ece_near_zero():
    rng = np.random.default_rng(0)
    margins = rng.normal(0.0, 2.0, 50_000)
    outcomes = (rng.random(margins.size) < win_probability(margins)).astype(float)
    result = calibration(margins, outcomes)
    # 100,000 symmetrised points in 10 bins: ~10,000 a bin, sampling error per bin at most
    # 0.5 / sqrt(10,000) = 0.005, so the count-weighted mean gap is well under 0.02.
    assert result["ece"] < 0.02
    assert result["table"]["count"].sum() == 2 * margins.size


def test_symmetrised_reliability_diagram_mirrors_and_ignores_orientation():
    rng = np.random.default_rng(1)
    margins = rng.normal(0.5, 1.5, 1_000)
    outcomes = (rng.random(margins.size) < 0.7).astype(float)
    result = calibration(margins, outcomes)
    table = result["table"]
    assert table["count"].tolist() == table["count"].tolist()[::-1]
    flipped = calibration(-margins, 1 - outcomes)  # the same pairs with the sides swapped
    assert flipped["ece"] == pytest.approx(result["ece"])
    # The mirrored term of the likelihood equals the original one: symmetrising leaves the NLL alone.
    assert result["nll"] == pytest.approx(negative_log_likelihood(margins, outcomes))


def test_fit_temperature_recovers_the_temperature_that_generated_the_outcomes():
    rng = np.random.default_rng(2)
    margins = rng.normal(0.0, 3.0, 50_000)
    outcomes = (rng.random(margins.size) < win_probability(margins, temperature=2.0)).astype(float)
    fit = fit_temperature(margins, outcomes)
    assert fit["temperature"] == pytest.approx(2.0, rel=0.05)
    assert not fit["at_bound"]
    assert fit["nll_after"] < fit["nll_before"] and fit["ece_after"] < fit["ece_before"]
    assert fit["ece_after"] < 0.02  # calibrated after the fit: same sampling bound as above


def test_fit_temperature_on_perfectly_separated_pairs_stops_at_the_bound_and_says_so():
    fit = fit_temperature(np.array([0.5, 1.0, 2.0]), bounds=(0.05, 20.0))
    assert fit["at_bound"] and fit["temperature"] == pytest.approx(0.05, rel=1e-2)


def test_fit_temperature_with_soft_labels_has_a_closed_form_optimum():
    # One margin m with soft label q: NLL is minimised where sigmoid(m / T) = q.
    # m = ln 3 and q = 0.6: sigmoid(ln(3) / T) = 0.6 <=> ln(3) / T = ln(0.6 / 0.4) <=> T = ln 3 / ln 1.5.
    fit = fit_temperature(np.array([math.log(3)]), np.array([0.6]))
    assert fit["temperature"] == pytest.approx(math.log(3) / math.log(1.5), rel=1e-4)


# --------------------------------------------------------------------------- K-way rankings


def ranked(rewards_by_group: dict[str, list[float]]) -> pd.DataFrame:
    """Groups whose human ranks are 0, 1, 2, ... in list order (0 = best)."""
    return pd.DataFrame(
        [
            {"group_id": group, "rank": rank, "reward": reward}
            for group, rewards in rewards_by_group.items()
            for rank, reward in enumerate(rewards)
        ]
    )


def test_a_perfectly_ordered_ranking_has_tau_one_and_top1_one():
    result = ranking_agreement(ranked({"a": [3.0, 2.0, 1.0], "b": [0.9, 0.5, 0.1, -2.0]}))
    assert result["top1_agreement"] == 1.0 and result["mean_kendall_tau"] == pytest.approx(1.0)
    assert result["n_groups"] == 2 and result["n_replies"] == 7
    assert result["top1_chance"] == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_a_reversed_ranking_has_tau_minus_one_and_top1_zero():
    result = ranking_agreement(ranked({"a": [1.0, 2.0, 3.0]}))
    assert result["top1_agreement"] == 0.0 and result["mean_kendall_tau"] == pytest.approx(-1.0)


def test_ties_for_the_top_reward_score_the_expected_random_tie_break():
    # The human's best and one other reply share the top reward: a coin flip picks the best half the time.
    # Kendall tau-b for rewards (2, 2, 1) against preference (3, 2, 1): concordant pairs 2, discordant 0,
    # one tie in x: tau_b = 2 / sqrt((3 - 1) * 3) = 2 / sqrt(6).
    result = ranking_agreement(ranked({"a": [2.0, 2.0, 1.0]}))
    assert result["top1_agreement"] == 0.5
    assert result["mean_kendall_tau"] == pytest.approx(2 / math.sqrt(6))


def test_constant_rewards_leave_tau_undefined_and_counted():
    result = ranking_agreement(ranked({"flat": [1.0, 1.0, 1.0], "good": [3.0, 2.0, 1.0]}))
    assert result["tau_undefined"] == 1 and result["mean_kendall_tau"] == pytest.approx(1.0)
    assert result["top1_agreement"] == pytest.approx((1 / 3 + 1) / 2)  # flat group: 1 of 3 tied tops is best


def count_ranked_groups(path: Path) -> tuple[int, int]:
    """An independent, recursive count of sibling groups with more than two ranked, undeleted replies."""

    def walk(message):
        ranked = [r for r in message.get("replies", []) if r.get("rank") is not None and not r.get("deleted")]
        groups, replies = (1, len(ranked)) if len(ranked) > 2 else (0, 0)
        for reply in message.get("replies", []):
            sub_groups, sub_replies = walk(reply)
            groups, replies = groups + sub_groups, replies + sub_replies
        return groups, replies

    totals = [walk(json.loads(line)["prompt"]) for line in open(path, encoding="utf-8") if line.strip()]
    return sum(g for g, _ in totals), sum(r for _, r in totals)


def test_oasst_ranked_groups_on_the_bundled_trees():
    groups = oasst_ranked_groups(OASST_FILE)
    expected_groups, expected_replies = count_ranked_groups(OASST_FILE)
    assert expected_groups > 0
    assert groups["group_id"].nunique() == expected_groups and len(groups) == expected_replies
    sizes = groups.groupby("group_id")["k"].agg(["first", "size"])
    assert (sizes["first"] == sizes["size"]).all() and (sizes["size"] > 2).all()
    # Each group is a ranking: ranks 0..K-1, each once, and the context ends with the shared parent.
    assert groups.groupby("group_id")["rank"].apply(lambda r: sorted(r) == list(range(len(r)))).all()
    for context in groups.drop_duplicates("group_id")["context"]:
        assert context[0]["role"] == "user"
        assert all(a["role"] != b["role"] for a, b in zip(context, context[1:]))  # turns alternate
    # Human rank as the reward reproduces the human order exactly.
    perfect = ranking_agreement(groups.assign(reward=-groups["rank"]))
    assert perfect["top1_agreement"] == 1.0 and perfect["mean_kendall_tau"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- RewardBench


def test_rewardbench_section_weighting_on_a_tiny_example():
    # alpacaeval-easy: 2 of 2 right (1.0); mt-bench-easy: 1 right + 1 wrong (0.5); shp: 1.0;
    # summarize: 1 wrong + 1 tie (0.25); my-own-set: 0.0 (unknown name: per-subset only).
    frame = pairs(
        [1, 1, 1, 0, 1, 0, 0.5, 0],
        [0, 0, 0, 1, 0, 1, 0.5, 1],
        subset=[
            "alpacaeval-easy",
            "alpacaeval-easy",
            "mt-bench-easy",
            "mt-bench-easy",
            "shp",
            "summarize",
            "summarize",
            "my-own-set",
        ],
    )
    result = rewardbench_accuracy(frame)
    subsets = result["subsets"].set_index("subset")
    assert subsets.loc["summarize", "ties"] == 1 and subsets.loc["summarize", "accuracy"] == 0.25
    assert subsets.loc["my-own-set", "accuracy"] == 0.0 and pd.isna(subsets.loc["my-own-set", "section"])
    sections = result["sections"].set_index("section")
    # Chat weights by RewardBench's EXAMPLE_COUNTS (alpacaeval-easy 100, mt-bench-easy 28), not by the
    # file's 2 + 2 rows: (100 * 1.0 + 28 * 0.5) / 128 = 114 / 128.
    chat = 114 / 128
    assert sections.loc["Chat", "accuracy"] == pytest.approx(chat)
    assert sections.loc["Chat", "subsets_present"] == 2 and sections.loc["Chat", "subsets_expected"] == 5
    prior = (1.0 + 0.25) / 2  # Prior Sets: plain mean of the prior-set subsets present
    assert sections.loc["Prior Sets", "accuracy"] == pytest.approx(prior)
    assert list(sections.index) == ["Chat", "Prior Sets"]
    # Overall: Chat weight 2, Prior Sets weight 1, over the sections present.
    assert result["score"] == pytest.approx((2 * chat + 1 * prior) / 3)


def test_rewardbench_unknown_subsets_only_get_per_subset_accuracy():
    result = rewardbench_accuracy(pairs([1, 0], [0, 1], subset=["mine", "yours"]))
    assert result["score"] is None and result["sections"].empty
    assert result["subsets"].set_index("subset")["accuracy"].to_dict() == {"mine": 1.0, "yours": 0.0}


def test_rewardbench_mapping_covers_every_counted_subset():
    in_sections = {subset for subsets in REWARDBENCH_SECTIONS.values() for subset in subsets}
    assert in_sections == set(REWARDBENCH_EXAMPLE_COUNTS)


# --------------------------------------------------------------------------- fresh policy outputs


def test_policy_ranking_is_spearman_over_the_policies_both_sides_know():
    rewards = pd.Series({"a": 0.1, "b": 0.5, "c": 0.9, "unlisted": 2.0})
    board = pd.Series({"a": 10.0, "b": 20.0, "c": 95.0, "other": 50.0})
    result = policy_ranking(rewards, board)
    assert result["n_policies"] == 3 and result["missing"] == ["unlisted"]
    assert result["spearman_rho"] == pytest.approx(1.0)  # same order, different spacing
    assert policy_ranking(-rewards, board)["spearman_rho"] == pytest.approx(-1.0)


def test_read_leaderboard_gives_the_column_indexed_by_policy_or_none_without_a_file(tmp_path):
    path = tmp_path / "board.csv"
    path.write_text(",win_rate,mode\nalpaca-7b,26.5,verified\ngpt4,50,verified\n")
    board = read_leaderboard(path, "win_rate")
    assert board.to_dict() == {"alpaca-7b": 26.5, "gpt4": 50.0} and board.name == "win_rate"
    assert read_leaderboard(tmp_path / "absent.csv", "win_rate") is None


def test_read_leaderboard_names_the_file_and_the_columns_it_has(tmp_path):
    path = tmp_path / "board.csv"
    path.write_text(",win_rate,mode\nalpaca-7b,26.5,verified\ngpt4,n/a,verified\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: no column 'lc_win_rate'; it has win_rate, mode"):
        read_leaderboard(path, "lc_win_rate")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: line 3: win_rate: 'n/a' is not a number"):
        read_leaderboard(path, "win_rate")
    path.write_text("")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a leaderboard CSV"):
        read_leaderboard(path, "win_rate")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def test_bundled_alpaca_eval_sample_reads_and_matches_the_leaderboards():
    outputs = read_policy_outputs(ALPACA_EVAL)
    assert sorted(outputs["policy"].unique()) == BUNDLED_POLICIES
    # Stratified: 20 prompts from each of AlpacaEval's five source datasets, not 100 from one.
    prompts = read_jsonl(ALPACA_EVAL / "prompts.jsonl")
    by_dataset: dict[str, list[int]] = {}
    for row in prompts:
        by_dataset.setdefault(row["dataset"], []).append(row["idx"])
    assert sorted(by_dataset) == ALPACA_EVAL_DATASETS
    assert all(len(idx) == PROMPTS_PER_DATASET for idx in by_dataset.values())
    # Source order is kept, and AlpacaEval numbers its prompts dataset by dataset, so each dataset's first
    # 20 prompts are 20 consecutive idx.
    assert [row["idx"] for row in prompts] == sorted(row["idx"] for row in prompts)
    assert all(idx == list(range(idx[0], idx[0] + PROMPTS_PER_DATASET)) for idx in by_dataset.values())
    # Every output answers a bundled prompt, at most once. The only gap is one AlpacaEval itself has:
    # alpaca-7b_verbose has no output for idx 484 (an oasst prompt).
    assert outputs["instruction"].notna().all() and not outputs.duplicated(["policy", "idx"]).any()
    kept = {row["idx"] for row in prompts}
    missing = {policy: sorted(kept - set(idx)) for policy, idx in outputs.groupby("policy")["idx"]}
    assert {policy: gap for policy, gap in missing.items() if gap} == {"alpaca-7b_verbose": [484]}
    assert (outputs.groupby("policy")["dataset"].nunique() == len(ALPACA_EVAL_DATASETS)).all()
    for name in ["alpaca_eval_gpt4_leaderboard.csv", "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"]:
        for column in ["win_rate", "length_controlled_winrate", "avg_length"]:
            assert read_leaderboard(ALPACA_EVAL / name, column).name == column
    board = read_leaderboard(ALPACA_EVAL / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv", "win_rate")
    assert set(BUNDLED_POLICIES) <= set(board.index) and board.dtype == float
    # The length probe: the same policy told to be concise / verbose writes shorter / longer answers.
    scored = outputs.assign(reward=0.0, tokens=outputs["output"].str.len())
    lengths = policy_reward_summary(scored)["mean_tokens"]
    assert lengths["alpaca-7b_concise"] < lengths["alpaca-7b"] < lengths["alpaca-7b_verbose"]


def test_bundled_alpacaeval_easy_is_gpt4_turbo_chosen_over_alpaca_7b_on_the_bundled_prompts():
    lines = read_jsonl(EVAL_DATA / "alpacaeval-easy.jsonl")
    prompts = read_jsonl(ALPACA_EVAL / "prompts.jsonl")
    chosen = {
        row["idx"]: row["output"] for row in read_jsonl(ALPACA_EVAL / "model_outputs" / "gpt4_1106_preview.jsonl")
    }
    rejected = {row["idx"]: row["output"] for row in read_jsonl(ALPACA_EVAL / "model_outputs" / "alpaca-7b.jsonl")}
    # One pair per bundled prompt that both policies answered, in prompt order: here all 100.
    expected_ids = [row["idx"] for row in prompts if row["idx"] in chosen and row["idx"] in rejected]
    assert [line["id"] for line in lines] == expected_ids and len(lines) == len(prompts)
    instruction = {row["idx"]: row["instruction"] for row in prompts}
    for line in lines:
        assert set(line) == {"id", "prompt", "chosen", "rejected", "subset"} and line["subset"] == "alpacaeval-easy"
        assert line["prompt"] == instruction[line["id"]]
        assert (line["chosen"], line["rejected"]) == (chosen[line["id"]], rejected[line["id"]])


def test_every_jsonl_file_directly_in_data_eval_is_a_rewardbench_format_benchmark():
    files = sorted(EVAL_DATA.glob("*.jsonl"))
    assert [path.name for path in files] == ["alpacaeval-easy.jsonl"]
    for path in files:
        lines = read_jsonl(path)
        assert lines and all(
            isinstance(line.get(field), str) and line[field]
            for line in lines
            for field in ("prompt", "chosen", "rejected", "subset")
        )
        # The evaluation stage's reader takes every line as a usable pair.
        pairs, quarantine = read_pair_file(path)
        assert len(pairs) == len(lines) and quarantine.empty


@pytest.mark.skipif(not (SHARED / "alpaca-eval").is_dir(), reason="the shared data snapshot is not here")
def test_bundled_prompts_are_the_first_of_each_dataset_in_the_snapshot():
    # An independent check of the cut (the byte comparison below re-runs the script itself).
    seen: dict[str, int] = {}
    first = set()
    for row in read_jsonl(SHARED / "alpaca-eval" / "prompts.jsonl"):
        if seen.get(row["dataset"], 0) < PROMPTS_PER_DATASET:
            first.add(row["idx"])
            seen[row["dataset"]] = seen.get(row["dataset"], 0) + 1
    assert {row["idx"] for row in read_jsonl(ALPACA_EVAL / "prompts.jsonl")} == first
    for policy in BUNDLED_POLICIES:
        source = {row["idx"] for row in read_jsonl(SHARED / "alpaca-eval" / "model_outputs" / f"{policy}.jsonl")}
        bundled = [row["idx"] for row in read_jsonl(ALPACA_EVAL / "model_outputs" / f"{policy}.jsonl")]
        assert bundled == sorted(source & first), policy


@pytest.mark.skipif(not (SHARED / "alpaca-eval").is_dir(), reason="the shared data snapshot is not here")
def test_sampling_script_reproduces_the_bundled_sample(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "sample_eval_data.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    produced = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    bundled = sorted(p.relative_to(EVAL_DATA) for p in EVAL_DATA.rglob("*") if p.is_file() and p.name != "README.md")
    assert produced == bundled
    for relative in produced:
        assert (tmp_path / relative).read_bytes() == (EVAL_DATA / relative).read_bytes(), relative


# --------------------------------------------------------------------------- labelled pair files


def test_pair_files_obey_the_same_pair_rules_as_training(tmp_path):
    def chat(*turns):
        return [{"role": role, "content": text} for role, text in turns]

    path = tmp_path / "bench.jsonl"
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math"},
        {"prompt": "2+2?", "chosen": "  ", "rejected": "5", "subset": "math"},
        {"prompt": "2+2?", "chosen": "4", "rejected": "4", "subset": "math"},
        {"prompt": " ", "chosen": "4", "rejected": "5", "subset": "math"},
        {"prompt": "Name a colour", "chosen": "Blue.", "rejected": "No."},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs, quarantine = read_pair_file(path)
    assert pairs["line"].tolist() == [1, 5]
    got = quarantine[["line", "field", "reason"]].values.tolist()
    assert got == [
        [2, "chosen", "empty_candidate"],
        [3, "rejected", "identical_candidates"],
        [4, "prompt", "missing_field"],
    ]  # a blank prompt: the reader's own rule
    assert len(pairs) + len(quarantine) == len(rows)  # nothing lost
    # a row without subset is evaluated under the file's name, and says so
    assert pairs["domain"].tolist() == ["math", "bench"]
    assert pairs["domain_from_file"].tolist() == [False, True]

    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps(
                {
                    "chosen": chat(("user", first), ("assistant", "Hello!")),
                    "rejected": chat(("user", second), ("assistant", "Go away.")),
                }
            )
            + "\n"
            for first, second in [("Hi", "Hi"), ("Hi", "Hey")]
        )
    )
    pairs, quarantine = read_pair_file(chats)
    assert pairs["line"].tolist() == [1]
    assert quarantine[["line", "field", "reason"]].values.tolist() == [[2, "rejected", "context_mismatch"]]


def test_the_bootstrap_spearman_is_scipys():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)  # ties in x, as token counts have
    interval = correlation_with_interval(x, y)
    assert interval["estimate"] == pytest.approx(spearman(x, y)[0])
    assert _average_ranks(x) == pytest.approx(__import__("scipy").stats.rankdata(x))
    assert interval["low"] < interval["estimate"] < interval["high"]
    assert correlation_with_interval([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # undefined rho: no interval
