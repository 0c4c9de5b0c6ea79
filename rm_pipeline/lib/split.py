"""Train/eval split by prompt group: a group is never on both sides.

A group is every prompt id that shares a prompt text with another (case and spacing ignored): two
vendors who filed the same instruction under their own ids (PandaLM and Tulu both use the
self-instruct user-oriented set) must not put it on both sides. A group's side comes from a salted
hash of its key, not a shuffle, so it never moves when new data arrives. Stratification only steps in
for a domain the hash left one-sided. Knows nothing of Dagster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse import csgraph

from rm_pipeline.lib.settings import check_settings, setting

NO_DOMAIN = "(none)"  # how a pair without a domain is shown and stratified


@dataclass(frozen=True)
class SplitSettings:
    eval_fraction: float = setting(0.2, "Share of prompt groups held out for evaluation.", above=0, below=1)
    seed: int = setting(0, "Salt of the group hash: change it for a different, equally stable split.")

    def __post_init__(self):
        check_settings(self)


def group_scores(keys: pd.Series, seed: int) -> pd.Series:
    """A stable number in [0, 1) per group key (blake2b, the same on every machine and version)."""
    unique = pd.unique(keys)
    scores = [
        int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big") / 2**64
        for key in unique
    ]
    return keys.map(pd.Series(scores, index=unique))


def normalised_prompt(prompts: pd.Series) -> pd.Series:
    """Prompt text with case and runs of whitespace ignored: what makes two prompts the same prompt."""
    return prompts.astype(str).str.lower().str.replace(r"\s+", " ", regex=True).str.strip()


def prompt_groups(pairs: pd.DataFrame, group_column: str = "prompt_id", text_column: str = "prompt") -> pd.Series:
    """Each row's group key: ids linked by a shared prompt text form one group (connected components
    of the id-text graph), keyed by the group's smallest id so that the key is stable."""
    id_codes, ids = pd.factorize(pairs[group_column].astype(str))
    text_codes, texts = pd.factorize(normalised_prompt(pairs[text_column]))
    size = len(ids) + len(texts)
    links = sparse.coo_matrix((np.ones(len(pairs)), (id_codes, len(ids) + text_codes)), shape=(size, size))
    _, component = csgraph.connected_components(links, directed=False)
    key_of_id = pd.Series(ids).groupby(component[: len(ids)]).transform("min").to_numpy()
    return pd.Series(key_of_id[id_codes], index=pairs.index, name="prompt_group")


def split_by_group(
    pairs: pd.DataFrame,
    eval_fraction: float = SplitSettings.eval_fraction,
    seed: int = SplitSettings.seed,
    group_column: str = "prompt_id",
    domain_column: str = "domain",
    text_column: str = "prompt",
) -> pd.DataFrame:
    """The pairs with `prompt_group` (the group's key) and `split` ('train' | 'eval').

    Groups are ``group_column`` values joined by a shared ``text_column`` (when the pairs have one).
    A domain with one group goes to train; a domain with several always gets at least one group on
    each side (the group whose hash is nearest the threshold moves).
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    keys = prompt_groups(pairs, group_column, text_column) if text_column in pairs else pairs[group_column]
    groups = pairs[domain_column].fillna(NO_DOMAIN).groupby(keys.to_numpy(), sort=False).first().rename("domain")
    groups = groups.to_frame()
    groups["score"] = group_scores(groups.index.to_series(), seed)
    groups["split"] = np.where(groups["score"] < eval_fraction, "eval", "train")
    for _, members in groups.groupby("domain"):
        sides = set(members["split"])
        if len(members) == 1:
            groups.loc[members.index, "split"] = "train"
        elif sides == {"train"}:
            groups.loc[members["score"].idxmin(), "split"] = "eval"
        elif sides == {"eval"}:
            groups.loc[members["score"].idxmax(), "split"] = "train"
    result = pairs.copy()
    result["prompt_group"] = keys.to_numpy()
    result["split"] = keys.map(groups["split"]).to_numpy()
    return result
