"""RewardBench 2 files (chosen and rejected as lists of answers): reading, best-of-N and Ties scoring, on a
hand-made file whose every expected number is worked out by hand."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.evaluation.pair_files import read_pair_file
from rm_pipeline.lib.evaluation.rewardbench2 import best_of_n_rows, best_of_n_summary
from rm_pipeline.lib.table_files import AnnotationFileError
from rm_pipeline_tests.support.cli import rm_pipeline_here


def row(row_id, subset, chosen, rejected, prompt="Name something", **extra):
    return {"id": row_id, "prompt": prompt, "subset": subset, "chosen": chosen, "rejected": rejected, **extra}


GOOD_ROWS = [
    # line 1: the chosen answer beats all three rejected ones
    row("1", "Focus", ["good"], ["bad one", "bad two", "bad three"], prompt="Write well", num_correct=1),
    # line 2: the chosen answer loses by one rejected answer: wrong, whatever the other two
    row("2", "Focus", ["fine"], ["worse", "better", "worst"], prompt="Write again", total_completions=4),
    # line 3: the chosen answer ties with one rejected answer at the top: half, as RewardBench 2 splits ties
    row("3", "Math", ["four"], ["also four", "five", "six"], prompt="2+2?"),
    # lines 4-7: the Ties subset, one reference row (one correct answer) and one tied row per prompt
    row("ref:7", "Ties", ["red"], ["pizza", "dog"], prompt="Name a colour of the rainbow"),
    row("tied:7", "Ties", ["red", "blue", "green"], ["pizza", "dog"], prompt="Name a colour of the rainbow"),
    row("ref:8", "Ties", ["cat"], ["car"], prompt="Name a feline"),
    row("tied:8", "Ties", ["cat", "lion"], ["car"], prompt="Name a feline"),
]
REWARDS = {
    "good": 2.0,
    "bad one": 1.0,
    "bad two": 0.0,
    "bad three": -1.0,
    "fine": 1.0,
    "worse": 0.0,
    "better": 1.5,
    "worst": -2.0,
    "four": 3.0,
    "also four": 3.0,
    "five": 1.0,
    "six": 0.0,
    "red": 3.0,
    "blue": 2.5,
    "green": 2.0,
    "pizza": 0.0,
    "dog": 1.0,
    "cat": 5.0,
    "lion": 4.5,
    "car": 1.0,
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scored(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs as a model giving each answer its reward in REWARDS would score them."""
    return pairs.assign(
        chosen_reward=pairs["chosen"].map(REWARDS),
        rejected_reward=pairs["rejected"].map(REWARDS),
        chosen_tokens=pairs["chosen"].str.len(),
        rejected_tokens=pairs["rejected"].str.len(),
        truncated=False,
    )


def test_a_rewardbench2_row_becomes_one_pair_per_chosen_and_rejected_answer(tmp_path):
    pairs, quarantine = read_pair_file(write_jsonl(tmp_path / "rb2.jsonl", GOOD_ROWS))
    assert quarantine.empty
    assert pairs["best_of_n"].all()
    assert pairs.groupby("line").size().to_dict() == {1: 3, 2: 3, 3: 3, 4: 2, 5: 6, 6: 1, 7: 2}
    tied = pairs[pairs["line"] == 5]
    assert set(zip(tied["chosen"], tied["rejected"])) == {
        (c, r) for c in ("red", "blue", "green") for r in ("pizza", "dog")
    }
    assert set(tied["row_id"]) == {"tied:7"} and set(tied["domain"]) == {"Ties"}
    assert pairs["pair_id"].is_unique


