"""DPO's implicit reward: response tokens only, checked by hand; its comparison with the explicit reward."""

import numpy as np
import pandas as pd
import pytest
import torch

from rm_pipeline.lib.dpo import compare, implicit_rewards, load_causal_lm, pair_ids
from rm_pipeline.lib.evaluation.readiness import recommendation

BETA = 0.5
PAIRS = pd.DataFrame(
    {
        "prompt": ["hello", "what is the colour", '[{"role": "user", "content": "name a colour"}]'],
        "chosen": ["hi there", "blue", "red"],
        "rejected": ["red", "the sky is blue", "terrible answer"],
        "conversational": [False, False, True],
    }
)


@pytest.fixture(scope="module")
def models(tiny_causal_lm):
    """The tiny model as reference, and a copy with a perturbed head as the policy."""
    reference, tokenizer = load_causal_lm(str(tiny_causal_lm))
    policy, _ = load_causal_lm(str(tiny_causal_lm))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return policy, reference, tokenizer


def hand_response_logprob(model, tokenizer, prompt_words: str, full_words: str) -> float:
    """Σ log-probability of the tokens of ``full_words`` after the first ``len(prompt_words)`` ones, from a
    plain forward pass on the unpadded sequence."""
    ids = tokenizer(full_words)["input_ids"]
    start = len(tokenizer(prompt_words)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(start, len(ids))))


def test_the_response_tokens_follow_the_prompt_as_dpo_trainer_splits_them(tiny_causal_lm):
    _, tokenizer = load_causal_lm(str(tiny_causal_lm))
    prompt_ids, chosen_ids, rejected_ids = pair_ids(tokenizer, "Hello", "Hi there", "Red", False)
    # The template renders the prompt alone with a closing EOS: the responses start where they differ.
    assert tokenizer.convert_ids_to_tokens(prompt_ids) == ["<|user|>", "hello"]
    assert tokenizer.convert_ids_to_tokens(chosen_ids) == ["<|assistant|>", "hi", "there", "<eos>"]
    assert tokenizer.convert_ids_to_tokens(rejected_ids) == ["<|assistant|>", "red", "<eos>"]


def test_the_implicit_reward_is_beta_times_the_response_log_ratio(models):
    policy, reference, tokenizer = models
    rewards = implicit_rewards(policy, reference, tokenizer, PAIRS, BETA, batch_size=2)  # padded batches
    cases = [
        ("<|user|> hello", "<|user|> hello <|assistant|> hi there <eos>", rewards.loc[0, "chosen_reward"]),
        ("<|user|> hello", "<|user|> hello <|assistant|> red <eos>", rewards.loc[0, "rejected_reward"]),
        (
            "<|user|> what is the colour",
            "<|user|> what is the colour <|assistant|> the sky is blue <eos>",
            rewards.loc[1, "rejected_reward"],
        ),
        (
            "<|user|> name a colour",
            "<|user|> name a colour <|assistant|> terrible answer <eos>",
            rewards.loc[2, "rejected_reward"],
        ),
    ]
    for prompt, full, reward in cases:
        by_hand = BETA * (
            hand_response_logprob(policy, tokenizer, prompt, full)
            - hand_response_logprob(reference, tokenizer, prompt, full)
        )
        assert reward == pytest.approx(by_hand, abs=1e-5)
        assert abs(reward) > 1e-3  # the policy differs from its reference: the check can fail
    # the same model as policy and reference: no reward at all
    same = implicit_rewards(reference, reference, tokenizer, PAIRS, BETA, batch_size=3)
    assert np.allclose(same.to_numpy(), 0.0)


class ShiftedLogits(torch.nn.Module):
    """A model whose logits at the first ``positions`` positions are shifted by random noise."""

    def __init__(self, model, positions: int):
        super().__init__()
        self.model, self.positions = model, positions

    def forward(self, input_ids, attention_mask):
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        noise = torch.randn(output.logits[:, : self.positions].shape, generator=torch.Generator().manual_seed(2))
        output.logits[:, : self.positions] += 5 * noise
        return output


