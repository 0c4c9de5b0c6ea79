"""DPO's implicit reward: response tokens only, checked by hand; its comparison with the explicit reward."""

import numpy as np
import pandas as pd
import pytest
import torch

from rm_pipeline.lib.dpo import compare, implicit_rewards, load_causal_lm, prompt_and_response_ids
from rm_pipeline.lib.readiness import recommendation

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
    prompt_ids, response_ids = prompt_and_response_ids(tokenizer, "Hello", "Hi there", False)
    # The template renders the prompt alone with a closing EOS: the response starts where they part.
    assert tokenizer.convert_ids_to_tokens(prompt_ids) == ["<|user|>", "hello"]
    assert tokenizer.convert_ids_to_tokens(response_ids) == ["<|assistant|>", "hi", "there", "<eos>"]


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
