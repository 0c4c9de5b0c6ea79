"""Padding-free and shared-prompt batches (issue 21): the same rewards, loss and gradients as padded batches.

Tiny Llama and Qwen2 decoders built from configs (no download), fp32 on CPU, tolerance 1e-5; then whole training
runs with each lever, resuming with them, and the statistics the trainer keeps on the device.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from rm_pipeline.lib.settings import SettingError
from rm_pipeline.lib.tokenization import encode, load_tokenizer
from rm_pipeline.lib.training.model import load_model, prepare_model
from rm_pipeline.lib.training.packing import (
    Batching,
    block_mask,
    dense_mask,
    is_decoder,
    packed_collator,
    packed_length,
    packed_rewards,
    resolve_batching,
    shared_prefix_length,
    token_budget_batches,
)
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline.lib.training.trainer import pair_credit_trainer_class, preference_collator, preference_loss
from rm_pipeline_tests.conftest import _tiny_llama_config
from rm_pipeline_tests.test_reward_training import encoder_settings, learnable_pairs, state_dict_of

TOLERANCE = 1e-5


def conversation(*turns: str) -> str:
    roles = ["system", "user", "assistant", "user"]
    return json.dumps([{"role": roles[i % 4], "content": text} for i, text in enumerate(turns)])


def edge_pairs() -> pd.DataFrame:
    """Standard and conversational pairs, an empty prompt, one-token responses, a response that is a prefix of the
    other, and a multi-turn chat: the cases where a shared prompt or a last token could go wrong."""
    rows = [
        ("what colour is the sky", "the answer is blue excellent", "the answer is red terrible", False),
        ("", "blue", "red terrible", False),  # empty prompt
        ("what is your name", "hello", "hi", False),  # one-token responses
        ("hello there", "the answer", "the answer is", False),  # chosen is a prefix of rejected
        (conversation("be kind.", "what colour is the sky"), "blue excellent", "red", True),
        (conversation("hi", "hello there", "what is the answer"), "a", "the answer is a terrible", True),
        (conversation("what is your name"), "excellent", "terrible", True),
    ]
    frame = pd.DataFrame(rows, columns=["prompt", "chosen", "rejected", "conversational"])
    return frame.assign(strength=[1.0, np.nan, 2.0, np.nan, 1.0, np.nan, 3.0])


@pytest.fixture(scope="module")
def decoders(tiny_decoder, tmp_path_factory):
    """A Llama and a Qwen2 of the same tiny size; the decoder tokenizer with and without its chat template."""
    from transformers import LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

    folder = tmp_path_factory.mktemp("plain_decoder")
    shutil.copytree(tiny_decoder, folder, dirs_exist_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    templated, plain = load_tokenizer(str(tiny_decoder)), load_tokenizer(str(folder))
    assert templated.chat_template and not plain.chat_template

    torch.manual_seed(0)
    llama = LlamaForSequenceClassification(_tiny_llama_config(num_labels=1))
    qwen_config = Qwen2Config(**{**_tiny_llama_config(num_labels=1).to_dict(), "model_type": "qwen2"})
    qwen = Qwen2ForSequenceClassification(qwen_config)
    for model in (llama, qwen):
        model.config.pad_token_id = templated.pad_token_id
    return {"llama": llama, "qwen2": qwen, "template": templated, "plain": plain}


def examples_of(pairs: pd.DataFrame, tokenizer) -> list[dict]:
    chosen = encode(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
    rejected = encode(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
    margins = pairs["strength"].fillna(0.0).to_numpy() * 0.5
    return [
        {"chosen_ids": c, "rejected_ids": r, "preference": 1.0, "margin": float(m)}
        for c, r, m in zip(chosen, rejected, margins)
    ]


def padded_rewards(model, tokenizer, examples):
    from trl import RewardConfig

    args = RewardConfig(output_dir="unused", use_cpu=True, report_to=[])
    batch = {key: value.to(model.device) for key, value in preference_collator(tokenizer, args)(examples).items()}
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return rewards.squeeze(-1).chunk(2), batch


def loss_and_gradients(model, chosen, rejected, batch):
    model.zero_grad()
    loss = preference_loss(chosen, rejected, batch["preference"], batch["margin"])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tokenizer_kind", ["template", "plain"], ids=["chat-template", "no-template"])
@pytest.mark.parametrize("row_per_pair", [False, True], ids=["one-row", "row-per-pair"])
@pytest.mark.parametrize("shared_prompt", [False, True], ids=["padding-free", "shared-prompt"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_packed_rewards_loss_and_gradients_equal_the_padded_computation(
    decoders, architecture, attention, shared_prompt, row_per_pair, tokenizer_kind
):
    model, tokenizer = decoders[architecture], decoders[tokenizer_kind]
    model.set_attn_implementation(attention)
    model.train()  # dropout is 0 in these configs: train mode computes what eval mode does
    examples = examples_of(edge_pairs(), tokenizer)
    (chosen, rejected), padded = padded_rewards(model, tokenizer, examples)
    reference_loss, reference_gradients = loss_and_gradients(model, chosen, rejected, padded)

    packed = packed_collator(shared_prompt, row_per_pair)(examples)
    assert packed["input_ids"].shape[0] == (len(examples) if row_per_pair else 1)
    tokens = sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    saved = sum(shared_prefix_length(e["chosen_ids"], e["rejected_ids"]) for e in examples)
    assert int((packed["pair"] >= 0).sum()) == tokens - (saved if shared_prompt else 0)
    if not row_per_pair:  # no padding at all
        assert packed["input_ids"].shape[1] == tokens - (saved if shared_prompt else 0)
    assert saved > 0 and padded["input_ids"].numel() > tokens
    packed_chosen, packed_rejected = packed_rewards(model, packed, attention)
    torch.testing.assert_close(packed_chosen, chosen, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(packed_rejected, rejected, atol=TOLERANCE, rtol=0)
    loss, gradients = loss_and_gradients(model, packed_chosen, packed_rejected, packed)
    torch.testing.assert_close(loss, reference_loss, atol=TOLERANCE, rtol=0)
    assert set(gradients) == set(reference_gradients)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, reference_gradients[name], atol=TOLERANCE, rtol=0, msg=name)
    assert np.unique(torch.cat([chosen, rejected]).detach().numpy().round(5)).size > 4  # not a constant model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention's kernels compile for a GPU (gpu_checks.sh)")
@pytest.mark.parametrize("shared_prompt", [False, True], ids=["padding-free", "shared-prompt"])
def test_flex_attention_on_a_gpu_gives_the_padded_rewards_and_gradients(decoders, shared_prompt):
    """What `padding_free: auto` runs on a GPU: one packed row through flex_attention's BlockMask (fp32; the
    kernels' summation order differs from sdpa's, hence 1e-4)."""
    import copy

    model = copy.deepcopy(decoders["llama"]).cuda().train()
    examples = examples_of(edge_pairs(), decoders["template"])
    (chosen, rejected), padded = padded_rewards(model, decoders["template"], examples)
    reference_loss, reference_gradients = loss_and_gradients(model, chosen, rejected, padded)
    model.set_attn_implementation("flex_attention")
    packed = {key: value.cuda() for key, value in packed_collator(shared_prompt)(examples).items()}
    packed_chosen, packed_rejected = packed_rewards(model, packed, "flex_attention")
    torch.testing.assert_close(
        torch.cat([packed_chosen, packed_rejected]), torch.cat([chosen, rejected]), atol=1e-4, rtol=0
    )
    loss, gradients = loss_and_gradients(model, packed_chosen, packed_rejected, packed)
    torch.testing.assert_close(loss, reference_loss, atol=1e-4, rtol=0)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, reference_gradients[name], atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a GPU's concern (gpu_checks.sh)")
def test_a_training_step_never_waits_for_the_gpu(tiny_decoder, tmp_path):
    """Issue 21's third lever: forward, loss, statistics and backward of a packed batch queue work on the GPU
    without reading anything back (torch's sync debug mode warns on every device-to-host sync)."""
    import warnings

    from datasets import Dataset
    from trl import RewardConfig

    settings = TrainingSettings(base_model=str(tiny_decoder))  # auto: packed, flex_attention on a GPU
    model, tokenizer, _ = prepare_model(settings)
    batching = resolve_batching(settings, model, "cuda")
    examples = examples_of(edge_pairs(), tokenizer)
    args = RewardConfig(output_dir=str(tmp_path), report_to=[], max_steps=1, bf16=True, logging_nan_inf_filter=False)
    collator = packed_collator(batching.shared_prompt, batching.row_per_pair)
    trainer = pair_credit_trainer_class(batching=batching)(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    model.train()
    batch = trainer._prepare_inputs(collator(examples))  # on the GPU before: the dataloader's copy is not the step
    trainer.training_step(trainer.model, dict(batch))  # compiles, may sync
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(2):
                trainer.training_step(trainer.model, dict(batch))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert not [w for w in caught if "synchroniz" in str(w.message)], [str(w.message) for w in caught]
    trainer.log({})
    assert "train" not in trainer.statistics.pending  # read at the log line


def test_the_shared_prompt_is_the_common_prefix_leaving_each_response_its_last_token():
    assert shared_prefix_length([5, 6, 7, 1], [5, 6, 8, 1]) == 2
    assert shared_prefix_length([5, 6], [5, 6, 7, 1]) == 1  # a prefix of the other keeps its last token
    assert shared_prefix_length([5, 6, 1], [5, 6, 1]) == 2
    assert shared_prefix_length([1], [1]) == 0
    assert shared_prefix_length([4, 1], [5, 1]) == 0  # nothing in common (an empty prompt, say)


def test_the_packed_row_and_its_mask_by_hand():
    """Pair 0: prompt [7 8], chosen [9], rejected [10 11]; pair 1: no common prefix. Rejected positions continue
    from the prompt's end; a rejected token sees the prompt and itself, never the chosen response."""
    batch = packed_collator(True)(
        [{"chosen_ids": [7, 8, 9], "rejected_ids": [7, 8, 10, 11]}, {"chosen_ids": [3], "rejected_ids": [4, 5]}]
    )
    assert batch["input_ids"].tolist() == [[7, 8, 9, 10, 11, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2, 3, 0, 0, 1]]
    assert batch["last_index"].tolist() == [2, 5, 4, 7]  # chosen of each pair, then rejected of each
    mask = dense_mask(batch["pair"], batch["part"])[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],  # chosen: the prompt and itself
        [1, 1, 0, 1, 0, 0, 0, 0],  # rejected: the prompt, not the chosen token
        [1, 1, 0, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0],  # the next pair sees nothing of the first
        [0, 0, 0, 0, 0, 0, 1, 0],  # its rejected sequence doesn't see its chosen one
        [0, 0, 0, 0, 0, 0, 1, 1],
    ]
    eager = dense_mask(batch["pair"], batch["part"], eager=True)[0, 0]
    assert ((eager == 0) == torch.tensor(mask, dtype=torch.bool)).all() and eager.min() < -1e30


@pytest.mark.parametrize("row_per_pair", [False, True], ids=["one-row", "row-per-pair"])
@pytest.mark.parametrize("shared_prompt", [False, True], ids=["padding-free", "shared-prompt"])
def test_the_flex_attention_block_mask_is_the_dense_mask(decoders, shared_prompt, row_per_pair):
    from torch.nn.attention.flex_attention import create_mask

    batch = packed_collator(shared_prompt, row_per_pair)(examples_of(edge_pairs(), decoders["template"]))
    rows, length = batch["input_ids"].shape
    flex = create_mask(block_mask(batch["pair"], batch["part"]).mask_mod, rows, 1, length, length, device="cpu")
    assert torch.equal(flex, dense_mask(batch["pair"], batch["part"]))


def test_encoders_keep_padded_batches_and_refuse_the_levers(tiny_encoder, tiny_decoder):
    encoder, _ = load_model(TrainingSettings(base_model=str(tiny_encoder)))
    decoder, _ = load_model(TrainingSettings(base_model=str(tiny_decoder)))
    assert not is_decoder(encoder) and is_decoder(decoder)
    auto = TrainingSettings()
    assert resolve_batching(auto, encoder, "cuda") == Batching()
    flex = Batching(packed=True, shared_prompt=True, attention="flex_attention")
    assert resolve_batching(auto, decoder, "cuda") == flex  # one row, blocks skipped
    assert resolve_batching(auto, decoder, "cpu") == Batching()  # measured slower on a CPU (settings help)
    on = TrainingSettings(padding_free="on", max_tokens_per_batch=512)
    assert resolve_batching(on, decoder, "cpu") == Batching(True, True, 512, row_per_pair=True)  # a dense mask
    assert resolve_batching(TrainingSettings(padding_free="on", shared_prompt="off"), decoder, "cpu").packed
    varlen = TrainingSettings(padding_free="on", attention="flash_attention_2")
    expected = Batching(packed=True, shared_prompt=False, attention="flash_attention_2")
    assert resolve_batching(varlen, decoder, "cuda") == expected
    for settings, words in [
        (on, "not a causal decoder"),
        (TrainingSettings(shared_prompt="on", padding_free="off"), "needs padding_free"),
        (TrainingSettings(padding_free="on", shared_prompt="on", attention="flash_attention_2"), "can't mask"),
        (TrainingSettings(padding_free="on", attention="flex_attention"), "no backward on a CPU"),
    ]:
        model = encoder if words == "not a causal decoder" else decoder
        with pytest.raises(SettingError, match=words) as error:
            resolve_batching(settings, model, "cpu")
        assert "\n" not in str(error.value)


def test_token_budget_batches_hold_every_pair_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(10, 200, size=300)
    for padded in (False, True):
        batches = token_budget_batches(lengths, 1000, padded, seed=0, epoch=0)
        assert sorted(i for batch in batches for i in batch) == list(range(300))
        cost = [len(b) * lengths[b].max() if padded else lengths[b].sum() for b in batches]
        assert max(cost) <= 1000
        assert np.mean(cost) > 800  # filled, not one pair a batch
        assert batches == token_budget_batches(lengths, 1000, padded, seed=0, epoch=0)  # resumable
        assert batches != token_budget_batches(lengths, 1000, padded, seed=0, epoch=1)  # reshuffled each epoch
    assert token_budget_batches([5, 2000], 100, False, 0, 0) in ([[1], [0]], [[0], [1]])  # too long: alone


def test_statistics_are_summed_on_the_device_and_read_at_the_log_line(tiny_decoder, tmp_path):
    """No `.item()` in the step: the trainer's batch statistics stay tensors until `log` reads them all at once."""
    from datasets import Dataset
    from trl import RewardConfig

    settings = TrainingSettings(base_model=str(tiny_decoder), padding_free="on")
    model, tokenizer, _ = prepare_model(settings)
    examples = examples_of(edge_pairs(), tokenizer)
    examples[1]["preference"] = 0.5  # a tie: not in accuracy
    dataset = Dataset.from_list(examples)
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    trainer = pair_credit_trainer_class(batching=Batching(packed=True, shared_prompt=True))(
        model=model, args=args, data_collator=packed_collator(True), train_dataset=dataset, processing_class=tokenizer
    )
    model.train()
    for batch, row_per_pair in ((examples[:4], True), (examples[4:], False)):
        trainer.compute_loss(model, packed_collator(True, row_per_pair)(batch))
    sums, extremes = trainer.statistics.pending["train"]
    assert isinstance(sums, torch.Tensor) and isinstance(extremes, torch.Tensor)
    with torch.no_grad():
        chosen, rejected = packed_rewards(model, packed_collator(True)(examples), model.config._attn_implementation)
    difference = (chosen - rejected).numpy()
    preferred = np.array([e["preference"] == 1.0 for e in examples])
    logs = {}
    trainer.log(logs)
    expected_accuracy = np.where(np.abs(difference) <= 1e-6, 0.5, difference > 0)[preferred].mean()
    assert logs["accuracy"] == pytest.approx(expected_accuracy)
    assert logs["margin"] == pytest.approx(difference.mean(), abs=1e-6)
    rewards = torch.cat([chosen, rejected]).numpy()
    assert logs["min_reward"] == pytest.approx(rewards.min(), abs=1e-6)
    assert logs["max_reward"] == pytest.approx(rewards.max(), abs=1e-6)
    assert logs["mean_reward"] == pytest.approx(rewards.mean(), abs=1e-6)
    assert logs["num_tokens"] == sum(packed_length(e["chosen_ids"], e["rejected_ids"], True) for e in examples)
    assert "train" not in trainer.statistics.pending  # read and cleared


# ---------------------------------------------------------------- whole training runs


def decoder_settings(base, **overrides) -> TrainingSettings:
    """The encoder tests' settings, with smaller batches and no early stopping."""
    return encoder_settings(base, **{"batch_size": 4, "early_stopping_patience": None, **overrides})


LEVERS = {
    "padded": {},
    "padding-free": {"padding_free": "on", "shared_prompt": "off"},
    "shared-prompt": {"padding_free": "on"},
    "token-budget": {"padding_free": "on", "max_tokens_per_batch": 160},  # 9 packed pairs of 17 tokens
    "token-budget-padded": {"max_tokens_per_batch": 300},  # 10 padded pairs of 2 x 15 tokens
    "eager": {"padding_free": "on", "attention": "eager"},
    "lora": {"padding_free": "on", "lora_rank": 4},
    "frozen": {"padding_free": "on", "train_last_n_layers": 1},
}


@pytest.mark.trains
@pytest.mark.parametrize("lever", list(LEVERS), ids=list(LEVERS))
def test_training_runs_with_each_lever(tiny_decoder, tmp_path, lever):
    from transformers import AutoModelForSequenceClassification

    pairs = learnable_pairs(16)
    settings = decoder_settings(tiny_decoder, **LEVERS[lever])
    result = train_reward_model(pairs, learnable_pairs(4, start=100), settings, tmp_path / "models", "rm-levers")
    metrics = result.metrics
    assert metrics["steps"] >= 1 and math.isfinite(metrics["train_loss"])
    train_logs = [entry for entry in result.history if "loss" in entry]
    assert train_logs and all(0 <= entry["accuracy"] <= 1 for entry in train_logs)
    assert all(entry["min_reward"] <= entry["mean_reward"] <= entry["max_reward"] for entry in train_logs)
    loaded = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert type(loaded).__name__ == "LlamaForSequenceClassification"
    if "token-budget" in lever:
        assert metrics["steps"] == 4  # 2 epochs of 2 batches, not of 16 / batch_size


@pytest.mark.trains
def test_a_packed_training_step_has_the_padded_loss(tiny_decoder, tmp_path):
    """The same batch through the whole training path, packed or padded: the same loss. (Weights after the step are
    not compared: Adam's first update is lr * sign(gradient), which turns float noise in a zero gradient into lr.)"""
    pairs = learnable_pairs(8)
    losses = [
        train_reward_model(
            pairs,
            pairs.iloc[:0],
            decoder_settings(tiny_decoder, epochs=1.0, batch_size=8, **LEVERS[name]),
            tmp_path / name,
            "rm-same",
        ).metrics["train_loss"]
        for name in ("padded", "padding-free", "shared-prompt")
    ]
    assert losses == pytest.approx([losses[0]] * 3, abs=TOLERANCE)


class Crash(RuntimeError):
    pass


@pytest.mark.trains
def test_packed_training_with_a_token_budget_resumes_to_the_same_weights(tiny_decoder, tmp_path):
    pairs = learnable_pairs(24)
    settings = decoder_settings(tiny_decoder, padding_free="on", max_tokens_per_batch=80, eval_steps=2, epochs=1.5)
    uninterrupted = train_reward_model(pairs, pairs.iloc[:0], settings, tmp_path / "reference", "rm-resume")
    models_dir = tmp_path / "models"

    def crashing(kind, payload):
        if kind == "progress" and payload.get("step", 0) >= 4:
            raise Crash("simulated crash")

    with pytest.raises(Crash):
        train_reward_model(pairs, pairs.iloc[:0], settings, models_dir, "rm-resume", report=crashing)
    result = train_reward_model(pairs, pairs.iloc[:0], settings, models_dir, "rm-resume")
    assert result.metrics["resumed_from"].endswith("checkpoint-2")
    assert result.metrics["steps"] == uninterrupted.metrics["steps"]
    reference, resumed = state_dict_of(uninterrupted.model_dir), state_dict_of(result.model_dir)
    for name in reference:
        torch.testing.assert_close(resumed[name], reference[name], atol=1e-6, rtol=0, msg=name)


def test_an_attention_kernel_that_is_not_installed_is_refused_in_one_line(tiny_decoder):
    from importlib.util import find_spec

    if find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here: nothing to refuse")
    settings = TrainingSettings(base_model=str(tiny_decoder), padding_free="on", attention="flash_attention_2")
    with pytest.raises(SettingError, match="attention 'flash_attention_2' can't be used") as error:
        prepare_model(settings)
    assert "\n" not in str(error.value)


def test_the_optimiser_is_torchs_fused_adamw(tiny_decoder, tmp_path):
    """One kernel for all parameters per step; torch has it on CUDA and on CPU."""
    from rm_pipeline.lib.training.data import training_data
    from rm_pipeline.lib.training.trainer import build_trainer, progress_callback

    settings = decoder_settings(tiny_decoder, padding_free="on")
    model, tokenizer, peft_config = prepare_model(settings)
    data = training_data(learnable_pairs(4), learnable_pairs(0), tokenizer, settings, lambda *_: None)
    trainer = build_trainer(model, tokenizer, peft_config, data, settings, tmp_path, progress_callback(lambda *_: None))
    optimizer = trainer.create_optimizer()
    assert type(getattr(optimizer, "optimizer", optimizer)).__name__ == "AdamW"
    assert optimizer.defaults["fused"] is True
