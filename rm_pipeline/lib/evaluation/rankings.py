"""K-way rankings: how well rewards order several ranked answers to one prompt (OpenAssistant trees)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from rm_pipeline.lib.evaluation.accuracy import TIE_TOLERANCE
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE, bootstrap_interval, rate_with_interval


def ranking_agreement(
    groups: pd.DataFrame, tie_tolerance: float = TIE_TOLERANCE, confidence: float = CONFIDENCE
) -> dict:
    """Agreement of reward order with human rankings of K replies to one prompt.

    ``groups``: one row per reply with ``group_id``, ``rank`` (human rank, 0 = best) and ``reward``.
    ``top1_agreement``: mean over groups of "the reply the model scores highest is the human's best";
    when several replies tie for the top reward the group scores the share of them that is the
    human's best (the expected hit of a random tie-break). ``top1_chance`` is that rate for random
    rewards (mean of 1/K). ``mean_kendall_tau``: mean over groups of Kendall's tau-b between reward
    and human preference (-rank); groups where it is undefined (constant rewards) are left out and
    counted in ``tau_undefined``. ``per_group``: group_id, k, top1, kendall_tau. Both have an interval
    (``<name>_interval``) over groups: Wilson for top-1 (one share per group), a bootstrap of the mean tau.
    """
    data = groups[["group_id", "rank", "reward"]].copy()
    grouped = data.groupby("group_id", sort=False)
    top_reward = grouped["reward"].transform("max")
    best_rank = grouped["rank"].transform("min")
    data["is_top"] = data["reward"] >= top_reward - tie_tolerance
    data["top_and_best"] = data["is_top"] & (data["rank"] == best_rank)
    per_group = data.groupby("group_id", sort=False).agg(
        k=("reward", "size"), top=("is_top", "sum"), hits=("top_and_best", "sum")
    )
    per_group["top1"] = per_group["hits"] / per_group["top"]

    def tau(members: pd.DataFrame) -> float:
        if members["reward"].nunique() < 2 or members["rank"].nunique() < 2:
            return math.nan
        return float(stats.kendalltau(members["reward"], -members["rank"]).statistic)

    per_group["kendall_tau"] = [tau(members) for _, members in data.groupby("group_id", sort=False)]
    per_group = per_group.reset_index()[["group_id", "k", "top1", "kendall_tau"]]
    defined = per_group["kendall_tau"].notna()
    return {
        "n_groups": int(len(per_group)),
        "n_replies": int(len(data)),
        "top1_agreement": float(per_group["top1"].mean()) if len(per_group) else math.nan,
        "top1_agreement_interval": rate_with_interval(per_group["top1"], confidence=confidence),
        "top1_chance": float((1 / per_group["k"]).mean()) if len(per_group) else math.nan,
        "mean_kendall_tau": float(per_group.loc[defined, "kendall_tau"].mean()) if defined.any() else math.nan,
        "mean_kendall_tau_interval": bootstrap_interval(
            per_group.loc[defined, "kendall_tau"].to_numpy(float), confidence=confidence
        ).as_dict()
        if defined.any()
        else None,
        "tau_undefined": int((~defined).sum()),
        "per_group": per_group,
    }


OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def oasst_ranked_groups(path: str | Path, min_replies: int = 3) -> pd.DataFrame:
    """Flatten OpenAssistant message trees (JSONL) into human-ranked groups of sibling replies.

    One row per ranked reply: group_id (the parent's message_id), message_tree_id, context (the
    conversation from the root to the parent, as ``{"role", "content"}`` messages), message_id, text,
    rank (0 = best) and k (ranked siblings in the group). Replies without a rank or marked deleted
    are left out, and so are groups with fewer than ``min_replies`` ranked replies (default: K > 2).
    """
    rows = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            tree = json.loads(line)
            stack = [(tree["prompt"], [])]
            while stack:
                message, history = stack.pop()
                context = history + [
                    {"role": OASST_ROLES.get(message["role"], message["role"]), "content": message["text"]}
                ]
                replies = message.get("replies") or []
                ranked = [reply for reply in replies if reply.get("rank") is not None and not reply.get("deleted")]
                if len(ranked) >= min_replies:
                    rows.extend(
                        {
                            "group_id": message["message_id"],
                            "message_tree_id": tree["message_tree_id"],
                            "context": context,
                            "message_id": reply["message_id"],
                            "text": reply["text"],
                            "rank": int(reply["rank"]),
                            "k": len(ranked),
                        }
                        for reply in ranked
                    )
                stack.extend((reply, context) for reply in reversed(replies))
    columns = ["group_id", "message_tree_id", "context", "message_id", "text", "rank", "k"]
    return pd.DataFrame(rows, columns=columns)
