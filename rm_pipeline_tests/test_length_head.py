"""ODIN's length head (`length_head`): a second head trained beside the reward head with correlation and
orthogonality terms, dropped before publishing. The terms on hand-made tensors; tiny models trained for seconds."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from rm_pipeline.lib.model_files import TRAINING_SETTINGS_FILE
from rm_pipeline.lib.scoring import RewardScorer
from rm_pipeline.lib.settings import SettingError
from rm_pipeline.lib.training.ensemble import train_ensemble
from rm_pipeline.lib.training.length_head import odin_terms, pearson, reward_length_correlation, row_correlation
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline.lib.training.trainer import DeviceStatistics
from rm_pipeline_tests.test_reward_training import encoder_settings, learnable_pairs, state_dict_of

LENGTHS = torch.tensor([3.0, 10.0, 4.0, 25.0, 7.0, 12.0])
ORTHOGONAL_ROWS = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])  # centred, at right angles


# ---------------------------------------------------------------- the terms


def test_pearson_is_the_correlation_and_zero_where_either_side_is_constant():
    values = torch.tensor([0.3, -1.0, 2.0, 0.1, 0.7, -0.4])
    expected = np.corrcoef(values.numpy(), LENGTHS.numpy())[0, 1]
    assert float(pearson(values, LENGTHS)) == pytest.approx(expected, abs=1e-5)
    assert float(pearson(2 * LENGTHS + 1, LENGTHS)) == pytest.approx(1.0, abs=1e-5)
    assert float(pearson(-LENGTHS, LENGTHS)) == pytest.approx(-1.0, abs=1e-5)
    constant = torch.ones(6, requires_grad=True)
    assert float(pearson(constant, LENGTHS).detach()) == 0.0
    assert float(pearson(values, torch.full((6,), 5.0))) == 0.0
    pearson(constant, torch.full((6,), 5.0)).backward()
    assert torch.isfinite(constant.grad).all()


@pytest.mark.parametrize(
    "quality, length, expected",
    [
        pytest.param(LENGTHS, LENGTHS, 0.0, id="both-heads-follow-length"),
        pytest.param(-LENGTHS, LENGTHS, 0.0, id="quality-against-length-counts-as-much"),
        pytest.param(torch.ones(6), LENGTHS, -1.0, id="disentangled-the-minimum"),
        pytest.param(LENGTHS, -LENGTHS, 2.0, id="entangled-the-wrong-way-the-maximum"),
    ],
)
def test_the_length_term_is_abs_quality_correlation_minus_length_correlation(quality, length, expected):
    rewards = torch.stack([quality, length], dim=1)
    penalty, correlations = odin_terms(rewards, LENGTHS, ORTHOGONAL_ROWS, 1.0, 1.0)
    assert float(penalty) == pytest.approx(expected, abs=1e-5)  # orthogonal rows add nothing
    assert float(correlations["length_corr_length"]) == pytest.approx(float(pearson(length, LENGTHS)), abs=1e-6)
    halved, _ = odin_terms(rewards, LENGTHS, ORTHOGONAL_ROWS, 0.5, 1.0)
    assert float(halved) == pytest.approx(expected / 2, abs=1e-5)


def test_the_orthogonality_term_is_zero_for_orthogonal_rows_and_ignores_their_scale():
    assert float(row_correlation(ORTHOGONAL_ROWS)) == pytest.approx(0.0, abs=1e-7)
    parallel = torch.tensor([[1.0, 2.0, 3.0, 5.0], [10.0, 20.0, 30.0, 50.0]])
    assert float(row_correlation(parallel)) == pytest.approx(1.0, abs=1e-6)
    assert float(row_correlation(parallel * torch.tensor([[1.0], [-1e-3]]))) == pytest.approx(1.0, abs=1e-5)
    rewards = torch.stack([torch.ones(6), LENGTHS], dim=1)
    penalty, _ = odin_terms(rewards, LENGTHS, parallel, 0.0, 0.25)
    assert float(penalty) == pytest.approx(0.25, abs=1e-6)


def test_gradients_of_the_terms_reach_both_heads():
    torch.manual_seed(0)
    features = torch.randn(6, 4)
    head = torch.nn.Linear(4, 2)
    penalty, _ = odin_terms(head(features), LENGTHS, head.weight, 1.0, 1.0)
    penalty.backward()
    assert head.weight.grad[0].abs().sum() > 0 and head.weight.grad[1].abs().sum() > 0


@pytest.mark.parametrize("field", ["length_correlation_weight", "head_orthogonality_weight"])
@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan], ids=["negative", "inf", "nan"])
def test_a_bad_weight_is_one_line_naming_it(field, value):
    with pytest.raises(SettingError) as raised:
        TrainingSettings(**{field: value})
    message = str(raised.value)
    assert "\n" not in message and field in message and "at least 0" in message


@pytest.mark.parametrize(
    "head, message",
    [
        (torch.nn.Identity(), "Identity, the score head, has no linear layer"),
        (torch.nn.Linear(32, 2), "the score head has 2 outputs, not 1"),
    ],
    ids=["no linear layer", "two outputs"],
)
def test_a_score_head_a_length_head_cannot_join_is_one_line_naming_it(tiny_encoder, head, message):
    from transformers import AutoModelForSequenceClassification

    from rm_pipeline.lib.training.length_head import add_length_head

    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder)
    model.classifier = head
    with pytest.raises(SettingError) as raised:
        add_length_head(model)
    assert message in str(raised.value) and "length_head is on" in str(raised.value)
    assert "\n" not in str(raised.value)


class OneProcess:
    """What `DeviceStatistics.read` needs of accelerate's Accelerator in a single process: gather is identity."""

    def gather(self, tensor):
        return tensor