def test_best_of_n_accuracy_and_the_ties_score_on_a_hand_made_file(tmp_path):
    pairs, _ = read_pair_file(write_jsonl(tmp_path / "rb2.jsonl", GOOD_ROWS))
    rows = best_of_n_rows(scored(pairs)).set_index("row_id")
    # chosen beats all / chosen loses by one rejected / chosen tied with one rejected at the top (1/2)
    assert rows.loc[["1", "2", "3"], "credit"].tolist() == [1.0, 0.0, 0.5]

    summary = best_of_n_summary(scored(pairs))
    assert summary["rows"] == 7
    focus, math_, ties = (summary["subsets"][name] for name in ("Focus", "Math", "Ties"))
    assert (focus["n"], focus["accuracy"]) == (2, 0.5)
    assert (math_["n"], math_["accuracy"]) == (1, 0.5)
    for subset in (focus, math_, ties):
        interval = subset["accuracy_interval"]
        assert interval["low"] <= subset["accuracy"] <= interval["high"] and interval["confidence"] == 0.95

    # Ties, by hand (rewardbench/utils.py process_single_model):
    # prompt 7: ref gap 3 - 1 = 2; tied gap min(3, 2.5, 2) - max(0, 1) = 1, spread 3 - 2 = 1
    # prompt 8: ref gap 5 - 1 = 4; tied gap 4.5 - 1 = 3.5, spread 0.5
    # every row accurate; preferred (tied gap > spread): 7 no, 8 yes; hard (min(ref, tied gap) > spread): same
    # margin: tanh(min gap / spread - 1): prompt 7 tanh(0) = 0, prompt 8 tanh(3.5 / 0.5 - 1) = tanh(6)
    special = ties["ties_score"]
    assert special["ref_accuracy"] == special["tied_accuracy"] == 1.0
    assert special["correctness_preferred"] == special["correctness_preferred_hard"] == 0.5
    assert special["margin_score"] == pytest.approx(math.tanh(6) / 2)
    expected = 0.3 + 0.3 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * math.tanh(6) / 2
    assert special["score"] == pytest.approx(expected) and special["prompts"] == 2
    assert special["score_interval"]["low"] <= expected <= special["score_interval"]["high"]
    # the RewardBench 2 score: the unweighted mean over the subsets present, Ties by its special score
    assert summary["rewardbench2_score"] == pytest.approx((0.5 + 0.5 + expected) / 3)
    interval = summary["rewardbench2_score_interval"]
    assert interval["low"] <= summary["rewardbench2_score"] <= interval["high"]


def test_ties_count_a_correct_answer_below_an_incorrect_one_as_inaccurate(tmp_path):
    rows = GOOD_ROWS[3:5]
    pairs, _ = read_pair_file(write_jsonl(tmp_path / "ties.jsonl", rows))
    low_green = scored(pairs).assign(
        chosen_reward=lambda f: np.where(f["chosen"] == "green", 0.5, f["chosen_reward"])
    )  # green now under dog
    special = best_of_n_summary(low_green)["subsets"]["Ties"]["ties_score"]
    assert special["tied_accuracy"] == 0.0 and special["ref_accuracy"] == 1.0
    assert special["correctness_preferred"] == 0.0  # gap 0.5 - 1 < spread 2.5
    assert special["score"] == pytest.approx(0.3 + 0.01 * math.tanh(-0.5 / 2.5 - 1))


BAD_ROWS = [
    row("9", "Focus", "not a list", ["a", "b"]),  # line 1
    row("10", "Focus", ["x"], []),  # line 2: nothing to beat
    row("11", "Focus", ["x"], ["y", "z"], num_correct=2),  # line 3: num_correct miscounts
    row("12", "Focus", ["x"], ["y", "z"], total_completions=5),  # line 4
    row("13", "Ties", ["x"], ["y"]),  # line 5: a Ties id must be ref:N or tied:N
    row("14", "Focus", ["same"], ["other", "same"]),  # line 6: one identical pair quarantines the row
    row("15", "Focus", ["x"], ["y", "z"], prompt=""),  # line 7: no prompt: quarantined once for the row, not per pair
    row("16", "Focus", ["x"], ["y", 3]),  # line 8: an answer that is not text
    row("17", "Focus", ["x"], ["y"], num_correct=[1]),  # line 9: a count that is not a number
    {"prompt": "no id", "subset": "Focus", "chosen": ["x"], "rejected": ["y"]},  # line 10: no id: its line
    {"prompt": "no id either", "subset": "Focus", "chosen": ["x"], "rejected": ["z"]},  # line 11
]


