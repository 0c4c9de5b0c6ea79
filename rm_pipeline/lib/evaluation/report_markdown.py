"""The evaluation report as Markdown: one small renderer per section, joined in the report's order."""

from __future__ import annotations

from rm_pipeline.lib.asset_values import READY
from rm_pipeline.lib.evaluation.probes import render_probes
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE
from rm_pipeline.lib.evaluation.uncertainty import render_uncertainty
from rm_pipeline.lib.markdown import format_number, markdown_table, shown, with_intervals


def render_markdown(report: dict, facts: dict, plots: dict[str, str], verdict: dict | None = None) -> str:
    """The report as Markdown; ``plots`` maps plot names to the image paths the Markdown links to."""
    sections = [
        _title(facts),
        render_verdict(verdict) if verdict is not None else None,
        _held_out(report["held_out"]),
        _domains(report["domains"], report["held_out"]),
        _agreement(report),
        _length_bias(report["length"]),
        _calibration(report["calibration"]),
        render_uncertainty(report.get("uncertainty")),
        _policies(report["policies"]),
        _rankings(report["rankings"]),
        _fresh_policy(report["fresh_policy"]),
        _benchmarks(report["benchmarks"]),
        render_probes(report["probes"]) if "probes" in report else None,  # reports written before the probes
        _plots(plots),
    ]
    return "\n".join(section for section in sections if section is not None)


def render_verdict(verdict: dict) -> str:
    state = "READY" if verdict[READY] else "NOT READY"
    lines = [
        f"## Readiness: {state} (`optimize_against_reward: {str(verdict['optimize_against_reward']).lower()}`)\n",
        markdown_table(
            [{**check, "passed": "pass" if check["passed"] else "FAIL"} for check in verdict["checks"]],
            ["check", "value", "threshold", "passed", "reason"],
        ),
        f"\n{verdict['recommendation']}\n",
    ]
    return "\n".join(lines)


def _accuracy_line(result: dict) -> str:
    if not result.get("n"):
        return "no pairs"
    return (
        f"accuracy **{shown(result, 'accuracy')}** on {result['n']} pairs ({result['correct']} right, "
        f"{result['wrong']} wrong, {result['ties']} ties counted half), "
        f"mean margin {format_number(result['mean_margin'])}"
    )


def _confidence(result: dict) -> str:
    interval = result.get("accuracy_interval")
    return f"{interval['confidence']:.0%}" if interval else f"{CONFIDENCE:.0%}"


def _title(facts: dict) -> str:
    return "\n".join(
        [
            f"# Evaluation report: `{facts.get('model_name', 'reward model')}`\n",
            "\n".join(f"- {key}: `{value}`" for key, value in facts.items()) + "\n",
        ]
    )


def _held_out(held: dict) -> str:
    return "\n".join(
        [
            "## Held-out pairs (grouped split)\n",
            f"{_accuracy_line(held)} over {held.get('prompts', 0)} prompts; rewards from "
            f"{format_number(held.get('reward_min'))} to {format_number(held.get('reward_max'))} (mean "
            f"{format_number(held.get('reward_mean'))}); {held.get('truncated', 0)} pairs cut to the model's "
            "length.\n",
        ]
    )


def _domains(domains: dict, held: dict) -> str:
    columns = ["domain", "n", "accuracy", "ties", "mean_margin", "in_training"]
    parts = [
        "## By domain\n",
        markdown_table(with_intervals(domains["table"]), columns),
        f"\nAccuracy [{_confidence(held)} interval]. Domains with too few pairs share the `other` row.\n",
    ]
    if domains["spillover_domains"]:
        parts.append(
            f"\nSpillover (domains absent from training: {', '.join(domains['spillover_domains'])}): "
            f"{_accuracy_line(domains['spillover'])}.\n"
        )
    else:
        parts.append("\nEvery held-out domain was seen in training: no spillover slice.\n")
    return "\n".join(parts)


def _agreement(report: dict) -> str:
    return "\n".join(
        [
            "## Disagreement slice and agreement levels\n",
            f"Review-queue comparisons kept out of training, against their aggregated label: "
            f"{_accuracy_line(report['disagreement'])}.\n\n",
            markdown_table(with_intervals(report["agreement"]), ["agreement", "n", "accuracy", "ties", "mean_margin"]),
        ]
    )


def _length_bias(length: dict) -> str:
    parts = [
        "## Length bias\n",
        f"- Spearman correlation of reward with response length: {shown(length, 'spearman_rho')} over "
        f"{length.get('spearman_n')} held-out answers"
        + (
            f", {shown(length, 'responses_spearman_rho')} over {length.get('responses_spearman_n')} policy outputs"
            if "responses_spearman_rho" in length
            else ""
        )
        + "\n"
        f'- "The longer answer wins" on the same pairs: accuracy '
        f"{shown(length, 'longer_wins_accuracy')}\n"
        f"- The model prefers the longer answer in {shown(length, 'model_prefers_longer')} of "
        f"{length.get('length_differs_n')} pairs whose lengths differ\n"
        f"- Length-matched pairs (within 10% in tokens): accuracy "
        f"{shown(length, 'length_matched_accuracy')} "
        f"on {length.get('length_matched_n')} pairs\n",
    ]
    if length["length_probe"]:
        parts.append("\nOne policy told to be concise, left alone, and told to be verbose:\n\n")
        parts.append(markdown_table(length["length_probe"], ["policy", "n", "mean_reward", "mean_tokens"]))
    return "\n".join(parts)


