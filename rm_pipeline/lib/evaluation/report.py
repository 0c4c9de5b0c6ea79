"""The evaluation report: the numbers that come out of the scored evidence, its plots, its Markdown and its files.

Scored pairs (``reward_scores``, rows from ``rm_pipeline.lib.evaluation.inputs``) have one row per pair with a
``source``:

    held_out      the eval side of the grouped split
    disagreement  comparisons routed to the review queue and kept out of training
    fresh_policy  human-labelled pairs of fresh policy outputs (``fresh-policy/`` in the eval folder)
    benchmark     RewardBench-format files (``*.jsonl`` directly in the eval folder)

Scored responses (``response_scores``) have one row per answer: ``policy_outputs`` (AlpacaEval-format
outputs of several policies) and ``rankings`` (K > 2 human-ranked replies, OpenAssistant trees).
Knows nothing of Dagster or of the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.evaluation.accuracy import ACCURACY_COLUMNS, pair_accuracy, pair_margins, tie_pair_margins
from rm_pipeline.lib.evaluation.calibration import calibration, fit_temperature
from rm_pipeline.lib.evaluation.inputs import HELD_OUT_TIE
from rm_pipeline.lib.evaluation.length_bias import LENGTH_MATCH_TOLERANCE, length_audit, stacked_responses
from rm_pipeline.lib.evaluation.pair_files import pair_file_summary
from rm_pipeline.lib.evaluation.policies import policy_ranking, policy_reward_summary
from rm_pipeline.lib.evaluation.probes import flip_rates, probe_rows
from rm_pipeline.lib.evaluation.rankings import ranking_agreement
from rm_pipeline.lib.evaluation.readiness import ReadinessThresholds
from rm_pipeline.lib.evaluation.report_markdown import render_markdown
from rm_pipeline.lib.evaluation.slices import HIGH_AGREEMENT, by_agreement, by_domain
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE
from rm_pipeline.lib.evaluation.uncertainty import accuracy_by_uncertainty
from rm_pipeline.lib.markdown import format_number
from rm_pipeline.lib.model_files import write_atomically
from rm_pipeline.lib.settings import check_settings, setting
from rm_pipeline.lib.split import NO_DOMAIN

PAIR_SOURCES = ("held_out", "disagreement", "fresh_policy", "benchmark")
LENGTH_PROBE = ("alpaca-7b_concise", "alpaca-7b", "alpaca-7b_verbose")


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class ReportSettings:
    leaderboard_file: str = setting(
        "alpaca-eval/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
        "Leaderboard CSV (policy name in the first column), relative to the evaluation "
        "folder; without it the leaderboard comparison is skipped.",
    )
    leaderboard_column: str = setting(
        "length_controlled_winrate", "Column the policies' mean reward is rank-correlated with."
    )
    calibration_bins: int = setting(
        10, "Bins of the reliability diagram and of the expected calibration error.", minimum=1, maximum=1000
    )
    high_agreement: float = setting(
        HIGH_AGREEMENT, "Chosen share from which annotators count as agreeing.", minimum=0.5, maximum=1
    )
    min_domain_pairs: int = setting(
        20,
        "Held-out domains with fewer pairs are folded into one `other` row of the tables (the JSON keeps each).",
        minimum=0,
    )
    confidence: float = setting(
        CONFIDENCE,
        "Confidence of every interval (rates: a bootstrap over prompt groups where pairs share prompts, Wilson "
        "otherwise; correlations: a bootstrap over prompt groups, or over policies for the leaderboard).",
        above=0,
        below=1,
    )
    length_match_tolerance: float = setting(
        LENGTH_MATCH_TOLERANCE, "Relative length difference under which two answers are length-matched.", minimum=0
    )

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class EvaluationSettings(ReportSettings, ReadinessThresholds):
    """The evaluation report's settings: what it measures, and the readiness thresholds it is judged against
    (the verdict is part of the report, so it shows where the report does)."""


def build_report(
    pair_scores: pd.DataFrame,
    response_scores: pd.DataFrame,
    train_domains,
    leaderboard: pd.Series | None = None,
    settings: ReportSettings = ReportSettings(),
) -> dict:
    """Every section of the evaluation report as plain JSON-able values (NaN becomes None). Every accuracy,
    rate and correlation ``name`` has its interval beside it as ``name_interval`` (``Interval.as_dict``)."""
    sources = {name: pair_scores[pair_scores["source"] == name] for name in PAIR_SOURCES}
    held_out = sources["held_out"]
    split_pairs = pd.concat([held_out, sources["disagreement"]])
    disagreement = split_pairs[split_pairs["in_review_queue"].astype(bool)]
    policies = response_scores[response_scores["source"] == "policy_outputs"].rename(columns={"candidate": "policy"})
    rankings = response_scores[response_scores["source"] == "rankings"]
    confidence = settings.confidence
    report = {
        "held_out": {
            **pair_accuracy(held_out, confidence=confidence),
            "truncated": int(held_out["truncated"].sum()),
            "prompts": int(held_out["prompt_id"].nunique()),
        },
        "held_out_tie_pairs": tie_pair_margins(pair_scores[pair_scores["source"] == HELD_OUT_TIE]),
        "domains": _domains(held_out, train_domains, settings),
        "disagreement": pair_accuracy(disagreement, confidence=confidence),
        "agreement": _records(by_agreement(split_pairs, settings.high_agreement, confidence=confidence)),
        "length": {
            **length_audit(
                held_out,
                policies[["reward", "tokens", "group_id"]] if len(policies) else None,
                settings.length_match_tolerance,
                confidence=confidence,
            ),
            "length_probe": _length_probe(policies),
        },
        "calibration": _calibration(held_out, settings.calibration_bins),
        "uncertainty": accuracy_by_uncertainty(held_out, confidence=confidence),  # an ensemble's; else n = 0
        "policies": _policies(policies, leaderboard, confidence),
        "rankings": _rankings(rankings, confidence),
        "benchmarks": {
            Path(file).name: pair_file_summary(pairs, settings.calibration_bins, confidence=confidence)
            for file, pairs in sources["benchmark"].groupby("file", sort=True)
        },
        "fresh_policy": {
            "files": {
                Path(file).name: pair_file_summary(pairs, settings.calibration_bins, confidence=confidence)
                for file, pairs in sources["fresh_policy"].groupby("file", sort=True)
            },
            **pair_accuracy(sources["fresh_policy"], confidence=confidence),
        },
        "probes": flip_rates(held_out, probe_rows(response_scores), settings.confidence),
    }
    return jsonable(report)


def _records(table: pd.DataFrame) -> list[dict]:
    return table.reset_index().to_dict("records")


OTHER_DOMAINS = "other"


def _domains(held_out: pd.DataFrame, train_domains, settings: ReportSettings) -> dict:
    """Accuracy per domain with its interval. ``table`` (what the Markdown and the UI show): domains under
    ``min_domain_pairs`` pairs share one `other` row, as an interval on a handful of pairs says nothing;
    ``all_domains``: every domain on its own. Spillover is computed on the domains as they are."""
    result = by_domain(held_out, train_domains, confidence=settings.confidence)
    every = _records(result["table"])
    small = [row["domain"] for row in every if row["n"] < settings.min_domain_pairs]
    table = [row for row in every if row["domain"] not in small]
    if small:
        folded = np.isin(held_out["domain"].fillna(NO_DOMAIN).astype(str).to_numpy(), small)
        other = pair_accuracy(held_out[folded], confidence=settings.confidence)
        table.append(
            {
                "domain": f"{OTHER_DOMAINS} ({len(small)} domains)",
                **{k: other[k] for k in ACCURACY_COLUMNS},
                "in_training": None,
            }
        )
    return {
        "table": table,
        "all_domains": every,
        "folded_domains": sorted(small),
        "spillover_domains": result["spillover_domains"],
        "spillover": result["spillover"],
    }


def _length_probe(policies: pd.DataFrame) -> list[dict]:
    """Mean reward of one policy told to be concise, left alone, and told to be verbose."""
    summary = policy_reward_summary(policies) if len(policies) else pd.DataFrame()
    return [{"policy": name, **summary.loc[name].to_dict()} for name in LENGTH_PROBE if name in summary.index]


def _calibration(held_out: pd.DataFrame, bins: int) -> dict:
    if not len(held_out):
        return {"n": 0}
    margins = pair_margins(held_out)
    result = calibration(margins, bins=bins)
    return {
        **{k: v for k, v in result.items() if k != "table"},
        "reliability": result["table"].to_dict("records"),
        "temperature_fit": fit_temperature(margins, bins=bins),
    }


def _policies(policies: pd.DataFrame, leaderboard: pd.Series | None, confidence: float) -> dict:
    if not len(policies):
        return {"n_policies": 0}
    summary = policy_reward_summary(policies).sort_values("mean_reward", ascending=False)
    summary["truncated"] = policies.groupby("policy")["truncated"].sum().reindex(summary.index).astype(int)
    result = {"n_policies": len(summary), "summary": _records(summary)}
    if leaderboard is not None:
        result["leaderboard"] = {
            "column": leaderboard.name,
            **policy_ranking(summary["mean_reward"], leaderboard, confidence),
        }
    return result


def _rankings(rankings: pd.DataFrame, confidence: float) -> dict:
    if not len(rankings):
        return {"n_groups": 0}
    result = ranking_agreement(rankings.rename(columns={"candidate": "message_id"}), confidence=confidence)
    return {k: v for k, v in result.items() if k != "per_group"}


def jsonable(value):
    """Plain Python values for JSON: numpy scalars unwrapped, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- plots


