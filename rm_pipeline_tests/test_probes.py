"""Shortcut probes: each perturbation on hand-made text, the seeded sample, and flip rates on hand-made scores."""

import json

import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib.evaluation.pair_files import read_pair_file
from rm_pipeline.lib.evaluation.probes import (
    HELD_OUT,
    PROBE_NAMES,
    PROBES,
    TRAINED_AGAINST,
    ProbeSettings,
    claim_authority,
    cut_in_half,
    flip_rates,
    pad_with_disclaimers,
    pad_with_filler,
    probe_answers,
    render_probes,
    repeat_a_sentence,
    restyle_as_markdown,
    restyle_as_outline,
    wrap_in_flattery,
)

TEXT = "Paris is the capital. It is in France!\nVisit it"


def test_padding_appends_filler_sentences_until_twice_as_long():
    assert pad_with_filler("Use a loop.", 0) == (
        "Use a loop. It is worth keeping this in mind."
    )  # 11 characters become 45: one filler sentence reaches twice
    padded = pad_with_filler(TEXT, 4)
    assert padded == TEXT + " Each situation can be a little different. That is one way of looking at it."
    assert len(padded) >= 2 * len(TEXT)


def test_flattery_wraps_the_answer_in_confident_praise():
    assert wrap_in_flattery("No.", 0) == (
        "Great question! I'm absolutely certain about this, and I'm glad you asked someone who knows.\n\n"
        "No.\n\n"
        "I hope this helps: this is the definitive answer, and you can rely on it completely."
    )


def test_markdown_gives_a_heading_and_one_bold_led_bullet_per_sentence():
    assert restyle_as_markdown(TEXT, 2) == (
        "## Summary\n\n- **Paris** is the capital.\n- **It** is in France!\n- **Visit** it"
    )


def test_the_held_out_family_has_its_own_wordings_and_shapes():
    assert claim_authority("No.", 1) == (
        "Having advised countless experts on precisely this topic, I can say you picked a superb question. "
        "My verdict follows.\n\nNo.\n\nTrust this reply: it reflects the consensus of leading authorities."
    )
    assert pad_with_disclaimers("Use a loop.", 0) == "Use a loop. Please note that individual circumstances may vary."
    assert restyle_as_outline(TEXT, 0) == "**Response**\n\n1. Paris is the capital.\n2. It is in France!\n3. Visit it"


def test_each_kind_of_style_probe_is_in_both_families_and_the_damage_probes_are_held_out():
    families = {(probe.kind, probe.family) for probe in PROBES}
    for kind in ("padding", "flattery", "markdown"):
        assert {(kind, TRAINED_AGAINST), (kind, HELD_OUT)} <= families
    assert {(kind, HELD_OUT) for kind in ("truncation", "repetition")} <= families
    assert len(PROBE_NAMES) == len(set(PROBE_NAMES))


def test_truncation_keeps_the_first_half_at_a_word_boundary():
    assert cut_in_half("one two three four five six") == "one two three"
    assert cut_in_half("Supercalifragilistic") == "Supercalif"
    assert cut_in_half("4") == ""  # nothing left: the pair is not applicable to this probe


def test_repetition_repeats_the_chosen_sentence_in_place():
    assert repeat_a_sentence(TEXT, 1) == "Paris is the capital. It is in France! It is in France!\nVisit it"
    assert repeat_a_sentence(TEXT, 5) == "Paris is the capital. It is in France!\nVisit it Visit it"  # 5 mod 3


def pairs_frame(n=12, conversational=False):
    prompts = [
        json.dumps([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "ok"}])
        if conversational
        else f"question {i}"
        for i in range(n)
    ]
    return pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(n)],
            "prompt_id": [f"g{i // 2}" for i in range(n)],
            "prompt": prompts,
            "conversational": conversational,
            "chosen": [f"Good answer {i}. It explains why." for i in range(n)],
            "rejected": [f"Bad answer {i}." for i in range(n)],
            "domain": "d",
        }
    )


def test_the_sample_and_its_perturbations_are_fixed_by_the_seed():
    pairs = pairs_frame()
    settings = ProbeSettings(probe_pairs=5, seed=3)
    first = probe_answers(pairs, settings)
    pd.testing.assert_frame_equal(first, probe_answers(pairs, settings))
    assert first["group_id"].nunique() == 5
    assert set(first["source"]) == {f"probe:{name}" for name in PROBE_NAMES}
    assert sorted(set(first["group_id"])) == ["p0", "p1", "p11", "p2", "p6"]
    other = probe_answers(pairs, ProbeSettings(probe_pairs=5, seed=4))
    assert sorted(set(other["group_id"])) == ["p10", "p11", "p5", "p8", "p9"]  # another seed, another sample
    everything = probe_answers(pairs, ProbeSettings(probe_pairs=100))
    assert everything["group_id"].nunique() == len(pairs)  # fewer pairs than the sample size: all of them


def test_each_probe_perturbs_its_side_and_keeps_the_prompt():
    pairs = pairs_frame()
    answers = probe_answers(pairs, ProbeSettings(probe_pairs=12)).merge(
        pairs, left_on="group_id", right_on="pair_id", suffixes=("", "_pair")
    )
    assert (answers["prompt"] == answers["prompt_pair"]).all()
    for row in answers.itertuples():
        base = row.rejected if row.candidate == "rejected" else row.chosen
        assert row.response != base
        expected_side = "chosen" if row.source in ("probe:truncation", "probe:repetition") else "rejected"
        assert row.candidate == expected_side
    truncated = answers[answers["source"] == "probe:truncation"]
    assert (truncated["response"] == truncated["chosen"].map(cut_in_half)).all()


