"""The published reward model works as a reward model for TRL's online trainers (GRPO).

A reward model is trained and published by our own code path (`train_reward_model`), then TRL's
`GRPOTrainer` gets only the directory path as `reward_funcs`, loads it itself
(`AutoModelForSequenceClassification` with `num_labels=1` and the saved tokenizer) and runs one
optimisation step with a tiny policy on CPU. The rewards TRL computes must be the ones our own
`RewardScorer` gives for the same (prompt, completion).

Everything is built offline from configs: the decoder reward model and the policy share the
word-level tokenizer of `test_reward_training.tiny_decoder`.

Encoders (the default base model, MiniLM): TRL tokenizes `prompt + completion` as plain text with
`add_special_tokens=False`, so a BERT-style model never sees the [CLS]/[SEP] text-pair layout it was
trained on. The directory still loads and runs; `trl_reward_function` scores as training did.

PPO: TRL 1.16 ships no PPO trainer (neither in `trl` nor in `trl.experimental`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rm_pipeline.lib.scoring import RewardScorer, trl_reward_function
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline_tests.conftest import DECODER_WORDS
from rm_pipeline_tests.test_reward_training import encoder_settings, learnable_pairs

pytestmark = pytest.mark.trains

POLICY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] | lower }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = [
    [{"role": "user", "content": "what colour is the sky"}],
    [{"role": "system", "content": "be kind."}, {"role": "user", "content": "name a colour"}],
]


def chat(*turns) -> str:
    return json.dumps([{"role": role, "content": content} for role, content in turns])


# ---------------------------------------------------------------- published reward models


@pytest.fixture(scope="module")
def published_decoder(tiny_decoder, tmp_path_factory) -> Path:
    """A decoder reward model trained on conversational pairs and published by the pipeline's code."""
    pairs = pd.DataFrame(
        {
            "prompt": [
                chat(("system", "be kind."), ("user", "what colour is the sky")),
                chat(("user", "hello")),
                chat(("user", "name a colour")),
                chat(("user", "what is the answer")),
            ],
            "chosen": ["blue excellent", "hi there excellent", "red excellent", "the answer excellent"],
            "rejected": ["red terrible", "terrible", "terrible", "the answer terrible"],
            "conversational": [True] * 4,
            "strength": [1.0, np.nan, 2.0, 1.0],
        }
    )
    settings = TrainingSettings(
        base_model=str(tiny_decoder),
        max_length=64,
        epochs=2.0,
        batch_size=2,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        logging_steps=1,
        eval_steps=100,
        early_stopping_patience=None,
        seed=0,
    )
    torch.manual_seed(0)
    result = train_reward_model(pairs, pairs.iloc[0:0], settings, tmp_path_factory.mktemp("models"), "rm-trl")
    assert result.metrics["steps"] == 4
    return result.model_dir


@pytest.fixture(scope="module")
def published_encoder(tiny_encoder, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    settings = encoder_settings(tiny_encoder, epochs=1.0, batch_size=4, max_length=32, early_stopping_patience=None)
    result = train_reward_model(
        learnable_pairs(8), learnable_pairs(8).iloc[0:0], settings, tmp_path_factory.mktemp("models"), "rm-trl-encoder"
    )
    return result.model_dir


# ---------------------------------------------------------------- one GRPO step with TRL


@pytest.fixture(scope="module")
def tiny_policy(tiny_decoder) -> tuple:
    """A 2-layer causal Llama over the same words; its template ends prompts with `<|assistant|>`."""
    from transformers import AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_decoder))
    tokenizer.chat_template = POLICY_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(DECODER_WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=1,
        bos_token_id=None,
        pad_token_id=None,
    )
    return config, tokenizer


def run_grpo_step(reward, tiny_policy, prompts: list, output_dir: Path) -> dict:
    """One GRPO optimisation step with `reward_funcs=<directory path or function>`; records what TRL scored."""
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    config, tokenizer = tiny_policy
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    args = GRPOConfig(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=reward if callable(reward) else str(reward),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )

    scored = []
    calculate = trainer._calculate_rewards

    def spy(inputs, prompts, completions, completion_ids_list):
        rewards = calculate(inputs, prompts, completions, completion_ids_list)
        scored.append((prompts, completions, rewards.detach().cpu().clone()))
        return rewards

    trainer._calculate_rewards = spy
    trainer.train()
    changed = any(not torch.equal(p.detach(), before[name]) for name, p in trainer.model.named_parameters())
    return {
        "trainer": trainer,
        "scored": scored,
        "policy_changed": changed,
        "logs": [entry for entry in trainer.state.log_history if "loss" in entry],
    }


@pytest.fixture(scope="module")
def decoder_run(published_decoder, tiny_policy, tmp_path_factory) -> dict:
    return run_grpo_step(published_decoder, tiny_policy, PROMPTS * 2, tmp_path_factory.mktemp("grpo"))


