"""Reward-model training: tiny encoder and decoder models built from config, trained for seconds on CPU.

No download: the encoder uses the bundled MiniLM tokenizer with a 2-layer, 32-wide BERT; the decoder a
word-level tokenizer and a 2-layer Llama, both saved to a temporary directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rm_pipeline.lib.model_registry import switch_current
from rm_pipeline.lib.scoring import RewardScorer, pad_right, position_limit, score_ids
from rm_pipeline.lib.tokenization import encode, load_tokenizer, token_lengths
from rm_pipeline.lib.training.data import margins, pair_dataset
from rm_pipeline.lib.training.model import freeze_all_but_last, load_model
from rm_pipeline.lib.training.publish import publish
from rm_pipeline.lib.training.resume import last_complete_checkpoint
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings


def learnable_pairs(n: int, start: int = 0) -> pd.DataFrame:
    """The chosen response always carries the word `excellent`, the rejected one `terrible`."""
    rows = []
    for i in range(start, start + n):
        colour = ["red", "blue"][i % 2]
        rows.append(
            {
                "prompt": f"what colour is the sky question {i}",
                "chosen": f"the answer is {colour} excellent",
                "rejected": f"the answer is {colour} terrible",
                "conversational": False,
                "strength": [1.0, 2.0, np.nan][i % 3],
            }
        )
    return pd.DataFrame(rows)


def encoder_settings(base: Path, **overrides) -> TrainingSettings:
    values = dict(
        base_model=str(base),
        max_length=64,
        epochs=2.0,
        learning_rate=3e-2,
        warmup_ratio=0.0,
        batch_size=8,
        eval_steps=4,
        logging_steps=1,
        early_stopping_patience=3,
        seed=0,
    )
    return TrainingSettings(**{**values, **overrides})


def state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def assert_throughputs_agree(metrics: dict, train: pd.DataFrame, tokenizer) -> None:
    """tokens/s over pairs/s is the mean tokens per pair (chosen + rejected): both count the same steps."""
    tokens = (
        token_lengths(tokenizer, train["prompt"], train["chosen"], train["conversational"]).sum()
        + token_lengths(tokenizer, train["prompt"], train["rejected"], train["conversational"]).sum()
    )
    ratio = metrics["tokens_per_second"] / metrics["pairs_per_second"]
    assert ratio == pytest.approx(tokens / len(train), rel=0.02)


def test_a_half_precision_checkpoint_is_trained_from_fp32_weights(tiny_encoder, tmp_path):
    """transformers 5 keeps a checkpoint's dtype by default; AdamW on bf16 weights would lose small updates."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    half = tmp_path / "bf16"
    AutoModelForSequenceClassification.from_pretrained(tiny_encoder, dtype=torch.bfloat16).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(half)
    assert AutoModelForSequenceClassification.from_pretrained(half).dtype == torch.bfloat16  # the default we avoid
    model, _ = load_model(TrainingSettings(base_model=str(half)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ---------------------------------------------------------------- 1. scoring is padding-invariant


def test_encoder_reward_is_the_same_alone_and_in_a_padded_batch(tiny_encoder):
    model, tokenizer = load_model(TrainingSettings(base_model=str(tiny_encoder)))
    pairs = learnable_pairs(4)
    short = encode(tokenizer, ["sky?"], ["blue"], [False])
    sequences = short + encode(
        tokenizer, pairs["prompt"] + " and much longer text here", pairs["chosen"], pairs["conversational"]
    )
    assert len(short[0]) < min(len(s) for s in sequences[1:])  # the short one really gets padded
    alone = score_ids(model, sequences, tokenizer.pad_token_id, batch_size=1)
    batched = score_ids(model, sequences, tokenizer.pad_token_id, batch_size=len(sequences), sort_by_length=False)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.unique(alone.round(6)).size > 1  # not a constant model
    # RewardScorer is encode + score_ids: same numbers
    texts = RewardScorer(model, tokenizer, position_limit(model, tokenizer)).score(["sky?"], ["blue"], [False])
    np.testing.assert_allclose(texts["reward"], alone[:1], atol=1e-5)


def test_pad_right_pads_on_the_right_with_a_mask():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_decoder_reward_is_read_at_the_last_non_padding_token(tiny_decoder):
    model, tokenizer = load_model(TrainingSettings(base_model=str(tiny_decoder)))
    assert tokenizer.pad_token_id is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id  # set by load_model: the saved config had none
    sequences = encode(
        tokenizer,
        ["hello", "what colour is the sky", "hi there"],
        ["red", "the answer is blue excellent", "a colour"],
        [False, False, False],
    )
    assert all(row[-1] == tokenizer.eos_token_id for row in sequences)
    alone = score_ids(model, sequences, tokenizer.pad_token_id, batch_size=1)
    batched = score_ids(model, sequences, tokenizer.pad_token_id, batch_size=len(sequences), sort_by_length=False)
    np.testing.assert_allclose(batched, alone, atol=1e-5)

    # The reward is the score head on the hidden state of the last token that is not padding.
    input_ids, attention_mask = pad_right(sequences, tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        head = model.score(hidden)[..., 0]
    for row, ids in enumerate(sequences):
        last = max(i for i, token in enumerate(ids) if token != tokenizer.pad_token_id)
        assert alone[row] == pytest.approx(float(head[row, last]), abs=1e-5)
        # more padding after the sequence changes nothing
        padded = ids + [tokenizer.pad_token_id] * 5
        [longer] = score_ids(model, [padded], tokenizer.pad_token_id, batch_size=1)
        assert longer == pytest.approx(alone[row], abs=1e-5)


# ---------------------------------------------------------------- 2. train and publish


@pytest.mark.trains
def test_train_reward_model_publishes_a_loadable_model(tiny_encoder, tmp_path):
    torch.manual_seed(0)
    train, evaluation = learnable_pairs(32), learnable_pairs(8, start=100)
    models_dir, run_name = tmp_path / "models", "rm-test-run"
    reports = []
    result = train_reward_model(
        train,
        evaluation,
        encoder_settings(tiny_encoder),
        models_dir,
        run_name,
        report=lambda kind, payload: reports.append((kind, payload)),
        card_facts={"data_version": "dv-1234abcd", "annotation_batches": ["batch-a"]},
    )

    target = result.model_dir
    assert target.parent == models_dir and target.name.startswith(run_name + "-")  # one directory per training
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "training_curves.png",
        "training_metrics.json",
        "training_history.json",
        "training_facts.json",
    ):
        assert (target / name).is_file(), name
    config = json.loads((target / "config.json").read_text())
    assert math.isfinite(config["reward_mean"]) and config["reward_std"] > 0
    card = (target / "README.md").read_text()
    assert str(tiny_encoder) in card and "dv-1234abcd" in card and "batch-a" in card and run_name in card

    facts = json.loads((target / "training_facts.json").read_text())
    assert facts == {"run_name": target.name, "data_version": "dv-1234abcd", "annotation_batches": ["batch-a"]}
    assert not (models_dir / "current").exists()  # a candidate: evaluation decides whether it becomes current
    assert not (models_dir / ".checkpoints" / run_name).exists()
    assert not list(models_dir.glob(".staging-*"))

    scorer = RewardScorer.load(target)
    assert scorer.model.config.num_labels == 1
    # training's scores of the eval split are read back, not scored again, and are what scoring them gives
    assert len(scorer.scored) == 2 * len(evaluation)
    recalled = scorer.score_pairs(evaluation)
    rescored = dataclasses.replace(scorer, scored={}).score_pairs(evaluation)
    for side in ("chosen_reward", "rejected_reward", "chosen_tokens", "truncated"):
        np.testing.assert_allclose(recalled[side].to_numpy(float), rescored[side].to_numpy(float), atol=1e-6)
    chosen, rejected = rescored["chosen_reward"].to_numpy(), rescored["rejected_reward"].to_numpy()
    assert (chosen - rejected).min() > 0.1  # it learnt that `excellent` beats `terrible`
    # the statistics in the config describe the model as published
    both = np.concatenate([chosen, rejected])
    assert config["reward_mean"] == pytest.approx(both.mean(), abs=1e-4)
    assert config["reward_std"] == pytest.approx(both.std(), abs=1e-4)

    metrics = result.metrics
    assert metrics["steps"] == 8  # 32 pairs / batch 8 * 2 epochs
    for key in ("pairs_per_second", "tokens_per_second", "peak_memory_mb"):
        assert metrics[key] > 0, key
    assert metrics["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert metrics["eval_accuracy"] == 1.0
    assert metrics["resumed_from"] is None
    assert_throughputs_agree(metrics, train, scorer.tokenizer)
    progress = [payload for kind, payload in reports if kind == "progress"]
    assert progress and progress[-1]["max_steps"] == 8
    assert any("eval_accuracy" in entry for entry in result.history)


# ---------------------------------------------------------------- 3. resume after a crash


class Crash(RuntimeError):
    pass


@pytest.mark.trains
def test_training_resumes_from_the_last_checkpoint_after_a_crash(tiny_encoder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    train, evaluation = learnable_pairs(32), learnable_pairs(8, start=100)
    settings = encoder_settings(tiny_encoder, eval_steps=2, epochs=1.5, early_stopping_patience=None)
    models_dir, run_name = tmp_path / "models", "rm-resume"
    uninterrupted = train_reward_model(train, evaluation, settings, tmp_path / "reference", run_name)

    # a previous model is current
    publish(models_dir, "previous", lambda folder: folder.mkdir(parents=True))
    switch_current(models_dir, "previous")
    seen = []

    def crashing(kind, payload):
        seen.append((kind, payload))
        if kind == "progress" and payload["step"] >= 4:
            raise Crash("simulated crash")

    with pytest.raises(Crash):
        train_reward_model(train, evaluation, settings, models_dir, run_name, report=crashing)
    max_steps = [payload for kind, payload in seen if kind == "progress"][-1]["max_steps"]
    assert max_steps == 6  # 4 steps an epoch, 1.5 epochs
    assert not list(models_dir.glob(run_name + "*"))
    assert (models_dir / "current").resolve() == (models_dir / "previous").resolve()
    checkpoints = sorted(p.name for p in (models_dir / ".checkpoints" / run_name).glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2"]  # step 4 crashed while logging, before its save
    # and a newer checkpoint cut short, as a process SIGKILLed while saving leaves one (Trainer writes in place,
    # trainer_state.json last): resuming must not pick it
    cut_short = models_dir / ".checkpoints" / run_name / "checkpoint-4"
    shutil.copytree(cut_short.with_name("checkpoint-2"), cut_short)
    (cut_short / "trainer_state.json").unlink()
    (cut_short / "model.safetensors").write_bytes((cut_short / "model.safetensors").read_bytes()[:100])

    reports = []
    result = train_reward_model(
        train, evaluation, settings, models_dir, run_name, report=lambda kind, payload: reports.append((kind, payload))
    )
    logs = [payload["message"] for kind, payload in reports if kind == "log"]
    assert any("resuming from" in message and "checkpoint-2" in message for message in logs)
    assert any(message.startswith(f"{cut_short}: cut short while being saved") for message in logs), logs
    assert result.metrics["resumed_from"].endswith("checkpoint-2")
    assert result.metrics["steps"] == max_steps
    progress_steps = [payload["step"] for kind, payload in reports if kind == "progress"]
    assert min(progress_steps) == 3  # nothing before the checkpoint is trained again
    assert (models_dir / "current").resolve() == (models_dir / "previous").resolve()  # training never switches it
    assert not (models_dir / ".checkpoints").exists()
    assert AutoModelForSequenceClassification.from_pretrained(result.model_dir).config.num_labels == 1
    # optimizer, scheduler, RNG and data order restored: the same weights as a run that never crashed
    reference, resumed = state_dict_of(uninterrupted.model_dir), state_dict_of(result.model_dir)
    assert set(reference) == set(resumed)
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-6, rtol=0, msg=name)
    assert_throughputs_agree(result.metrics, train, load_tokenizer(str(tiny_encoder)))  # steps 3-6 of 6


# ---------------------------------------------------------------- 4. atomic publishing


def _writer(marker: str):
    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "marker.txt").write_text(marker)

    return write


def test_a_failing_write_leaves_no_partial_model_and_the_current_one_untouched(tmp_path):
    models_dir = tmp_path / "models"
    publish(models_dir, "first", _writer("first"))
    switch_current(models_dir, "first")

    def failing(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text("half written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(models_dir, "second", failing)
    current = models_dir / "current"
    assert current.is_symlink() and (current / "marker.txt").read_text() == "first"
    assert not (models_dir / "second").exists()
    assert sorted(p.name for p in models_dir.iterdir()) == ["current", "first"]  # no staging left behind


def test_a_published_model_is_never_overwritten(tmp_path):
    models_dir = tmp_path / "models"
    publish(models_dir, "other", _writer("other"))
    first = publish(models_dir, "run", _writer("one"))
    with pytest.raises(FileExistsError):
        publish(models_dir, "run", _writer("two"))
    assert (first / "marker.txt").read_text() == "one"
    assert sorted(p.name for p in models_dir.iterdir()) == ["other", "run"]  # publishing never switches current


# ---------------------------------------------------------------- 5. LoRA


def test_lora_training_saves_a_plain_model_with_a_trained_head(tiny_encoder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    settings = encoder_settings(
        tiny_encoder, lora_rank=4, lora_alpha=8, lora_dropout=0.0, epochs=1.0, learning_rate=1e-2
    )
    result = train_reward_model(
        learnable_pairs(16), learnable_pairs(8, start=100), settings, tmp_path / "models", "rm-lora"
    )
    assert result.metrics["steps"] == 2
    saved = state_dict_of(result.model_dir)
    assert not any("lora" in key or "base_layer" in key or "modules_to_save" in key for key in saved)

    loaded = AutoModelForSequenceClassification.from_pretrained(result.model_dir)  # no peft involved
    assert type(loaded).__name__ == "BertForSequenceClassification" and loaded.config.num_labels == 1
    initial = state_dict_of(tiny_encoder)
    assert set(saved) == set(initial)
    assert not torch.allclose(saved["classifier.weight"], initial["classifier.weight"])  # modules_to_save
    merged = saved["bert.encoder.layer.1.attention.self.query.weight"]
    assert not torch.allclose(merged, initial["bert.encoder.layer.1.attention.self.query.weight"])  # LoRA merged
    torch.testing.assert_close(
        saved["bert.embeddings.word_embeddings.weight"], initial["bert.embeddings.word_embeddings.weight"]
    )  # frozen base, not adapted
    for name, parameter in loaded.state_dict().items():
        torch.testing.assert_close(parameter, saved[name])


# ---------------------------------------------------------------- 6. partial fine-tuning


def test_freeze_all_but_last_layer_of_an_encoder(tiny_encoder):
    model, _ = load_model(TrainingSettings(base_model=str(tiny_encoder)))
    freeze_all_but_last(model, 1)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not any(v for k, v in grads.items() if k.startswith("bert.embeddings."))
    assert not any(v for k, v in grads.items() if k.startswith("bert.encoder.layer.0."))
    assert all(v for k, v in grads.items() if k.startswith("bert.encoder.layer.1."))
    assert grads["classifier.weight"] and grads["classifier.bias"]


def test_freeze_all_but_last_layer_of_a_decoder(tiny_decoder):
    model, _ = load_model(TrainingSettings(base_model=str(tiny_decoder)))
    freeze_all_but_last(model, 1)
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not grads["model.embed_tokens.weight"]
    assert not any(v for k, v in grads.items() if k.startswith("model.layers.0."))
    assert all(v for k, v in grads.items() if k.startswith("model.layers.1."))
    assert grads["model.norm.weight"] and grads["score.weight"]


# ---------------------------------------------------------------- 7. margins and the dataset


def test_margins_scale_strength_and_default_to_zero():
    pairs = pd.DataFrame({"strength": [2.0, np.nan, 1.0, None]})
    assert margins(pairs, 0.5).tolist() == [1.0, 0.0, 0.5, 0.0]
    assert margins(pd.DataFrame({"prompt": ["a", "b"]}), 0.5).tolist() == [0.0, 0.0]  # no strength column


def test_pair_dataset_matches_the_length_rule_and_carries_margins_only_when_asked(tiny_encoder):
    tokenizer = load_tokenizer(str(tiny_encoder))
    pairs = learnable_pairs(6)
    pairs.loc[0, "chosen"] = "a much longer chosen answer with many more words in it"
    with_margin = pair_dataset(
        pairs, tokenizer, TrainingSettings(base_model=str(tiny_encoder), use_margin=True, margin_per_strength=0.5)
    )
    without = pair_dataset(pairs, tokenizer, TrainingSettings(base_model=str(tiny_encoder), use_margin=False))
    assert "margin" in with_margin.column_names and "margin" not in without.column_names
    assert with_margin["margin"] == [0.5, 1.0, 0.0, 0.5, 1.0, 0.0]
    chosen = token_lengths(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
    rejected = token_lengths(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
    assert [len(ids) for ids in with_margin["chosen_ids"]] == chosen.tolist()
    assert [len(ids) for ids in with_margin["rejected_ids"]] == rejected.tolist()
    assert with_margin["length"] == (chosen + rejected).tolist()


# ---------------------------------------------------------------- 8. the decoder path end to end


def test_decoder_training_on_conversational_pairs(tiny_decoder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)

    def chat(*turns) -> str:
        return json.dumps([{"role": r, "content": c} for r, c in turns])

    pairs = pd.DataFrame(
        {
            "prompt": [
                chat(("system", "be kind."), ("user", "what colour is the sky")),
                chat(("user", "hello")),
                chat(("user", "name a colour")),
            ],
            "chosen": ["blue excellent", "hi there excellent", "red excellent"],
            "rejected": ["red terrible", "terrible", "terrible"],
            "conversational": [True, True, True],
            "strength": [1.0, np.nan, 2.0],
        }
    )
    settings = TrainingSettings(
        base_model=str(tiny_decoder),
        max_length=64,
        epochs=1.0,
        batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        eval_steps=10,
        seed=0,
    )
    tokenizer = load_tokenizer(str(tiny_decoder))
    assert tokenizer.chat_template  # loaded from the saved tokenizer
    data = pair_dataset(pairs, tokenizer, settings)
    for ids in list(data["chosen_ids"]) + list(data["rejected_ids"]):
        assert ids[-1] == tokenizer.eos_token_id
        assert ids[0] == tokenizer.convert_tokens_to_ids("<|system|>") or ids[0] == tokenizer.convert_tokens_to_ids(
            "<|user|>"
        )  # the chat template, not plain text

    result = train_reward_model(pairs, pairs.iloc[0:0], settings, tmp_path / "models", "rm-decoder")
    assert result.metrics["steps"] == 1 and result.metrics["eval_pairs"] == 0
    assert math.isfinite(result.metrics["train_loss"])
    loaded = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert type(loaded).__name__ == "LlamaForSequenceClassification"
    assert loaded.config.pad_token_id == tokenizer.pad_token_id
    saved_tokenizer = load_tokenizer(str(result.model_dir))
    assert saved_tokenizer.chat_template == tokenizer.chat_template
    rewards = RewardScorer.load(result.model_dir).score(pairs["prompt"], pairs["chosen"], pairs["conversational"])[
        "reward"
    ]
    assert np.isfinite(rewards).all()


def test_training_accuracy_counts_a_tie_as_half_right_like_the_evaluation(tiny_encoder, tmp_path):
    """A score head of zeros gives every answer the same reward: chance (0.5) by the evaluation's pair credit,
    where TRL's own strict `>` would report 0."""
    from rm_pipeline.lib.training.data import training_data
    from rm_pipeline.lib.training.model import prepare_model
    from rm_pipeline.lib.training.run import reward_statistics
    from rm_pipeline.lib.training.trainer import build_trainer, progress_callback

    settings = encoder_settings(tiny_encoder, early_stopping_patience=1)
    model, tokenizer, peft_config = prepare_model(settings)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    data = training_data(learnable_pairs(8), learnable_pairs(8, start=100), tokenizer, settings, lambda *_: None)
    trainer = build_trainer(
        model, tokenizer, peft_config, data, settings, tmp_path / "checkpoints", progress_callback(lambda *_: None)
    )
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(0.5)
    scored = RewardScorer.of(model, tokenizer).score_pairs(learnable_pairs(8, start=100))
    assert reward_statistics(scored)["eval_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("removes", [True, False], ids=["the main process", "another process"])
def test_each_process_resumes_from_the_same_checkpoint_and_only_the_main_one_removes_a_cut_short_one(removes, tmp_path):
    complete, cut_short = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    for folder in (complete, cut_short):
        folder.mkdir()
    (complete / "trainer_state.json").write_text('{"global_step": 2}')
    (cut_short / "trainer_state.json").write_text('{"global_step": 4')  # killed mid-write
    logs = []
    chosen = last_complete_checkpoint(tmp_path, lambda kind, payload: logs.append(payload["message"]), removes)
    assert chosen == str(complete)
    assert cut_short.exists() is not removes and len(logs) == int(removes)