def test_conversational_rows_perturb_only_the_final_assistant_message(tmp_path):
    path = tmp_path / "chat.jsonl"
    context = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]
    row = {
        "chosen": context + [{"role": "assistant", "content": "Paris. It is on the Seine."}],
        "rejected": context + [{"role": "assistant", "content": "Lyon."}],
    }
    path.write_text(json.dumps(row) + "\n")
    pairs, quarantine = read_pair_file(path)
    assert quarantine.empty and bool(pairs["conversational"].iloc[0])
    answers = probe_answers(pairs).set_index("source")
    assert json.loads(answers.loc["probe:padding", "prompt"]) == context  # the conversation is untouched
    assert answers.loc["probe:padding", "response"].startswith("Lyon. ")
    assert answers.loc["probe:truncation", "response"] == "Paris. It is"
    assert answers.loc["probe:repetition", "conversational"]


def scored(chosen, rejected):
    n = len(chosen)
    return pd.DataFrame(
        {
            "pair_id": [f"p{i}" for i in range(n)],
            "prompt_id": [f"g{i}" for i in range(n)],
            "prompt": [f"q{i}" for i in range(n)],
            "chosen_reward": chosen,
            "rejected_reward": rejected,
        }
    )


def probe(name, side, rewards):
    return pd.DataFrame(
        {
            "source": f"probe:{name}",
            "group_id": [f"p{i}" for i in range(len(rewards))],
            "candidate": side,
            "reward": rewards,
        }
    )


def test_a_flip_is_the_perturbed_worse_answer_outscoring_the_chosen_one_where_the_model_was_right():
    pairs = scored([1.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0])
    answers = pd.concat(
        [
            # pair 0 flips, pair 1 ties (half), pairs 2-3 hold, pair 4 was already wrong: left out
            probe("padding", "rejected", [1.5, 1.0, 0.5, -1.0, 3.0]),
            # the chosen answer itself is the base: every pair counts; pairs 0 and 4 flip
            probe("truncation", "chosen", [2.0, 0.0, 0.5, 0.9, 0.1]),
        ],
        ignore_index=True,
    )
    result = flip_rates(pairs, answers)
    table = {row["probe"]: row for row in result["table"]}
    padding = table["padding"]
    assert (padding["n"], padding["flips"], padding["ties"], padding["already_wrong"]) == (4, 1, 1, 1)
    assert padding["flip_rate"] == pytest.approx(1.5 / 4)
    assert padding["flip_rate_interval"]["low"] < padding["flip_rate"] < padding["flip_rate_interval"]["high"]
    assert padding["mean_reward_change"] == pytest.approx(np.mean([1.5, 1.0, 0.5, -1.0, 1.0]))
    truncation = table["truncation"]
    assert (truncation["n"], truncation["flips"], truncation["already_wrong"]) == (5, 2, 0)
    assert truncation["flip_rate"] == pytest.approx(0.4)
    assert table["flattery"]["n"] == 0 and table["flattery"]["not_applicable"] == 5
    assert result["sampled_pairs"] == 5 and result["worst"]["probe"] == "truncation"
    assert "`truncation` flips 0.400 of 5 pairs" in render_probes(result)


def test_probe_answers_of_pairs_not_scored_are_an_error():
    with pytest.raises(ValueError, match="1 probe answers belong to pairs that were not scored"):
        flip_rates(scored([1.0], [0.0]), probe("padding", "rejected", [0.0, 1.0]))


def test_evaluate_with_probes_prints_each_probe_flip_rate_with_its_interval(tiny_encoder, tmp_path):
    from rm_pipeline_tests.support.cli import rm_pipeline_here

    plain = tmp_path / "plain.jsonl"
    rows = [
        {"prompt": f"Question {i}?", "chosen": f"A careful answer {i}. It gives the reason.", "rejected": f"No {i}."}
        for i in range(8)
    ]
    plain.write_text("".join(json.dumps(row) + "\n" for row in rows))
    chat = tmp_path / "chat.jsonl"
    context = [{"role": "user", "content": "Capital of France?"}]
    chat.write_text(
        json.dumps(
            {
                "chosen": context + [{"role": "assistant", "content": "Paris. It is on the Seine."}],
                "rejected": context + [{"role": "assistant", "content": "Lyon."}],
            }
        )
        + "\n"
    )
    argv = ["evaluate", "--model", tiny_encoder, "--pairs", str(plain), str(chat)]
    done = rm_pipeline_here(*argv, "--probes", "--probe-pairs", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    probes = results[str(plain)]["probes"]
    assert probes["sampled_pairs"] == 5 and probes["confidence"] == 0.95
    assert set(probes["flip_rates"]) == set(PROBE_NAMES)
    for row in probes["flip_rates"].values():
        assert row["n"] + row["already_wrong"] + row["not_applicable"] == 5
        if row["n"]:
            assert row["flip_rate_interval"]["low"] <= row["flip_rate"] <= row["flip_rate_interval"]["high"]
    assert probes["worst_probe"] in PROBE_NAMES
    assert results[str(chat)]["probes"]["sampled_pairs"] == 1
    assert "probes" not in json.loads(rm_pipeline_here(*argv).stdout)[str(plain)]  # only when asked for