def test_grpo_loads_our_directory_as_its_reward_model(decoder_run, published_decoder):
    trainer = decoder_run["trainer"]
    assert trainer.state.global_step == 1
    [reward_model] = trainer.reward_funcs
    saved = json.loads((published_decoder / "config.json").read_text())
    assert type(reward_model).__name__ == "LlamaForSequenceClassification" and reward_model.config.num_labels == 1
    assert reward_model.config.reward_mean == pytest.approx(saved["reward_mean"])  # our published config
    assert trainer.reward_func_names == [published_decoder.name]
    [reward_tokenizer] = trainer.reward_processing_classes
    # the pad token we saved (not EOS, which would move the read-out position) reaches TRL unchanged
    assert reward_tokenizer.pad_token_id == saved["pad_token_id"] != reward_tokenizer.eos_token_id
    assert reward_model.config.pad_token_id == saved["pad_token_id"]


def test_grpo_rewards_are_the_ones_our_scorer_gives(decoder_run, published_decoder):
    [(prompts, completions, rewards)] = decoder_run["scored"]
    assert rewards.shape == (4, 1)  # 2 prompts x 2 generations, one reward function
    scorer = RewardScorer.load(published_decoder, precision="fp32")  # TRL scores the directory in fp32 on a CPU
    ours = scorer.score([json.dumps(p) for p in prompts], [c[-1]["content"] for c in completions], [True] * 4)
    assert not ours["truncated"].any()
    assert np.ptp(ours["reward"].to_numpy()) > 1e-4  # distinct rewards: matching them row by row means something
    np.testing.assert_allclose(rewards[:, 0].numpy(), ours["reward"].to_numpy(), atol=1e-5)

    [log] = decoder_run["logs"]
    name = published_decoder.name
    assert log[f"rewards/{name}/mean"] == pytest.approx(float(ours["reward"].mean()), abs=1e-4)
    assert log["reward"] == pytest.approx(float(ours["reward"].mean()), abs=1e-4)  # weight 1, one function
    assert math.isfinite(log["loss"])


def test_grpo_step_updates_the_policy_from_our_rewards(decoder_run):
    [(_, _, rewards)] = decoder_run["scored"]
    groups = rewards[:, 0].reshape(-1, 2)  # consecutive completions share a prompt
    # GRPO's advantage is the reward relative to its group: a group with distinct rewards moves the policy
    assert (groups[:, 0] != groups[:, 1]).any()
    assert decoder_run["policy_changed"]


# ---------------------------------------------------------------- encoders


@pytest.fixture(scope="module")
def encoder_run(published_encoder, tiny_policy, tmp_path_factory) -> dict:
    # plain-text prompts: TRL scores `prompt + completion`, the non-conversational path
    return run_grpo_step(
        published_encoder,
        tiny_policy,
        ["what colour is the sky", "name a colour"] * 2,
        tmp_path_factory.mktemp("grpo-encoder"),
    )


def test_grpo_runs_with_an_encoder_reward_model(encoder_run, published_encoder):
    trainer = encoder_run["trainer"]
    assert trainer.state.global_step == 1
    [reward_model] = trainer.reward_funcs
    assert type(reward_model).__name__ == "BertForSequenceClassification" and reward_model.config.num_labels == 1
    [(_, _, rewards)] = encoder_run["scored"]
    assert torch.isfinite(rewards).all()
    assert math.isfinite(encoder_run["logs"][0][f"rewards/{published_encoder.name}/mean"])


@pytest.fixture(scope="module")
def encoder_function_run(published_encoder, tiny_policy, tmp_path_factory) -> dict:
    return run_grpo_step(
        trl_reward_function(published_encoder),
        tiny_policy,
        ["what colour is the sky", "name a colour"] * 2,
        tmp_path_factory.mktemp("grpo-function"),
    )


def test_our_reward_function_gives_grpo_the_scores_of_training_and_evaluation(encoder_function_run, published_encoder):
    """TRL scores a directory as `prompt + completion` without special tokens; an encoder trained on
    [CLS] prompt [SEP] response [SEP] needs `trl_reward_function` to be scored as it was trained."""
    [(prompts, completions, rewards)] = encoder_function_run["scored"]
    ours = RewardScorer.load(published_encoder).score(prompts, completions, [False] * len(prompts))
    assert np.ptp(ours["reward"].to_numpy()) > 1e-4
    np.testing.assert_allclose(rewards[:, 0].numpy(), ours["reward"].to_numpy(), atol=1e-5)
    [log] = encoder_function_run["logs"]
    assert log[f"rewards/{published_encoder.name}/mean"] == pytest.approx(float(ours["reward"].mean()), abs=1e-4)


def test_our_reward_function_reads_chat_prompts_and_completions(published_decoder):
    reward = trl_reward_function(published_decoder)
    rewards = reward(PROMPTS, [[{"role": "assistant", "content": "blue excellent"}], "red terrible"])
    ours = RewardScorer.load(published_decoder).score(
        [json.dumps(p) for p in PROMPTS], ["blue excellent", "red terrible"], [True, True]
    )
    np.testing.assert_allclose(rewards, ours["reward"].to_numpy(), atol=1e-6)