def _calibration(calibration: dict) -> str:
    if not calibration.get("n"):
        return "\n".join(["## Calibration\n", "no held-out pairs\n"])
    fit = calibration["temperature_fit"]
    return "\n".join(
        [
            "## Calibration\n",
            f"P(chosen wins) = sigmoid(margin): expected calibration error "
            f"**{format_number(calibration['ece'])}** (max {format_number(calibration['mce'])}), log-loss "
            f"{format_number(calibration['nll'])}. A temperature "
            f"of {format_number(fit['temperature'])} fitted on these pairs (stored beside the model as "
            f"`reward_temperature` in `calibration.json`) brings ECE to {format_number(fit['ece_after'])} on the "
            "same pairs" + (" (at the search bound: the pairs are separated)" if fit["at_bound"] else "") + ".\n\n",
            markdown_table(
                calibration["reliability"], ["bin_lower", "bin_upper", "mean_predicted", "observed", "count"]
            ),
        ]
    )


def _policies(policies: dict) -> str:
    if not policies.get("n_policies"):
        return "\n".join(["## Fresh policy outputs\n", "no policy outputs configured\n"])
    parts = [
        "## Fresh policy outputs\n",
        markdown_table(policies["summary"], ["policy", "n", "mean_reward", "mean_tokens", "truncated"]),
        "\n`truncated`: outputs longer than the model reads, scored on their end (oldest context cut).\n",
    ]
    board = policies.get("leaderboard")
    if board:
        parts.append(
            f"\nSpearman correlation of mean reward with the leaderboard's `{board['column']}`: "
            f"{shown(board, 'spearman_rho')} over {board['n_policies']} policies (interval: "
            f"{board['interval_over']})"
            + (f" (not on the leaderboard: {', '.join(board['missing'])})" if board["missing"] else "")
            + ".\n"
        )
    return "\n".join(parts)


def _rankings(rankings: dict) -> str:
    if not rankings.get("n_groups"):
        return "\n".join(["## Human rankings of K > 2 replies\n", "no ranking files\n"])
    return "\n".join(
        [
            "## Human rankings of K > 2 replies\n",
            f"{rankings['n_groups']} groups, {rankings['n_replies']} replies: top-1 agreement "
            f"**{shown(rankings, 'top1_agreement')}** (chance "
            f"{format_number(rankings['top1_chance'])}), mean "
            f"Kendall's tau {shown(rankings, 'mean_kendall_tau')} ({rankings['tau_undefined']} groups "
            f"with constant rewards left out).\n",
        ]
    )


def _fresh_policy(fresh: dict) -> str:
    return "\n".join(
        [
            "## Human-labelled pairs of fresh policy outputs\n",
            f"{_accuracy_line(fresh)}.\n"
            if fresh.get("n")
            else "none: put human-labelled pairs of the policy's own outputs in `fresh-policy/` in the eval folder.\n",
        ]
    )


def _benchmarks(benchmarks: dict) -> str:
    parts = ["## External benchmark files\n"]
    for name, summary in benchmarks.items():
        parts.append(_benchmark_line(name, summary))
        if "best_of_n" in summary:
            parts.append(_best_of_n(summary["best_of_n"]))
        else:
            parts.append(
                markdown_table(
                    with_intervals([{"subset": k, **v} for k, v in summary["subsets"].items()]),
                    ["subset", "n", "accuracy"],
                )
            )
    if not benchmarks:
        parts.append("no benchmark files\n")
    return "\n".join(parts)


def _benchmark_line(name: str, summary: dict) -> str:
    return (
        f"### {name}\n{_accuracy_line(summary)}; longer wins "
        f"{shown(summary, 'longer_wins_accuracy')}, length-matched "
        f"{shown(summary, 'length_matched_accuracy')} on {summary['length_matched_n']} "
        f"pairs, ECE {format_number(summary['ece'])}"
        + (
            f"; RewardBench-weighted score {shown(summary, 'rewardbench_score')} over the "
            f"{len(summary['rewardbench_sections'])} of 5 sections present"
            if "rewardbench_score" in summary
            else ""
        )
        + ".\n\n"
    )


def _best_of_n(best: dict) -> str:
    """A RewardBench 2 file: best-of-N accuracy per subset, the Ties subset by its own score."""
    rows = []
    for name, subset in best["subsets"].items():
        ties = subset.get("ties_score")
        rows.append(
            {
                "subset": name,
                "rows": subset["n"],
                "best-of-N accuracy": shown(subset, "accuracy"),
                "subset score": shown(ties, "score") if ties else shown(subset, "accuracy"),
            }
        )
    lines = [
        f"RewardBench 2 rows: {best['rows']}; a row is right when its chosen answer outscores every rejected one "
        f"(best-of-N accuracy {shown(best, 'accuracy')}); RewardBench 2 score (mean over the subsets present) "
        f"**{shown(best, 'rewardbench2_score')}**. The pair numbers above count every (chosen, rejected) pair.\n",
        markdown_table(rows, ["subset", "rows", "best-of-N accuracy", "subset score"]),
    ]
    for name, subset in best["subsets"].items():
        if "ties_score" in subset:
            ties = subset["ties_score"]
            lines.append(
                f"\n{name}: score {shown(ties, 'score')} over {ties['prompts']} prompts = 0.30 tied accuracy "
                f"{shown(ties, 'tied_accuracy')} + 0.30 reference accuracy {shown(ties, 'ref_accuracy')} + 0.20 "
                f"correct-over-incorrect margin beats the spread of correct answers "
                f"{shown(ties, 'correctness_preferred')} + 0.20 the same against the reference's margin too "
                f"{shown(ties, 'correctness_preferred_hard')} + 0.01 margin term {shown(ties, 'margin_score')}.\n"
            )
    return "\n".join(lines)


def _plots(plots: dict[str, str]) -> str:
    return "\n".join(["## Plots\n", "\n".join(f"![{name}]({path})" for name, path in plots.items()) + "\n"])