def write_plots(
    pair_scores: pd.DataFrame, response_scores: pd.DataFrame, report: dict, folder: Path
) -> dict[str, Path]:
    """The reliability diagram, reward histograms (chosen vs rejected) and reward against length, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held_out = pair_scores[pair_scores["source"] == "held_out"]
    paths = {}

    def save(name, figure):
        figure.tight_layout()
        paths[name] = folder / f"{name}.png"
        figure.savefig(paths[name], dpi=90)
        plt.close(figure)

    figure, axis = plt.subplots(figsize=(4.2, 4))
    table = pd.DataFrame(report["calibration"].get("reliability", []))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    if len(table):
        filled = table.dropna(subset=["observed"])
        axis.plot(filled["mean_predicted"], filled["observed"], marker="o", label="model")
    axis.set(
        title=f"reliability (ECE {format_number(report['calibration'].get('ece'))})",
        xlabel="predicted P(chosen wins)",
        ylabel="observed rate",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axis.legend()
    save("reliability_diagram", figure)

    figure, axis = plt.subplots(figsize=(5, 3.2))
    if len(held_out):
        rewards = np.concatenate([held_out["chosen_reward"], held_out["rejected_reward"]])
        edges = np.histogram_bin_edges(rewards, bins=30)
        axis.hist(held_out["chosen_reward"], bins=edges, alpha=0.6, label="chosen")
        axis.hist(held_out["rejected_reward"], bins=edges, alpha=0.6, label="rejected")
        axis.legend()
    axis.set(title="held-out rewards", xlabel="reward", ylabel="answers")
    save("reward_histograms", figure)

    figure, axis = plt.subplots(figsize=(5, 3.2))
    answers = stacked_responses(held_out) if len(held_out) else pd.DataFrame(columns=["reward", "tokens"])
    axis.scatter(answers["tokens"], answers["reward"], s=6, alpha=0.4, label="held-out answers")
    policies = response_scores[response_scores["source"] == "policy_outputs"]
    if len(policies):
        axis.scatter(policies["tokens"], policies["reward"], s=6, alpha=0.4, label="policy outputs")
    axis.set(
        title=f"reward against length (held-out Spearman {format_number(report['length'].get('spearman_rho'))})",
        xlabel="response tokens",
        ylabel="reward",
        xscale="symlog",
    )
    axis.legend()
    save("reward_vs_length", figure)
    return paths


# --------------------------------------------------------------------------- files


REPORT_JSON, REPORT_MARKDOWN = "evaluation_report.json", "evaluation_report.md"


def write_report(folder: Path, document: dict) -> tuple[Path, Path]:
    """``document`` (facts, plots, report and, once decided, readiness) as JSON and Markdown in ``folder``."""
    json_path, markdown_path = folder / REPORT_JSON, folder / REPORT_MARKDOWN
    write_atomically(json_path, json.dumps(document, indent=2, ensure_ascii=False))
    write_atomically(
        markdown_path,
        render_markdown(document["report"], document["facts"], document["plots"], document.get("readiness")),
    )
    return json_path, markdown_path
