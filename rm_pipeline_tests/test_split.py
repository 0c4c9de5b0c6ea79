"""Split: prompt groups never straddle train and eval, sides are deterministic and stable as data grows."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from rm_pipeline.lib.split import group_scores, split_by_group


def make_pairs(groups: dict[str, str | None], pairs_per_group: int = 3) -> pd.DataFrame:
    """`pairs_per_group` pairs for each prompt_id -> domain."""
    rows = [
        {"pair_id": f"{group}#{n}", "prompt_id": group, "domain": domain, "chosen": f"c{n}", "rejected": f"r{n}"}
        for group, domain in groups.items()
        for n in range(pairs_per_group)
    ]
    return pd.DataFrame(rows)


def sides(split: pd.DataFrame) -> pd.Series:
    per_group = split.groupby("prompt_id")["split"].agg(set)
    assert (per_group.map(len) == 1).all(), per_group[per_group.map(len) > 1]
    return per_group.map(lambda s: next(iter(s)))


@pytest.fixture(scope="module")
def many_groups() -> dict[str, str]:
    domains = ["math", "code", "chat", "safety"]
    return {f"prompt-{i}": domains[i % len(domains)] for i in range(3000)}


def test_no_prompt_group_is_on_both_sides(many_groups):
    split = split_by_group(make_pairs(many_groups), eval_fraction=0.2, seed=0)
    assert set(split["split"]) == {"train", "eval"}
    train = set(split.loc[split["split"] == "train", "prompt_id"])
    held_out = set(split.loc[split["split"] == "eval", "prompt_id"])
    assert not train & held_out
    assert train | held_out == set(many_groups)
    assert len(split) == 3 * len(many_groups)


def test_eval_share_is_close_to_the_fraction(many_groups):
    for fraction in (0.1, 0.2, 0.5):
        share = (sides(split_by_group(make_pairs(many_groups, 1), eval_fraction=fraction)) == "eval").mean()
        assert abs(share - fraction) < 0.03, (fraction, share)


def test_split_is_deterministic_and_ignores_row_order(many_groups):
    pairs = make_pairs(many_groups)
    first = sides(split_by_group(pairs, seed=7))
    again = sides(split_by_group(pairs, seed=7))
    shuffled = sides(split_by_group(pairs.sample(frac=1.0, random_state=1), seed=7))
    pd.testing.assert_series_equal(first, again)
    pd.testing.assert_series_equal(first, shuffled.reindex(first.index))
    other_seed = sides(split_by_group(pairs, seed=8))
    assert (first != other_seed.reindex(first.index)).mean() > 0.1  # the seed matters


def test_existing_groups_keep_their_side_when_new_groups_arrive(many_groups):
    before = split_by_group(make_pairs(many_groups), seed=0)
    grown = dict(many_groups) | {f"new-{i}": ("math", "code", "chat", "safety")[i % 4] for i in range(1000)}
    after = split_by_group(make_pairs(grown), seed=0)
    for groups in (many_groups, grown):  # no domain one-sided by the hash alone: stratification moved nothing
        by_hash = pd.DataFrame({"domain": pd.Series(groups)})
        by_hash["eval"] = group_scores(by_hash.index.to_series(), seed=0) < 0.2
        assert by_hash.groupby("domain")["eval"].nunique().eq(2).all()
    old, new = sides(before), sides(after)
    pd.testing.assert_series_equal(old, new.reindex(old.index))
    assert (new.drop(old.index) == "eval").any() and (new.drop(old.index) == "train").any()


def test_a_side_follows_a_salted_blake2b_of_the_group_key(many_groups):
    """The hash is the contract that keeps sides stable across machines and releases: pin it."""

    def score(key, seed):
        digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    split = split_by_group(make_pairs(many_groups, 1), eval_fraction=0.2, seed=3)
    expected = ["eval" if score(group, 3) < 0.2 else "train" for group in split["prompt_id"]]
    assert split["split"].tolist() == expected


def test_every_domain_with_two_groups_gets_both_sides():
    # 200 two-group domains: the hash alone leaves many of them one-sided
    groups = {f"g{d}-{k}": f"domain-{d}" for d in range(200) for k in range(2)}
    scores = group_scores(pd.Series(list(groups)), seed=0).to_numpy().reshape(200, 2)
    assert ((scores >= 0.2).all(axis=1)).any(), "the example needs domains the hash leaves train-only"
    split = split_by_group(make_pairs(groups), eval_fraction=0.2, seed=0)
    per_domain = split.groupby("domain")["split"].agg(set)
    assert (per_domain == {"train", "eval"}).all()
    sides(split)  # still no group on both sides


def test_a_domain_the_hash_puts_all_in_eval_keeps_one_group_in_train():
    candidates = pd.Series([f"g{i}" for i in range(2000)])
    scores = group_scores(candidates, seed=0)
    low = candidates[scores < 0.5].tolist()[:3]  # all three below a 0.5 eval_fraction: hash says eval
    groups = {name: "small" for name in low} | {f"big-{i}": "big" for i in range(50)}
    result = sides(split_by_group(make_pairs(groups), eval_fraction=0.5, seed=0))
    small = result[low]
    assert sorted(small) == ["eval", "eval", "train"]
    lowest_first = scores[candidates.isin(low)].set_axis(low)
    assert small[lowest_first.idxmax()] == "train"  # the group nearest the threshold moves


def test_a_single_group_domain_goes_to_train():
    candidates = pd.Series([f"g{i}" for i in range(100)])
    eval_by_hash = candidates[group_scores(candidates, seed=0) < 0.2].iloc[0]
    groups = {eval_by_hash: "tiny"} | {f"big-{i}": "big" for i in range(50)}
    result = sides(split_by_group(make_pairs(groups), eval_fraction=0.2, seed=0))
    assert result[eval_by_hash] == "train"


def test_missing_domain_is_its_own_stratum():
    groups = {f"g{i}": None for i in range(40)} | {f"h{i}": "known" for i in range(40)}
    split = split_by_group(make_pairs(groups), eval_fraction=0.2)
    nameless = split[split["domain"].isna()]
    assert set(nameless["split"]) == {"train", "eval"}
    assert split["split"].notna().all()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_eval_fraction_must_be_a_proper_fraction(fraction):
    with pytest.raises(ValueError, match="eval_fraction"):
        split_by_group(make_pairs({"g": "d"}), eval_fraction=fraction)


def test_group_column_is_configurable():
    pairs = make_pairs({f"g{i}": "d" for i in range(200)}).rename(columns={"prompt_id": "conversation"})
    split = split_by_group(pairs, group_column="conversation")
    assert (split.groupby("conversation")["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "eval"}


def test_the_same_prompt_text_under_other_ids_joins_one_group():
    """PandaLM and Tulu file the same self-instruct instruction under their own ids."""
    pairs = make_pairs({f"g{i}": "d" for i in range(400)})
    pairs["prompt"] = pairs["prompt_id"] + " text"
    # a@vendor2 repeats g1's text (other case and spacing); b@vendor3 shares a second text with a@vendor2
    extra = pd.DataFrame(
        [
            {
                "pair_id": "x1",
                "prompt_id": "a@vendor2",
                "domain": "d",
                "prompt": "G1   TEXT",
                "chosen": "c",
                "rejected": "r",
            },
            {
                "pair_id": "x2",
                "prompt_id": "a@vendor2",
                "domain": "d",
                "prompt": "other",
                "chosen": "c",
                "rejected": "r",
            },
            {
                "pair_id": "x3",
                "prompt_id": "b@vendor3",
                "domain": "d",
                "prompt": "Other",
                "chosen": "c",
                "rejected": "r",
            },
        ]
    )
    for eval_seed in range(20):
        split = split_by_group(pd.concat([pairs, extra], ignore_index=True), 0.5, eval_seed)
        linked = split[split["prompt_id"].isin(["g1", "a@vendor2", "b@vendor3"])]
        assert linked["split"].nunique() == 1
    # without a prompt column, ids alone define the groups
    assert (
        split_by_group(pairs.drop(columns="prompt"), 0.5, 0)["split"].tolist()
        == split_by_group(pairs, 0.5, 0)["split"].tolist()
    )