def test_the_prompts_log_probabilities_do_not_leak_into_the_reward(models):
    policy, reference, tokenizer = models
    pairs = PAIRS.iloc[:1]  # prompt "<|user|> hello": positions 0 predicts the prompt's second token
    baseline = implicit_rewards(policy, reference, tokenizer, pairs, BETA, batch_size=1)
    prompt_only = implicit_rewards(ShiftedLogits(policy, 1), reference, tokenizer, pairs, BETA, batch_size=1)
    assert np.allclose(prompt_only.to_numpy(), baseline.to_numpy(), atol=1e-6)
    # position 1 predicts the response's first token: shifting it changes the reward
    into_response = implicit_rewards(ShiftedLogits(policy, 2), reference, tokenizer, pairs, BETA, batch_size=1)
    assert not np.allclose(into_response.to_numpy(), baseline.to_numpy(), atol=1e-3)


def hand_made_pairs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pair_id": ["a", "b", "c", "d", "e"],
            "explicit_chosen": [2.0, 1.0, 0.0, 3.0, 1.0],
            "explicit_rejected": [1.0, 0.0, 1.0, 0.0, 1.0],  # margins 1, 1, -1, 3, 0 (a tie)
            "implicit_chosen": [0.5, -0.2, 0.1, 0.9, 0.3],
            "implicit_rejected": [0.0, 0.0, 0.0, 0.0, 0.0],  # margins 0.5, -0.2, 0.1, 0.9, 0.3
        }
    )


def test_accuracy_and_agreement_on_hand_made_rewards():
    summary, disagreements = compare(hand_made_pairs(), groups=["p1", "p2", "p3", "p4", "p5"])
    assert summary["n"] == 5 and summary["groups"] == 5
    assert summary["explicit_accuracy"]["estimate"] == pytest.approx((1 + 1 + 0 + 1 + 0.5) / 5)
    assert summary["implicit_accuracy"]["estimate"] == pytest.approx(4 / 5)
    # a, d agree; b and c are opposite picks; e is a tie against a pick: half
    assert summary["agreement"]["estimate"] == pytest.approx((1 + 0 + 0 + 1 + 0.5) / 5)
    interval = summary["agreement"]
    assert interval["low"] < interval["estimate"] < interval["high"]
    assert summary["disagreements"] == 3
    assert list(disagreements["pair_id"]) == ["b", "c", "e"]  # largest explicit margin first, then the tie
    assert list(disagreements["explicit_picks"]) == ["chosen", "rejected", "tie"]
    assert list(disagreements["implicit_picks"]) == ["rejected", "chosen", "chosen"]
    # margins (1, 1, -1, 3, 0) and (0.5, -0.2, 0.1, 0.9, 0.3): Spearman's rho of their ranks
    from scipy.stats import spearmanr

    expected = spearmanr([1, 1, -1, 3, 0], [0.5, -0.2, 0.1, 0.9, 0.3]).statistic
    assert summary["margin_spearman"]["estimate"] == pytest.approx(expected)


def test_intervals_resample_whole_prompt_groups():
    pairs = pd.concat([hand_made_pairs()] * 4, ignore_index=True)
    one_group_per_pair, _ = compare(pairs, groups=[str(i) for i in range(len(pairs))])
    by_prompt, _ = compare(pairs, groups=[f"p{i % 5}" for i in range(len(pairs))])  # copies share a prompt
    width = lambda interval: interval["high"] - interval["low"]  # noqa: E731
    assert by_prompt["agreement"]["groups"] == 5
    assert width(by_prompt["agreement"]) > width(one_group_per_pair["agreement"])
    assert by_prompt["margin_spearman"]["groups"] == 5


def test_identical_rewards_agree_everywhere():
    pairs = hand_made_pairs().assign(
        implicit_chosen=lambda p: p["explicit_chosen"], implicit_rejected=lambda p: p["explicit_rejected"]
    )
    summary, disagreements = compare(pairs, groups=list("vwxyz"))
    assert summary["agreement"]["estimate"] == 1.0 and disagreements.empty
    assert summary["margin_spearman"]["estimate"] == pytest.approx(1.0)