def test_bad_rewardbench2_rows_are_quarantined_once_with_line_field_and_reason(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", GOOD_ROWS[:2] + BAD_ROWS)
    pairs, quarantine = read_pair_file(path)
    found = {(r.line, r.field, r.reason) for r in quarantine.itertuples()}
    assert found == {
        (3, "chosen", "wrong_type"),
        (4, "rejected", "wrong_type"),
        (5, "num_correct", "bad_value"),
        (6, "total_completions", "bad_value"),
        (7, "id", "bad_value"),
        (8, "rejected", "identical_candidates"),
        (9, "prompt", "missing_field"),
        (10, "rejected", "wrong_type"),
        (11, "num_correct", "wrong_type"),
    }
    assert set(quarantine["file"]) == {str(path)}
    assert "num_correct is 2 but the row holds 1" in quarantine.set_index("line").loc[5, "detail"]
    assert set(pairs["line"]) == {1, 2, 12, 13}  # no pair of a quarantined row is kept
    assert pairs.set_index("line").loc[[12, 13], "row_id"].tolist() == ["12", "13"]  # rows without an id
    assert pairs["line"].nunique() + len(quarantine) == len(GOOD_ROWS[:2] + BAD_ROWS)  # every row counted once


def test_rewardbench2_format_is_explicit(tmp_path):
    # TRL's conversational files hold message lists: not RewardBench 2
    conversational = [
        {
            "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
        }
    ]
    pairs, quarantine = read_pair_file(write_jsonl(tmp_path / "trl.jsonl", conversational))
    assert quarantine.empty and not pairs["best_of_n"].any()
    # RewardBench (1) rows hold one text a side
    pairs, _ = read_pair_file(write_jsonl(tmp_path / "rb1.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    assert not pairs["best_of_n"].any()
    # a RewardBench 2 marker column makes a file RewardBench 2 even when its first rows are broken
    marked = [row("1", "Focus", "a", "b", num_correct=1)]
    pairs, quarantine = read_pair_file(write_jsonl(tmp_path / "marked.jsonl", marked))
    assert pairs.empty and quarantine[["line", "field", "reason"]].values.tolist() == [[1, "chosen", "wrong_type"]]


def test_a_file_that_is_not_pairs_is_named():
    with pytest.raises(AnnotationFileError, match="not an annotation table"):
        read_pair_file(_write_tmp([{"prompt": "p", "answers": ["a", "b"]}]))


def _write_tmp(rows):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "odd.jsonl"
    return write_jsonl(path, rows)


def test_evaluate_scores_a_rewardbench2_file_end_to_end(tiny_encoder, tmp_path):
    model = tmp_path / "rm-test"
    shutil.copytree(tiny_encoder, model)
    path = write_jsonl(tmp_path / "rb2.jsonl", GOOD_ROWS + BAD_ROWS[:1])
    done = rm_pipeline_here("evaluate", "--model", str(model), "--pairs", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{path}:8: chosen: wrong_type" in done.stderr  # the bad row, by file, line and field
    result = json.loads(done.stdout)[str(path)]
    best = result["best_of_n"]
    assert best["rows"] == result["rows"] and result["rows"] + result["quarantined"] == len(GOOD_ROWS) + 1
    assert set(best["subsets"]) == {"Focus", "Math", "Ties"}
    assert 0.0 <= best["accuracy"] <= 1.0 and best["accuracy_interval"]["n"] == len(GOOD_ROWS)
    assert "score" in best["subsets"]["Ties"]["ties_score"]
    assert result["n"] == 20  # every (chosen, rejected) answer pair was scored
