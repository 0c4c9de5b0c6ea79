"""Scoring with a saved reward model: pairs, long inputs, best-of-N candidates, and the CLI around them."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rm_pipeline.lib.hardware import native_bf16
from rm_pipeline.lib.precision import scores_in_bf16
from rm_pipeline.lib.scoring import (
    CandidateFileError,
    RewardScorer,
    fit_to_length,
    rank_candidates,
    read_candidates,
    score_ids,
)
from rm_pipeline.lib.tokenization import encode
from rm_pipeline_tests.support.cli import rm_pipeline_here

PAIRS = pd.DataFrame(
    {
        "prompt": ["2+2?", json.dumps([{"role": "user", "content": "hi"}]), "Name a colour."],
        "conversational": [False, True, False],
        "chosen": ["4", "Hello! How can I help?", "Blue, like the sky on a clear summer day."],
        "rejected": ["five", "go away", "no"],
    }
)


@pytest.fixture(scope="module")
def scorer(tiny_encoder):  # fp32: batching must not change rewards beyond float noise
    return RewardScorer.load(tiny_encoder, batch_size=2, precision="fp32")


def forgetful(scorer: RewardScorer) -> RewardScorer:
    """The same model, remembering nothing scored: each call below really scores."""
    return dataclasses.replace(scorer, scored={})


def test_pairs_score_like_their_sides_scored_alone(scorer):
    result = forgetful(scorer).score_pairs(PAIRS)
    for side in ("chosen", "rejected"):
        alone = forgetful(scorer).score(PAIRS["prompt"], PAIRS[side], PAIRS["conversational"])
        np.testing.assert_allclose(result[f"{side}_reward"], alone["reward"], atol=1e-5)
        tokens = [len(scorer.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in PAIRS[side]]
        assert list(result[f"{side}_tokens"]) == tokens  # the response's own length, not the prompt's
    assert not result["truncated"].any()


def test_length_sorting_changes_speed_not_rewards(scorer):
    sequences = encode(
        scorer.tokenizer,
        list(PAIRS["prompt"]) * 2,
        list(PAIRS["chosen"]) + list(PAIRS["rejected"]),
        list(PAIRS["conversational"]) * 2,
    )
    pad = scorer.tokenizer.pad_token_id
    np.testing.assert_allclose(
        score_ids(scorer.model, sequences, pad, 2, sort_by_length=True),
        score_ids(scorer.model, sequences, pad, 2, sort_by_length=False),
        atol=1e-5,
    )


def test_a_sequence_longer_than_the_model_reads_loses_its_oldest_context(scorer):
    long_prompt = "word " * 2000
    result = scorer.score([long_prompt, "short"], ["the answer", "the answer"], [False, False])
    assert list(result["truncated"]) == [True, False]
    [ids] = encode(scorer.tokenizer, [long_prompt], ["the answer"], [False])
    cut = fit_to_length(ids, scorer.max_length)
    assert len(cut) == scorer.max_length == 512 and cut[0] == ids[0] and cut[-8:] == ids[-8:]
    [expected] = score_ids(scorer.model, [cut], scorer.tokenizer.pad_token_id, bf16=scorer.bf16)
    assert result["reward"][0] == pytest.approx(expected, abs=1e-5)


def test_nothing_is_scored_twice(scorer):
    scorer = forgetful(scorer)
    rows_scored = []
    hook = scorer.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_scored.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        first = scorer.score_pairs(PAIRS)  # 6 sequences, all new
        again = scorer.score(  # 2 seen in the pairs, 1 repeated within the call, 1 new
            ["2+2?", "2+2?", "Name a colour.", "2+2?"], ["4", "4", "no", "four"], [False] * 4
        )
    finally:
        hook.remove()
    assert sum(rows_scored) == 6 + 1
    assert again["reward"][0] == again["reward"][1] == first["chosen_reward"][0]
    assert again["reward"][2] == first["rejected_reward"][2]
    fresh = forgetful(scorer).score(["2+2?"], ["four"], [False])
    assert again["reward"][3] == pytest.approx(fresh["reward"][0], abs=1e-5)
    assert list(again["tokens"]) == [1, 1, 1, 1]


def test_auto_precision_is_bf16_only_on_a_cpu_that_multiplies_bf16_natively():
    assert scores_in_bf16("auto", "cpu") is native_bf16("cpu")
    assert scores_in_bf16("auto", "cuda") is False  # fp32 on a GPU: what TRL computes from the directory
    assert scores_in_bf16("fp32", "cpu") is False and scores_in_bf16("bf16", "cpu") is True


def test_bf16_scoring_stays_close_to_fp32_and_its_rewards_are_not_rounded(tiny_encoder, scorer):
    bf16 = RewardScorer.load(tiny_encoder, batch_size=2, precision="bf16")
    assert bf16.bf16
    texts = [f"answer number {i} with some words" for i in range(12)]
    exact = forgetful(scorer).score(["Say something."] * 12, texts, [False] * 12)["reward"].to_numpy()
    rounded = bf16.score(["Say something."] * 12, texts, [False] * 12)["reward"].to_numpy()
    np.testing.assert_allclose(rounded, exact, atol=0.02 * np.abs(exact).max() + 1e-4)
    # the head computes in fp32: a reward is no bf16 number (those have 8 significant bits), so nearby answers
    # don't collapse into ties
    as_bf16 = torch.tensor(rounded, dtype=torch.float32).bfloat16().double().numpy()
    assert (as_bf16 != rounded).sum() >= 10
    assert len(set(rounded.tolist())) == 12


def test_candidates_are_ranked_best_first(scorer):
    records = [
        {"id": "q1", "prompt": "2+2?", "candidates": ["4", "five", "It is 4."]},
        {"prompt": [{"role": "user", "content": "hi"}], "candidates": [{"role": "assistant", "content": "hey"}]},
    ]
    ranked = rank_candidates(scorer, records)
    assert ranked[0]["id"] == "q1" and ranked[0]["candidates"] == records[0]["candidates"]
    rewards = ranked[0]["rewards"]
    assert sorted(ranked[0]["ranking"]) == [0, 1, 2]
    assert [rewards[i] for i in ranked[0]["ranking"]] == sorted(rewards, reverse=True)
    alone = forgetful(scorer).score(["2+2?"] * 3, records[0]["candidates"], [False] * 3)["reward"]
    np.testing.assert_allclose(rewards, alone, atol=1e-5)
    assert ranked[1]["ranking"] == [0] and len(ranked[1]["rewards"]) == 1


def test_bad_candidate_lines_are_all_named_before_anything_is_scored(tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"prompt": "ok", "candidates": ["a", "b"]}),
                "{nope",
                json.dumps({"prompt": "", "candidates": ["a"]}),
                json.dumps({"prompt": "x", "candidates": ["a", 3]}),
                "",
                json.dumps({"prompt": "x"}),
            ]
        )
        + "\n"
    )
    with pytest.raises(CandidateFileError) as error:
        read_candidates(path)
    message = str(error.value)
    assert "4 problem(s)" in message
    for expected in (
        f"{path}:2: not valid JSON",
        f"{path}:3: prompt:",
        f"{path}:4: candidates[1]:",
        f"{path}:6: candidates:",
    ):
        assert expected in message


def test_evaluate_prints_one_json_object_per_file(tiny_encoder, tmp_path):
    bench = tmp_path / "bench.jsonl"
    rows = [
        {
            "prompt": f"q{i}",
            "chosen": "a fairly long answer " * (i % 3 + 1),
            "rejected": "short",
            "subset": "alpacaeval-easy" if i % 2 else "mine",
        }
        for i in range(10)
    ]
    bench.write_text("\n".join(map(json.dumps, rows)) + "\n{broken\n")
    conversational = tmp_path / "trl.jsonl"
    conversational.write_text(
        json.dumps(
            {
                "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}],
            }
        )
        + "\n"
    )
    standard = tmp_path / "trl_standard.csv"  # TRL's standard format, no subset: the file is the subset
    pd.DataFrame({"prompt": ["2+2?", "Name a colour."], "chosen": ["4", "Blue."], "rejected": ["5", ""]}).to_csv(
        standard, index=False
    )
    done = rm_pipeline_here(
        "evaluate", "--model", tiny_encoder, "--pairs", str(bench), str(conversational), str(standard)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    summary = result[str(bench)]
    for key in ("n", "accuracy", "ties", "longer_wins_accuracy", "length_matched_accuracy", "ece", "subsets"):
        assert key in summary
    assert summary["n"] == 10 and summary["quarantined"] == 1
    assert summary["longer_wins_accuracy"] == 1.0  # every chosen answer is the longer one
    assert summary["subsets"]["alpacaeval-easy"]["n"] == 5 and summary["subsets"]["mine"]["n"] == 5
    assert "rewardbench_score" in summary  # a RewardBench subset name was recognised
    assert f"{bench}:11: " in done.stderr and "malformed_json" in done.stderr
    assert result[str(conversational)]["n"] == 1
    # the empty rejected cell is quarantined, named on stderr; the other pair is scored
    assert result[str(standard)]["n"] == 1 and result[str(standard)]["quarantined"] == 1
    assert list(result[str(standard)]["subsets"]) == ["trl_standard"]
    assert f"{standard}:3: rejected: missing_field" in done.stderr


def test_evaluate_names_a_file_it_cannot_read_and_keeps_the_others_results(tiny_encoder, tmp_path):
    good, votes, later = tmp_path / "good.jsonl", tmp_path / "votes.jsonl", tmp_path / "later.jsonl"
    good.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    later.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5", "subset": "math"}) + "\n")
    votes.write_text(
        json.dumps(
            {"item_id": "1", "prompt": "p", "response_a": "a", "response_b": "b", "annotator_id": "u", "vote": "a"}
        )
        + "\n"
    )
    done = rm_pipeline_here("evaluate", "--model", tiny_encoder, "--pairs", str(good), str(votes), str(later))
    assert done.returncode == 3 and f"rm-pipeline evaluate: {votes}: holds annotator votes" in done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert result[str(good)]["n"] == 1 and result[str(later)]["n"] == 1
    assert "holds annotator votes" in result[str(votes)]["error"]
    # a pair without subset is evaluated under the file's name, and counted
    assert result[str(good)]["rows_without_subset"] == 1 and result[str(later)]["rows_without_subset"] == 0


def test_evaluate_quarantines_what_training_rejects(tiny_encoder, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(
        "".join(json.dumps({"prompt": "2+2?", "chosen": chosen, "rejected": "5"}) + "\n" for chosen in ("4", " ", "5"))
    )
    done = rm_pipeline_here("evaluate", "--model", tiny_encoder, "--pairs", str(bench))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)[str(bench)]["n"] == 1
    assert f"{bench}:2: chosen: empty_candidate (" in done.stderr
    assert f"{bench}:3: rejected: identical_candidates (" in done.stderr


def test_score_output_may_be_its_input_and_a_failed_run_leaves_it_alone(tiny_encoder, tmp_path):
    source = tmp_path / "candidates.jsonl"
    original = json.dumps({"prompt": "2+2?", "candidates": ["4", "5"]}) + "\n"
    source.write_text(original)
    done = rm_pipeline_here("score", "--model", tiny_encoder, "--input", str(source), "--output", str(source))
    assert done.returncode == 0, done.stderr[-2000:]
    [ranked] = [json.loads(line) for line in source.read_text().splitlines()]
    assert ranked["candidates"] == ["4", "5"] and len(ranked["rewards"]) == 2

    source.write_text(original)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    done = rm_pipeline_here(
        "score", "--model", str(tmp_path / "model"), "--input", str(source), "--output", str(source)
    )
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert source.read_text() == original
    assert sorted(path.name for path in tmp_path.iterdir()) == ["candidates.jsonl", "model"]  # no partial file left


def test_unreadable_candidate_lines_are_named_with_the_others(tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                b'{"prompt": "caf\xe9", "candidates": ["a"]}',
                b"[" * 5000 + b"]" * 5000,
                json.dumps({"prompt": "ok", "candidates": ["a", "b"]}).encode(),
                json.dumps({"prompt": "deep but fine", "candidates": [[[["a"]]]]}).encode(),
            ]
        )
    )
    with pytest.raises(CandidateFileError) as error:
        read_candidates(path)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert f"{path}:1: not valid UTF-8" in message and f"{path}:2: JSON nested deeper than 64 levels" in message
    assert f"{path}:4: candidates[0]:" in message
    with pytest.raises(CandidateFileError, match="can't be read"):
        read_candidates(tmp_path / "missing.jsonl")


def test_score_writes_rewards_and_rankings(tiny_encoder, tmp_path):
    source = tmp_path / "candidates.jsonl"
    source.write_text(
        "\n".join(
            json.dumps({"prompt": f"question {i}", "candidates": [f"answer {j}" * j for j in range(1, 6)]})
            for i in range(40)
        )
        + "\n"
    )
    output = tmp_path / "ranked.jsonl"
    done = rm_pipeline_here("score", "--model", tiny_encoder, "--input", str(source), "--output", str(output))
    assert done.returncode == 0, done.stderr[-2000:]
    ranked = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(ranked) == 40 and all(len(r["rewards"]) == 5 and sorted(r["ranking"]) == list(range(5)) for r in ranked)
    assert "200/200" in done.stderr  # the progress bar counted every candidate

    source.write_text('{"prompt": "p", "candidates": []}\n')
    done = rm_pipeline_here("score", "--model", tiny_encoder, "--input", str(source))
    assert done.returncode == 3 and f"{source}:1: candidates:" in done.stderr


def test_nothing_to_score_is_an_empty_table(scorer):
    assert scorer.score([], [], []).empty
    assert scorer.score_pairs(PAIRS.iloc[:0])["chosen_reward"].empty


def test_evaluate_reads_the_fitted_temperature_from_the_models_calibration_sidecar(tiny_encoder, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_encoder, model)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes " * i, "rejected": "no"}) + "\n" for i in range(1, 9))
    )
    before = json.loads(rm_pipeline_here("evaluate", "--model", str(model), "--pairs", str(pairs)).stdout)[str(pairs)]
    assert "reward_temperature" not in before and "calibrated_ece" not in before  # never evaluated: no sidecar
    (model / "calibration.json").write_text(json.dumps({"reward_temperature": 0.05}))
    after = json.loads(rm_pipeline_here("evaluate", "--model", str(model), "--pairs", str(pairs)).stdout)[str(pairs)]
    assert after["reward_temperature"] == 0.05
    assert after["calibrated_ece"] != after["ece"]  # sigmoid(margin / 0.05) is not sigmoid(margin)
    (model / "calibration.json").write_text('{"reward_temperature": "hot"}')
    done = rm_pipeline_here("evaluate", "--model", str(model), "--pairs", str(pairs))
    assert done.returncode == 0 and "calibrated_ece" not in json.loads(done.stdout)[str(pairs)]
    assert f"{model}/calibration.json: reward_temperature must be a positive number" in done.stderr
