"""Augmented training pairs (non_contextual, style_neutral): built from the train side only, marked with their
kind, counted in the ledger and the gate, seeded, and a family of their own apart from the shortcut probes."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from rm_pipeline.lib import gates
from rm_pipeline.lib.augmentation import (
    ANNOTATED,
    KIND,
    NON_CONTEXTUAL,
    STYLE_NEUTRAL,
    STYLES,
    TRAINING_TEMPLATES,
    augment,
    last_question,
)
from rm_pipeline.lib.evaluation.probes import PROBES, ProbeSettings, probe_answers
from rm_pipeline.lib.pairs import PREFERRED, TIE
from rm_pipeline.lib.settings import SettingError
from rm_pipeline.lib.style_transforms import sentences
from rm_pipeline.lib.training.settings import TrainingSettings
from rm_pipeline_tests.test_gate_enforcement import UP_TO_SPLIT


def split_frame(train_groups=6, eval_groups=3, per_group=2) -> pd.DataFrame:
    """Pairs whose every text names its side of the split, so that any leak shows as a substring."""
    rows = []
    for side, groups in (("train", train_groups), ("eval", eval_groups)):
        for g in range(groups):
            for i in range(per_group):
                rows.append(
                    {
                        "pair_id": f"{side}-p{g}-{i}",
                        "prompt_id": f"{side}-g{g}",
                        "prompt_group": f"{side}-g{g}",
                        "prompt": f"{side.upper()}PROMPT {g}: how do I do thing {g}?",
                        "conversational": False,
                        "chosen": f"{side.upper()}ANSWER good {g}.{i}. First do this. Then do that.",
                        "rejected": f"{side.upper()}ANSWER poor {g}.{i}.",
                        "domain": "d",
                        "strength": 1.0,
                        "n_votes": 3,
                        "preference": PREFERRED,
                        "split": side,
                    }
                )
    return pd.DataFrame(rows)


def augmented(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows[KIND] != ANNOTATED]


@pytest.mark.parametrize(
    "non_contextual, style_neutral",
    [(1.0, 0.0), (0.0, 1.0), (2.5, 1.5)],
    ids=["non-contextual", "style-neutral", "both-more-than-one-per-pair"],
)
def test_no_held_out_prompt_or_answer_leaks_into_augmented_rows(non_contextual, style_neutral):
    split = split_frame()
    rows, _ = augment(split, non_contextual, style_neutral, seed=0)
    extra = augmented(rows)
    assert len(extra) > 0
    for column in ("prompt", "chosen", "rejected"):
        texts = extra[column]
        assert not texts.str.contains("EVAL").any(), texts[texts.str.contains("EVAL")].iloc[0]
    assert set(extra["source_pair_id"]) | set(extra["other_pair_id"]) <= set(
        split.loc[split["split"] == "train", "pair_id"]
    )
    assert (extra["split"] == "train").all()
    # the held-out rows are exactly as they were: nothing augmented is ever held out
    pd.testing.assert_frame_equal(
        rows.loc[rows["split"] == "eval", list(split.columns)].reset_index(drop=True),
        split[split["split"] == "eval"].reset_index(drop=True),
    )


def test_each_row_is_marked_with_its_kind_and_target():
    split = split_frame()
    rows, _ = augment(split, 1.0, 1.0, seed=0)
    assert rows[KIND].value_counts().to_dict() == {ANNOTATED: 18, NON_CONTEXTUAL: 12, STYLE_NEUTRAL: 12}
    non_contextual = rows[rows[KIND] == NON_CONTEXTUAL]
    assert (non_contextual["preference"] == PREFERRED).all()
    sources = split.set_index("pair_id")
    for row in non_contextual.itertuples():
        own, other = sources.loc[row.source_pair_id], sources.loc[row.other_pair_id]
        assert row.prompt == own["prompt"] and row.chosen in (own["chosen"], own["rejected"])
        assert row.rejected in (other["chosen"], other["rejected"]) and other["prompt_group"] != own["prompt_group"]
    style_neutral = rows[rows[KIND] == STYLE_NEUTRAL]
    assert (style_neutral["preference"] == TIE).all()
    assert set(style_neutral["style"]) == set(STYLES)  # 12 draws among 4 styles: each drawn here
    for row in style_neutral.itertuples():
        base = sources.loc[row.source_pair_id]
        plain, styled = sorted((row.chosen, row.rejected), key=len)
        assert plain in (base["chosen"], base["rejected"]) and styled != plain
        assert all(sentence in styled for sentence in sentences(plain))  # the content is all there
    assert (augmented(rows)["n_votes"] == 0).all() and augmented(rows)["strength"].isna().all()  # no votes


def test_the_same_seed_gives_the_same_rows_and_another_seed_others():
    split = split_frame()
    first, ledger = augment(split, 1.0, 1.0, seed=7)
    again, ledger_again = augment(split, 1.0, 1.0, seed=7)
    pd.testing.assert_frame_equal(first, again)
    assert ledger == ledger_again
    other, _ = augment(split, 1.0, 1.0, seed=8)
    assert not augmented(first)[["chosen", "rejected"]].equals(augmented(other)[["chosen", "rejected"]])
    # one kind's rows don't move when the other kind is asked for too
    alone, _ = augment(split, 0.0, 1.0, seed=7)
    pd.testing.assert_frame_equal(
        augmented(alone).reset_index(drop=True),
        first[first[KIND] == STYLE_NEUTRAL].reset_index(drop=True),
    )


def test_the_ledger_adds_up_and_the_gate_passes():
    split = split_frame()
    rows, ledger = augment(split, 1.5, 0.5, seed=0)
    by_kind = {entry[KIND]: entry for entry in ledger}
    assert by_kind[ANNOTATED]["built"] == 12 and by_kind[NON_CONTEXTUAL]["requested"] == 18
    assert by_kind[STYLE_NEUTRAL]["requested"] == 6
    train = rows[rows["split"] == "train"]
    for kind, entry in by_kind.items():
        assert entry["requested"] == entry["built"] + entry["over_max_length"] + entry["not_applicable"]
        assert entry["built"] == int((train[KIND] == kind).sum())
    result = gates.training_pairs_gate(split, rows, ledger)
    assert result.success, result.failures


def test_a_single_prompt_group_gives_no_non_contextual_rows_and_says_so():
    split = split_frame(train_groups=1, eval_groups=1)
    rows, ledger = augment(split, 1.0, 0.0, seed=0)
    [entry] = [e for e in ledger if e[KIND] == NON_CONTEXTUAL]
    assert (entry["requested"], entry["built"], entry["not_applicable"]) == (2, 0, 2)
    assert augmented(rows).empty and gates.training_pairs_gate(split, rows, ledger).success


def test_rows_over_max_length_are_dropped_and_counted():
    def words(prompts, responses, conversational):  # a stand-in tokenizer: one token per word
        return np.array([len(f"{p} {r}".split()) for p, r in zip(prompts, responses)])

    split = split_frame()
    rows, ledger = augment(split, 0.0, 3.0, seed=0, token_lengths=words, max_length=20)
    [entry] = [e for e in ledger if e[KIND] == STYLE_NEUTRAL]
    assert entry["over_max_length"] > 0 and entry["built"] + entry["over_max_length"] == 36
    kept = augmented(rows)
    assert (kept[["chosen_tokens", "rejected_tokens"]].max(axis=1) <= 20).all()
    assert gates.training_pairs_gate(split, rows, ledger).success


def _leak_held_out_answer(rows, split):
    rows.loc[rows.index[-1], "rejected"] = split.loc[split["split"] == "eval", "chosen"].iloc[0]


def _drop_a_row(rows, split):
    rows.drop(index=rows.index[-1], inplace=True)


def _tie_as_preferred(rows, split):
    rows.loc[rows[KIND] == STYLE_NEUTRAL, "preference"] = PREFERRED


def _made_from_held_out(rows, split):
    rows.loc[rows.index[-1], "source_pair_id"] = split.loc[split["split"] == "eval", "pair_id"].iloc[0]


@pytest.mark.parametrize(
    "tamper, words",
    [
        (_leak_held_out_answer, "carries a held-out prompt or answer"),
        (_drop_a_row, "rows built but"),
        (_tie_as_preferred, "is not its kind's target"),
        (_made_from_held_out, "not an annotated train pair"),
    ],
    ids=["held-out-answer", "row-missing", "wrong-target", "held-out-source"],
)
def test_the_gate_fails_augmented_rows_that_break_a_rule(tamper, words):
    split = split_frame()
    rows, ledger = augment(split, 1.0, 1.0, seed=0)
    tamper(rows, split)
    result = gates.training_pairs_gate(split, rows, ledger)
    assert not result.success and any(words in failure for failure in result.failures), result.failures


def sample_texts() -> pd.DataFrame:
    split = split_frame(train_groups=6, eval_groups=6)
    return split.assign(split="train")


def test_no_training_template_appears_in_any_probe_and_no_probe_wording_in_training():
    pairs = sample_texts()
    probes = probe_answers(pairs, ProbeSettings(probe_pairs=len(pairs)))
    assert set(probes["source"]) == {f"probe:{probe.name}" for probe in PROBES}
    for template in TRAINING_TEMPLATES:
        assert template.strip()
        hits = probes["response"].str.contains(template, regex=False)
        assert not hits.any(), f"training template {template!r} in {probes['source'][hits].iloc[0]}"
    rows, _ = augment(pairs, 0.0, 4.0, seed=0)
    styled = pd.concat([augmented(rows)["chosen"], augmented(rows)["rejected"]])
    originals = set(pairs["chosen"]) | set(pairs["rejected"])
    added = {
        line.strip()
        for probe in probes.itertuples()
        for line in probe.response.splitlines()
        if line.strip() and not any(line.strip() in text for text in originals)
    }  # the probes' own wordings: whatever they add to the answers
    assert added
    for wording in added:
        assert not styled.str.contains(wording, regex=False).any(), f"probe wording {wording!r} in training rows"


def test_the_restated_question_is_the_last_user_message():
    chat = json.dumps(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "And why?"},
        ]
    )
    assert last_question(chat, True) == "And why?"
    assert STYLES["restated_question"]("Because.", "And why?", 0) == "You would like to know: And why?\n\nBecause."


@pytest.mark.parametrize("field", ["non_contextual_pairs", "style_neutral_pairs"])
def test_a_negative_share_of_augmented_pairs_is_refused_in_one_line(field):
    with pytest.raises(SettingError) as error:
        TrainingSettings(**{field: -1.0})
    assert field in str(error.value) and "\n" not in str(error.value)


UP_TO_TRAINING = [*UP_TO_SPLIT, "reward_model"]


@pytest.mark.trains
def test_training_with_augmentation_records_each_kind_in_the_card_settings_and_lineage(
    annotations_slice, storage_root, tiny_encoder
):
    from rm_pipeline.definitions import build_defs, reward_pipeline_job

    job = build_defs(str(storage_root), str(annotations_slice), tiny_encoder).resolve_job_def(reward_pipeline_job.name)
    config = {"non_contextual_pairs": 0.5, "style_neutral_pairs": 0.5, "early_stopping_patience": None}
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config={"ops": {"reward_model": {"config": config}}},
            asset_selection=[dg.AssetKey(name) for name in UP_TO_TRAINING],
        )
        assert result.success
        split = result.output_for_node("preference_split")
        [materialisation] = [m for m in result.asset_materializations_for_node("reward_model")]
    train = int((split["split"] == "train").sum())
    kinds = {
        row.data["kind"]: row.data["count"] for row in materialisation.metadata["train_rows_by_kind"].value.records
    }
    assert kinds[ANNOTATED] == train and 0 < kinds[NON_CONTEXTUAL] <= round(train * 0.5)
    assert 0 < kinds[STYLE_NEUTRAL] <= round(train * 0.5)
    model = (
        storage_root / "models" / next(p.name for p in (storage_root / "models").iterdir() if p.name.startswith("rm-"))
    )
    settings = json.loads((model / "training_settings.json").read_text())
    assert (settings["non_contextual_pairs"], settings["style_neutral_pairs"]) == (0.5, 0.5)
    metrics = json.loads((model / "training_metrics.json").read_text())
    assert metrics["train_pairs"] == sum(kinds.values())  # every row trained on, augmented ones included
    assert metrics["eval_pairs"] == int((split["split"] == "eval").sum())  # held out: annotated pairs only
    ledger = {entry["kind"]: entry for entry in json.loads((model / "lineage.json").read_text())["training_pairs"]}
    assert {kind: entry["built"] for kind, entry in ledger.items()} == kinds
    card = (model / "README.md").read_text()
    assert "## Training pairs" in card and "non_contextual" in card and "style_neutral" in card