def test_batch_correlations_are_averaged_over_the_batches_of_a_log_line():
    statistics = DeviceStatistics()
    for correlation in (0.2, -0.4):
        chosen, rejected = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0])
        extras = {"length_corr_quality": torch.tensor(correlation)}
        statistics.add("train", chosen, rejected, torch.ones(2), 10, extras)
    logs = statistics.read("train", OneProcess())
    assert logs["length_corr_quality"] == pytest.approx(-0.1)
    assert logs["accuracy"] == 0.5 and logs["num_tokens"] == 20 and logs["mean_reward"] == 1.5
    assert statistics.read("train", OneProcess()) == {}  # read and cleared


def test_packed_rewards_of_a_two_row_head_are_each_sequences_own(tiny_decoder):
    """Packed (shared prompt) rewards of both rows equal each sequence's forward pass alone."""
    from rm_pipeline.lib.training.model import prepare_model
    from rm_pipeline.lib.training.packing import packed_collator, packed_rewards
    from rm_pipeline_tests.test_packed_training import edge_pairs, examples_of

    settings = TrainingSettings(base_model=str(tiny_decoder), padding_free="on", length_head=True)
    model, tokenizer, _ = prepare_model(settings)
    examples = examples_of(edge_pairs(), tokenizer)
    with torch.no_grad():
        chosen, rejected = packed_rewards(model, packed_collator(True)(examples), model.config._attn_implementation)
        alone = [
            model(input_ids=torch.tensor([e[side]])).logits[0]
            for side in ("chosen_ids", "rejected_ids")
            for e in examples
        ]
    assert chosen.shape == (len(examples), 2)
    torch.testing.assert_close(torch.cat([chosen, rejected]), torch.stack(alone), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- training


def length_only_pairs(n: int, seed: int) -> pd.DataFrame:
    """The chosen answer is always the longer one, and nothing else tells them apart (the same random words)."""
    rng = np.random.default_rng(seed)
    words = ["sky", "blue", "red", "colour", "answer", "question", "there", "hello", "kind", "name"]
    rows = []
    for i in range(n):
        short, extra = int(rng.integers(1, 12)), int(rng.integers(4, 16))
        text = list(rng.choice(words, size=short + extra))
        rows.append(
            {
                "prompt": f"question {i}: {rng.choice(words)}",
                "chosen": " ".join(text),
                "rejected": " ".join(text[:short]),
                "conversational": False,
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.trains
def test_a_length_head_run_publishes_a_one_unit_model_with_its_provenance(tiny_encoder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rm_pipeline.lib.model_files import check_model_dir

    settings = encoder_settings(tiny_encoder, length_head=True, length_correlation_weight=0.5, epochs=1.0)
    train, evaluation = learnable_pairs(16), length_only_pairs(8, seed=3)  # answers of different lengths
    result = train_reward_model(train, evaluation, settings, tmp_path / "models", "rm-odin")
    directory = result.model_dir
    check_model_dir(directory)
    saved = state_dict_of(directory)
    assert saved["classifier.weight"].shape == (1, 32) and saved["classifier.bias"].shape == (1,)
    assert AutoModelForSequenceClassification.from_pretrained(directory).config.num_labels == 1
    rewards = RewardScorer.load(directory).score_pairs(evaluation)
    assert np.isfinite(rewards[["chosen_reward", "rejected_reward"]].to_numpy()).all()
    recorded = json.loads((directory / TRAINING_SETTINGS_FILE).read_text())
    assert recorded["length_head"] is True and recorded["length_correlation_weight"] == 0.5
    assert recorded["head_orthogonality_weight"] == 0.0
    for name in ("length_corr_quality", "length_corr_length", "eval_length_corr_quality"):
        assert -1 <= result.metrics[name] <= 1, name
    assert -1 <= result.metrics["eval_reward_length_correlation"] <= 1
    card = (directory / "README.md").read_text()
    assert "## Length head (ODIN)" in card and "dropped" in card and "`length_corr_quality`" in card


@pytest.mark.trains
def test_the_quality_head_ignores_length_where_a_plain_model_learns_it(tiny_encoder, tmp_path):
    """Seeded: on pairs whose only signal is length, a plain model's rewards follow length; the published quality
    head's follow it much less, on held-out answers."""
    torch.manual_seed(0)
    train, held_out = length_only_pairs(64, seed=1), length_only_pairs(32, seed=2)
    # 48 steps: the quality head's batch correlation settles near 0 (seeds 0-2: |ρ| 0.0-0.2 held out; plain 0.86)
    base = dict(epochs=6.0, learning_rate=3e-3, early_stopping_patience=None, eval_steps=1000, logging_steps=8)
    correlations = {}
    for name, extra in (("plain", {}), ("odin", {"length_head": True})):
        settings = encoder_settings(tiny_encoder, **base, **extra)
        result = train_reward_model(train, held_out, settings, tmp_path / name, f"rm-{name}")
        scored = RewardScorer.load(result.model_dir, precision="fp32").score_pairs(held_out)
        correlations[name] = reward_length_correlation(scored)
    assert correlations["plain"] > 0.6, correlations  # length is learnt: the shortcut to remove
    assert abs(correlations["odin"]) < correlations["plain"] / 2, correlations


def content_and_length_pairs(n: int, seed: int) -> pd.DataFrame:
    """The chosen answer says `excellent`, the rejected one `terrible`; the chosen one is also longer in three
    pairs of four (length follows preference, as in real annotations, but does not decide it)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        padding = " ".join(["well"] * int(rng.integers(3, 10)))
        chosen, rejected = "the answer is excellent", "the answer is terrible"
        chosen, rejected = (f"{chosen} {padding}", rejected) if i % 4 else (chosen, f"{rejected} {padding}")
        rows.append({"prompt": f"question {i}", "chosen": chosen, "rejected": rejected, "conversational": False})
    return pd.DataFrame(rows)


@pytest.mark.trains
def test_the_quality_head_learns_what_is_not_length(tiny_encoder, tmp_path):
    """Seeded: where preference shows in content as well as in length, the published quality head learns the
    content: it ranks equal-length answers by it, as the model a plain run publishes does. (This seed with
    head_orthogonality_weight 1, the default before, left the quality head reading length backwards: 0.0.)"""
    torch.manual_seed(0)
    train, held_out = content_and_length_pairs(64, seed=1), learnable_pairs(32, start=100)  # held out: equal lengths
    base = dict(epochs=6.0, learning_rate=3e-3, early_stopping_patience=None, eval_steps=1000, logging_steps=8)
    settings = encoder_settings(tiny_encoder, **base, length_head=True)
    result = train_reward_model(train, held_out, settings, tmp_path / "odin", "rm-odin")
    scored = RewardScorer.load(result.model_dir, precision="fp32").score_pairs(held_out)
    accuracy = float((scored["chosen_reward"] > scored["rejected_reward"]).mean())
    assert accuracy >= 0.9, accuracy


@pytest.mark.trains
def test_packed_decoder_batches_train_a_length_head(tiny_decoder, tmp_path):
    pairs = pd.DataFrame(
        {
            "prompt": ["what colour is the sky", "hello", "name a colour", "what is the answer"],
            "chosen": ["blue excellent", "hi there excellent", "red excellent", "the answer is blue excellent"],
            "rejected": ["red terrible", "terrible", "terrible", "terrible"],
            "conversational": [False] * 4,
        }
    )
    settings = TrainingSettings(
        base_model=str(tiny_decoder),
        max_length=64,
        epochs=2.0,
        batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        eval_steps=10,
        padding_free="on",
        shared_prompt="on",
        length_head=True,
    )
    result = train_reward_model(pairs, pairs.iloc[0:0], settings, tmp_path / "models", "rm-packed-odin")
    assert result.metrics["steps"] == 2 and math.isfinite(result.metrics["train_loss"])
    assert -1 <= result.metrics["length_corr_length"] <= 1
    assert state_dict_of(result.model_dir)["score.weight"].shape == (1, 32)
    assert np.isfinite(RewardScorer.load(result.model_dir).score_pairs(pairs)["chosen_reward"]).all()


@pytest.mark.trains
def test_lora_trains_the_two_row_head_and_publishes_its_quality_row_merged(tiny_encoder, tmp_path):
    initial = state_dict_of(tiny_encoder)["classifier.weight"]
    settings = encoder_settings(tiny_encoder, length_head=True, lora_rank=4, lora_alpha=8, lora_dropout=0.0)
    result = train_reward_model(
        learnable_pairs(16), learnable_pairs(8, start=100), settings, tmp_path / "models", "rm-lora-odin"
    )
    saved = state_dict_of(result.model_dir)
    assert not any("lora" in key or "modules_to_save" in key for key in saved)
    assert saved["classifier.weight"].shape == (1, 32)
    assert not torch.allclose(saved["classifier.weight"], initial)  # the head trained (modules_to_save)


@pytest.mark.trains
def test_each_ensemble_member_trains_its_heads_and_publishes_one_unit(tiny_encoder, tmp_path):
    settings = encoder_settings(tiny_encoder, length_head=True, ensemble_members=2, epochs=1.0)
    result = train_ensemble(learnable_pairs(16), learnable_pairs(8, start=100), settings, tmp_path / "models", "ens")
    for member in ("0", "1"):
        directory = result.model_dir / "members" / member
        assert state_dict_of(directory)["classifier.weight"].shape == (1, 32)
        assert json.loads((directory / TRAINING_SETTINGS_FILE).read_text())["length_head"] is True
    assert "## Length head (ODIN)" in (result.model_dir / "README.md").read_text()
    assert np.isfinite(RewardScorer.load(result.model_dir).score_pairs(learnable_pairs(4))["chosen_reward"]).all()


class Crash(RuntimeError):
    pass


@pytest.mark.trains
def test_a_length_head_run_resumes_to_the_weights_of_one_that_never_crashed(tiny_encoder, tmp_path):
    torch.manual_seed(0)
    train, evaluation = learnable_pairs(32), learnable_pairs(8, start=100)
    settings = encoder_settings(tiny_encoder, eval_steps=2, epochs=1.0, early_stopping_patience=None, length_head=True)
    reference = train_reward_model(train, evaluation, settings, tmp_path / "reference", "rm-odin")

    def crashing(kind, payload):
        if kind == "progress" and payload["step"] >= 3:
            raise Crash("simulated crash")

    models_dir = tmp_path / "models"
    with pytest.raises(Crash):
        train_reward_model(train, evaluation, settings, models_dir, "rm-odin", report=crashing)
    result = train_reward_model(train, evaluation, settings, models_dir, "rm-odin")
    assert result.metrics["resumed_from"].endswith("checkpoint-2")
    expected, resumed = state_dict_of(reference.model_dir), state_dict_of(result.model_dir)
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], atol=1e-6, rtol=0, msg=name)