def test_the_recommendation_cites_the_dpo_comparison():
    summary, _ = compare(hand_made_pairs(), groups=list("vwxyz"))
    checks = [{"check": "calibration_error", "passed": False}]
    text = recommendation(False, checks, 100, summary)
    implicit, explicit = summary["implicit_accuracy"], summary["explicit_accuracy"]
    assert (
        f"DPO's implicit reward: {implicit['estimate']:.2f} [{implicit['low']:.2f}, {implicit['high']:.2f}] "
        f"against the reward model's {explicit['estimate']:.2f} [{explicit['low']:.2f}, {explicit['high']:.2f}] "
        "on 5 held-out pairs; they agree on 50% [" in text
    )
    assert "DPO's implicit reward" not in recommendation(False, checks, 100)


@pytest.mark.parametrize("chat_template", [True, False], ids=["chat-template", "plain-text"])
def test_the_response_ids_are_those_dpo_trainer_trains_on(chat_template, tiny_causal_lm, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rm_pipeline.lib.dpo import trl_example

    model, tokenizer = load_causal_lm(str(tiny_causal_lm))
    if not chat_template:  # prompt, a blank line, response and EOS
        tokenizer.chat_template = None
    reference, _ = load_causal_lm(str(tiny_causal_lm))
    rows = []
    for pair in PAIRS.itertuples():
        chosen = trl_example(tokenizer, pair.prompt, pair.chosen, pair.conversational)
        rejected = trl_example(tokenizer, pair.prompt, pair.rejected, pair.conversational)
        rows.append({"prompt": chosen["prompt"], "chosen": chosen["completion"], "rejected": rejected["completion"]})
    config = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_length=None)
    trainer = DPOTrainer(
        model=model, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    assert len(trainer.train_dataset) == len(PAIRS)
    for pair, tokenized in zip(PAIRS.itertuples(), trainer.train_dataset):
        assert tokenized["chosen_ids"] and tokenized["chosen_ids"][-1] == tokenizer.eos_token_id
        assert pair_ids(tokenizer, pair.prompt, pair.chosen, pair.rejected, pair.conversational) == (
            tokenized["prompt_ids"],
            tokenized["chosen_ids"],
            tokenized["rejected_ids"],
        )


class _Planted:
    """Unpickled, it creates the file it names: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_policy_in_a_pickle_is_refused_without_running_it(tiny_causal_lm, tmp_path):
    import pickle
    import shutil

    from rm_pipeline.lib.dpo import DpoInputError

    policy = tmp_path / "policy"
    shutil.copytree(tiny_causal_lm, policy)
    (policy / "model.safetensors").unlink()
    marker = tmp_path / "pickle_ran"
    (policy / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(DpoInputError, match="can't be loaded as a local causal language model"):
        load_causal_lm(str(policy))
    assert not marker.exists()


def test_the_comparison_is_off_unless_a_policy_is_configured(monkeypatch):
    from rm_pipeline.definitions import build_resources
    from rm_pipeline.resources import DpoPolicyResource

    monkeypatch.delenv("RM_PIPELINE_DPO_POLICY", raising=False)
    assert not build_resources()["dpo_policy"].configured
    monkeypatch.setenv("RM_PIPELINE_DPO_POLICY", "/somewhere/policy")
    assert DpoPolicyResource().configured


def test_a_policy_without_a_recorded_or_given_reference_is_refused(tmp_path):
    from rm_pipeline.lib.dpo import DpoInputError
    from rm_pipeline.resources import DpoPolicyResource

    with pytest.raises(DpoInputError, match="no reference model"):
        DpoPolicyResource(policy=str(tmp_path)).resolved()
    (tmp_path / "dpo_policy.json").write_text('{"reference": "/models/base", "beta": 0.3}')
    assert DpoPolicyResource(policy=str(tmp_path)).resolved() == (str(tmp_path), "/models/base", 0.3)
    assert DpoPolicyResource(policy=str(tmp_path), reference="/other", beta=0.2).resolved()[1:] == ("/other", 0.2)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--base-model", "{missing}", "--pairs", "{pairs}"], "can't be loaded as a local causal language model"),
        (["--base-model", "{base}", "--home", "{home}"], "no published split under this storage root"),
        (["--base-model", "{base}", "--pairs", "{pairs}", "--max-length", "3"], "none of the 2 pairs fits in 3"),
    ],
)
def test_dpo_baseline_refuses_bad_input_in_one_line(arguments, message, tiny_causal_lm, tmp_path, capsys):
    import json

    from rm_pipeline.cli import EXIT_BAD_INPUT, main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": "hello", "chosen": "hi", "rejected": "red"}) + "\n" for _ in range(2))
    )
    values = {"missing": tmp_path / "no-model", "pairs": pairs, "base": tiny_causal_lm, "home": tmp_path / "home"}
    argv = ["dpo-baseline", "--output", str(tmp_path / "policy")] + [a.format(**values) for a in arguments]
    assert main(argv) == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "policy").exists()


@pytest.mark.trains
def test_dpo_baseline_trains_on_the_split_and_the_evaluation_compares_it(
    annotations_slice, storage_root, tiny_encoder, tiny_causal_lm, labelled_eval_dir, tmp_path, monkeypatch
):
    import json

    import dagster as dg

    from rm_pipeline.cli import main
    from rm_pipeline.definitions import build_defs, reward_pipeline_job
    from rm_pipeline.lib.dpo import COMPARISON_FILE, DISAGREEMENTS_FILE
    from rm_pipeline.lib.model_files import POLICY_FILE
    from rm_pipeline_tests.conftest import PERMISSIVE_READINESS

    monkeypatch.delenv("RM_PIPELINE_DPO_POLICY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def metadata(result, asset: str) -> dict:
        [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
        return {key: value.value for key, value in event.materialization.metadata.items()}

    job = build_defs(str(storage_root), str(annotations_slice), tiny_encoder, str(labelled_eval_dir)).resolve_job_def(
        reward_pipeline_job.name
    )
    with dg.instance_for_test() as instance:
        # off by default: the main job records it and goes on; nothing is compared or cited
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, run_config={"ops": PERMISSIVE_READINESS}
        )
        assert result.success
        assert metadata(result, "dpo_comparison")["status"] == "not configured"
        model = (storage_root / "models" / "current").resolve()
        reports = storage_root / "reports" / model.name
        assert not (reports / COMPARISON_FILE).exists()
        assert "DPO's implicit reward" not in json.loads((model / "readiness.json").read_text())["recommendation"]

        policy = tmp_path / "policy"
        argv = [
            "dpo-baseline",
            "--home",
            str(storage_root),
            "--base-model",
            str(tiny_causal_lm),
            "--output",
            str(policy),
        ]
        assert main(argv + ["--max-steps", "2", "--batch-size", "4", "--learning-rate", "0.01"]) == 0
        record = json.loads((policy / POLICY_FILE).read_text())
        split = pd.read_parquet(storage_root / "tables" / "preference_split.parquet")
        assert record["reference"] == str(tiny_causal_lm.resolve()) and record["steps"] == 2
        assert record["train_pairs"] + record["pairs_too_long"] == (split["split"] == "train").sum()
        assert (policy / "model.safetensors").is_file()

        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={"ops": PERMISSIVE_READINESS, "resources": {"dpo_policy": {"config": {"policy": str(policy)}}}},
            asset_selection=[dg.AssetKey(key) for key in ("dpo_comparison", "evaluation_report", "reward_readiness")],
        )
        assert result.success
        shown = metadata(result, "dpo_comparison")
        comparison = json.loads((reports / COMPARISON_FILE).read_text())
        assert comparison["n"] == shown["held_out_pairs"] == (split["split"] == "eval").sum()
        assert comparison["beta"] == record["beta"] and comparison["reference"] == record["reference"]
        for measure in ("implicit_accuracy", "explicit_accuracy", "agreement", "margin_spearman"):
            interval = comparison[measure]
            assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert len(pd.read_csv(reports / DISAGREEMENTS_FILE)) == comparison["disagreements"]
        verdict = json.loads((model / "readiness.json").read_text())
        assert f"on {comparison['n']} held-out pairs; they agree on" in verdict["recommendation"]
