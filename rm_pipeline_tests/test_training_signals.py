"""Training signals: tie handling (drop | soft) from the pair rules to the evaluation, and the loss
(bradley_terry | mse) at RewardTrainer's compute_loss hook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest
import torch

from rm_pipeline.lib import gates
from rm_pipeline.lib.evaluation.accuracy import tie_pair_margins
from rm_pipeline.lib.evaluation.inputs import HELD_OUT_TIE, split_pairs_to_score
from rm_pipeline.lib.evaluation.report import build_report
from rm_pipeline.lib.fingerprints import split_data_version
from rm_pipeline.lib.pairs import PairSettings, build_pairs, rejection_counts, tie_pairs
from rm_pipeline.lib.split import split_by_group
from rm_pipeline.lib.tokenization import load_tokenizer
from rm_pipeline.lib.training.data import pair_dataset
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline.lib.training.trainer import preference_collator, preference_loss
from rm_pipeline.stages import pairs as pairs_stage
from rm_pipeline.stages import reward_model
from rm_pipeline_tests.test_pairs import comparisons_from, reasons, split_pairs, vote
from rm_pipeline_tests.test_report import no_responses, scored
from rm_pipeline_tests.test_reward_training import encoder_settings, learnable_pairs


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def loss_of(chosen, rejected, preference, margin=None, loss="bradley_terry") -> float:
    tensor = lambda values: torch.tensor(values, dtype=torch.float)  # noqa: E731
    return preference_loss(
        tensor(chosen), tensor(rejected), tensor(preference), None if margin is None else tensor(margin), loss
    ).item()


# ---------------------------------------------------------------- the losses on hand-computed values


def test_bradley_terry_is_trls_loss_on_preferred_pairs_and_the_half_half_loss_on_a_tie():
    # d = 1 preferred: -log s(1); a tie at d = 2: -1/2 log s(2) - 1/2 log s(-2); a tie at d = 0: log 2
    assert loss_of([2.0], [1.0], [1.0]) == pytest.approx(-log_sigmoid(1.0), rel=1e-6)
    assert loss_of([3.0], [1.0], [0.5]) == pytest.approx(-0.5 * log_sigmoid(2.0) - 0.5 * log_sigmoid(-2.0), rel=1e-6)
    assert loss_of([0.0], [0.0], [0.5]) == pytest.approx(math.log(2), rel=1e-6)
    # a batch is the mean of its pairs
    expected = (-log_sigmoid(1.0) + math.log(2)) / 2
    assert loss_of([2.0, 0.0], [1.0, 0.0], [1.0, 0.5]) == pytest.approx(expected, rel=1e-6)
    # with a margin (TRL's): -log s(d - m); a tie's margin is 0 (pair_dataset), so it is unchanged
    assert loss_of([2.0, 0.0], [1.0, 0.0], [1.0, 0.5], margin=[0.5, 0.0]) == pytest.approx(
        (-log_sigmoid(0.5) + math.log(2)) / 2, rel=1e-6
    )
    # the same number TRL's RewardTrainer computes for preferred pairs
    trl = -torch.nn.functional.logsigmoid(torch.tensor([2.0, -1.0]) - torch.tensor([1.0, 0.5]) - 0.25).mean()
    assert loss_of([2.0, -1.0], [1.0, 0.5], [1.0, 1.0], margin=[0.25, 0.25]) == pytest.approx(trl.item(), rel=1e-6)


def test_a_tie_pulls_the_two_rewards_together_from_either_side():
    for start in (2.0, -2.0):
        chosen = torch.tensor([start], requires_grad=True)
        preference_loss(chosen, torch.tensor([0.0]), torch.tensor([0.5])).backward()
        assert chosen.grad.item() == pytest.approx(sigmoid(start) - 0.5)  # sign of the difference: towards 0
    chosen = torch.tensor([0.0], requires_grad=True)
    preference_loss(chosen, torch.tensor([0.0]), torch.tensor([0.5])).backward()
    assert chosen.grad.item() == 0.0  # equal rewards: the minimum


def test_mse_regresses_the_win_probability_on_the_target_preference():
    assert loss_of([2.0], [1.0], [1.0], loss="mse") == pytest.approx((sigmoid(1.0) - 1) ** 2, rel=1e-6)
    assert loss_of([3.0], [1.0], [0.5], loss="mse") == pytest.approx((sigmoid(2.0) - 0.5) ** 2, rel=1e-6)
    assert loss_of([1.0], [1.0], [0.5], loss="mse") == 0.0  # a tie with equal rewards is perfect
    assert loss_of([2.0, 3.0], [1.0, 1.0], [1.0, 0.5], margin=[0.5, 0.0], loss="mse") == pytest.approx(
        ((sigmoid(0.5) - 1) ** 2 + (sigmoid(2.0) - 0.5) ** 2) / 2, rel=1e-6
    )


# ---------------------------------------------------------------- the settings


def test_an_unknown_loss_or_tie_handling_names_the_field_and_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"TrainingSettings.loss must be one of 'bradley_terry', 'mse'; got 'hinge'"):
        TrainingSettings(loss="hinge")
    with pytest.raises(ValueError, match=r"PairSettings.tie_handling must be one of 'drop', 'soft'; got 'keep'"):
        PairSettings(tie_handling="keep")
    comparisons = comparisons_from(tmp_path, [vote("i1")])
    with pytest.raises(ValueError, match="PairSettings.tie_handling must be one of"):
        build_pairs(comparisons, tie_handling="keep")
    with pytest.raises(pydantic.ValidationError, match="loss"):
        reward_model.RewardModelConfig(loss="hinge")
    with pytest.raises(pydantic.ValidationError, match="tie_handling"):
        pairs_stage.PairsConfig(tie_handling="keep")
    assert TrainingSettings().loss == "bradley_terry" and PairSettings().tie_handling == "drop"  # today's


# ---------------------------------------------------------------- pairs and their ledger


def test_a_tie_is_rejected_under_drop_and_a_tie_pair_under_soft_and_the_counts_add_up(tmp_path):
    rows = [
        vote("won"),
        vote("tied", vote="tie"),
        vote("nobody", vote="abstain"),
        vote("tied_same", vote="tie", response_a="Same.", response_b="Same."),
    ]
    comparisons = comparisons_from(tmp_path, rows)
    kept, rejected = split_pairs(comparisons)
    assert list(kept["pair_id"]) == ["won"] and kept["preference"].tolist() == [1.0]
    assert reasons(rejected) == {
        "tied": "tie_or_abstention",
        "nobody": "tie_or_abstention",
        "tied_same": "tie_or_abstention",
    }

    kept, rejected = split_pairs(comparisons, tie_handling="soft")
    assert dict(zip(kept["pair_id"], kept["preference"])) == {"won": 1.0, "tied": 0.5}
    tie = kept[kept["pair_id"] == "tied"].iloc[0]
    assert (tie["chosen"], tie["rejected"]) == ("Good answer to tied.", "Bad answer to tied.")  # a, b as given
    # abstentions stay rejected; a tie that breaks another rule is rejected for it
    assert reasons(rejected) == {"nobody": "tie_or_abstention", "tied_same": "identical_candidates"}
    assert len(kept) + sum(rejection_counts(rejected).values()) == len(comparisons)
    assert tie_pairs(kept).sum() == 1


def test_the_pair_gate_counts_tie_pairs_in_the_ledger_and_refuses_any_other_preference(tmp_path):
    comparisons = comparisons_from(tmp_path, [vote("won"), vote("tied", vote="tie"), vote("nobody", vote="abstain")])
    kept, rejected = build_pairs(comparisons, tie_handling="soft")
    assert gates.preference_pairs_gate(kept, rejected, comparisons, max_length=100).success
    odd = kept.assign(preference=[1.0, 0.7])
    result = gates.preference_pairs_gate(odd, rejected, comparisons, max_length=100)
    assert not result.success and any("preference" in failure for failure in result.failures)
    result = gates.preference_pairs_gate(kept.iloc[:1], rejected, comparisons, max_length=100)  # a tie pair lost
    assert not result.success and any("pair_ledger" in failure for failure in result.failures)


def test_the_data_version_changes_with_a_pairs_preference_only_once_there_are_ties(tmp_path):
    comparisons = comparisons_from(tmp_path, [vote("won"), vote("other"), vote("tied", vote="tie")])
    drop, _ = build_pairs(comparisons)
    soft, _ = build_pairs(comparisons, tie_handling="soft")
    drop_split = split_by_group(drop, 0.5, 0)
    assert split_data_version(drop_split) == split_data_version(drop_split.drop(columns="preference"))  # as before
    soft_split = split_by_group(soft, 0.5, 0)
    flipped = soft_split.assign(preference=np.where(tie_pairs(soft_split), 1.0, soft_split["preference"]))
    assert split_data_version(soft_split) != split_data_version(flipped)


# ---------------------------------------------------------------- the training data


def test_each_pair_carries_its_preference_to_the_loss_and_a_tie_has_no_margin(tiny_encoder):
    tokenizer = load_tokenizer(tiny_encoder)
    pairs = learnable_pairs(3).assign(preference=[1.0, 0.5, 1.0])  # strengths 1, 2, NaN
    data = pair_dataset(pairs, tokenizer, TrainingSettings(base_model=tiny_encoder, margin_per_strength=0.5))
    assert data["preference"] == [1.0, 0.5, 1.0]
    assert data["margin"] == [0.5, 0.0, 0.0]
    before_ties = pair_dataset(learnable_pairs(2), tokenizer, TrainingSettings(base_model=tiny_encoder))
    assert before_ties["preference"] == [1.0, 1.0]  # a split from before the column: every pair preferred

    from trl import RewardConfig

    args = RewardConfig(output_dir="unused", use_cpu=True, report_to=[])
    batch = preference_collator(tokenizer, args)([data[i] for i in range(3)])
    assert batch["preference"].tolist() == [1.0, 0.5, 1.0]
    assert batch["margin"].tolist() == [0.5, 0.0, 0.0]
    assert batch["input_ids"].shape[0] == 6  # chosen then rejected, TRL's layout


# ---------------------------------------------------------------- the evaluation


def test_held_out_tie_pairs_are_scored_apart_and_never_in_the_held_out_accuracy(tmp_path):
    comparisons = comparisons_from(tmp_path, [vote(f"won{i}") for i in range(6)] + [vote("tied", vote="tie")])
    kept, _ = build_pairs(comparisons, tie_handling="soft")
    split = kept.assign(split="eval", prompt_group=kept["prompt_id"])
    to_score = split_pairs_to_score(split, comparisons.iloc[:0].assign(item_id=[]))
    assert dict(zip(to_score["pair_id"], to_score["source"]))["tied"] == HELD_OUT_TIE
    assert (to_score["source"] == "held_out").sum() == 6

    scores = pd.concat(
        [
            scored("held_out", [2.0, 0.0], [1.0, 1.0], [5, 5], [5, 5]),
            scored(HELD_OUT_TIE, [1.0, 3.0, 2.0], [1.0, 1.0, 2.5], [5, 5, 5], [5, 5, 5]),
        ],
        ignore_index=True,
    )
    report = build_report(scores, no_responses(), train_domains=["d"])
    assert report["held_out"]["n"] == 2 and report["held_out"]["accuracy"] == 0.5
    ties = report["held_out_tie_pairs"]
    assert ties["n"] == 3
    assert ties["mean_abs_margin"] == pytest.approx((0.0 + 2.0 + 0.5) / 3)
    assert ties["median_abs_margin"] == 0.5 and ties["within_tolerance"] == pytest.approx(1 / 3)


def test_tie_pair_margins_of_no_pairs_are_empty():
    result = tie_pair_margins(scored(HELD_OUT_TIE, [], [], [], []))
    assert result["n"] == 0 and math.isnan(result["mean_abs_margin"])


# ---------------------------------------------------------------- end to end


@pytest.mark.trains
@pytest.mark.parametrize("loss", ["bradley_terry", "mse"])
def test_training_with_soft_ties_runs_and_leaves_ties_out_of_its_accuracy(tiny_encoder, tmp_path, loss):
    """Tie pairs written the wrong way round (the `terrible` answer as `chosen`) would pull any accuracy
    they entered below 1; the model learns the preferred pairs and its eval accuracy stays theirs."""
    ties = learnable_pairs(8, start=50).rename(columns={"chosen": "rejected", "rejected": "chosen"})
    train = pd.concat([learnable_pairs(24).assign(preference=1.0), ties.assign(preference=0.5)], ignore_index=True)
    evaluation = pd.concat(
        [learnable_pairs(8, start=100).assign(preference=1.0), ties.assign(preference=0.5)], ignore_index=True
    )
    result = train_reward_model(
        train, evaluation, encoder_settings(Path(tiny_encoder), loss=loss), tmp_path / "models", "ties"
    )
    assert result.metrics["eval_accuracy"] == 1.0
    assert result.metrics["train_pairs"] == len(train)
    evaluations = [entry for entry in result.history if "eval_accuracy" in entry]
    assert evaluations and all(0.0 <= entry["eval_accuracy"] <= 1.0 for entry in evaluations)
    assert json.loads((result.model_dir / "training_settings.json").read_text())["loss"] == loss


def zero_head_trainer(tiny_encoder, tmp_path, evaluation: pd.DataFrame, **settings):
    """Every answer gets reward 0 (d = 0): the losses are known numbers."""
    from rm_pipeline.lib.training.data import training_data
    from rm_pipeline.lib.training.model import prepare_model
    from rm_pipeline.lib.training.trainer import build_trainer, progress_callback

    settings = encoder_settings(Path(tiny_encoder), use_margin=False, **settings)
    model, tokenizer, peft_config = prepare_model(settings)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    data = training_data(learnable_pairs(8), evaluation, tokenizer, settings, lambda *_: None)
    return build_trainer(
        model, tokenizer, peft_config, data, settings, tmp_path / "checkpoints", progress_callback(lambda *_: None)
    )


@pytest.mark.parametrize(
    "loss, preferred_loss, tie_loss", [("bradley_terry", math.log(2), math.log(2)), ("mse", 0.25, 0.0)]
)
def test_the_trainer_computes_the_chosen_loss_and_an_all_tie_batch_has_no_accuracy(
    tiny_encoder, tmp_path, loss, preferred_loss, tie_loss
):
    preferred = learnable_pairs(4, start=100).assign(preference=1.0)
    ties = learnable_pairs(4, start=200).assign(preference=0.5)
    result = zero_head_trainer(tiny_encoder, tmp_path / "p", preferred, loss=loss).evaluate()
    assert result["eval_loss"] == pytest.approx(preferred_loss, abs=1e-6) and result["eval_accuracy"] == 0.5
    result = zero_head_trainer(tiny_encoder, tmp_path / "t", ties, loss=loss).evaluate()
    assert result["eval_loss"] == pytest.approx(tie_loss, abs=1e-6) and math.isnan(result["eval_accuracy"])
