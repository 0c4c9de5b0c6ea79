"""The readiness gate: may a policy be optimised against this reward model? Check by check.

``optimize_against_reward`` is true only when every check passes; a check without evidence fails and
says which evidence is missing. Knows nothing of Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pandas as pd

from rm_pipeline.lib.asset_values import READY
from rm_pipeline.lib.evaluation.probes import HELD_OUT, worst_probe
from rm_pipeline.lib.markdown import shown
from rm_pipeline.lib.settings import check_settings, setting
from rm_pipeline.lib.split import normalised_prompt


@dataclass(frozen=True)
class ReadinessThresholds:
    min_length_matched_accuracy: float = setting(0.6, "On held-out pairs within 10% in length.", minimum=0, maximum=1)
    min_fresh_policy_accuracy: float = setting(0.6, "On human-labelled pairs of fresh outputs.", minimum=0, maximum=1)
    max_ece: float = setting(0.1, "Expected calibration error of sigmoid(margin), held out.", minimum=0, maximum=1)
    min_pairs: int = setting(30, "Fewer pairs than this are not evidence either way.", minimum=1)
    max_probe_flip_rate: float = setting(
        0.2,
        "Highest flip rate allowed on the worst shortcut probe of the held-out family (claimed authority, "
        "disclaimers, outline, truncation, repetition: changes no training option makes; "
        "rm_pipeline.lib.evaluation.probes): the share of held-out pairs the model did not rank wrong "
        "that the shortcut alone turns toward the worse answer. A model blind to the change flips near 0 and one that "
        "ignores content about 0.5; 0.2 leaves room for near-tied pairs but not for a shortcut that decides "
        "one pair in five.",
        minimum=0,
        maximum=1,
    )

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class ReadinessGate:
    """What a not-ready verdict does to the run (the verdict itself is decided in the evaluation report)."""

    strict: bool = setting(
        False,
        "A not-ready model fails the run (the reward_model_ready check at ERROR severity, blocking what follows); "
        "otherwise the run succeeds and the check shows failed at WARN severity.",
    )


def split_overlap(split: pd.DataFrame) -> dict:
    """Prompts on both sides of the split: by ``prompt_id``, and by prompt text (case and spacing
    ignored), which catches the same prompt filed under two ids by two vendors."""
    train, held_out = split[split["split"] == "train"], split[split["split"] == "eval"]
    ids = set(train["prompt_id"]) & set(held_out["prompt_id"])
    texts = set(normalised_prompt(train["prompt"])) & set(normalised_prompt(held_out["prompt"]))
    return {
        "shared_prompt_ids": len(ids),
        "shared_prompt_texts": len(texts),
        "examples": sorted(texts)[:3],
        "train_pairs": len(train),
    }


def _check(name: str, value, threshold: str, passed: bool, reason: str) -> dict:
    return {"check": name, "value": value, "threshold": threshold, "passed": bool(passed), "reason": reason}


def readiness(
    report: dict, overlap: dict, thresholds: ReadinessThresholds = ReadinessThresholds(), dpo: dict | None = None
) -> dict:
    """The verdict: ``optimize_against_reward``, every check (value, threshold, passed, reason) and a
    recommendation between an explicit reward model and DPO on the same pairs, citing ``dpo`` (a DPO policy
    compared with the model on the held-out pairs, lib/dpo.py ``compare``) when given."""
    t = thresholds
    shared = overlap["shared_prompt_ids"] + overlap["shared_prompt_texts"]
    checks = [
        _check(
            "split_has_no_prompt_overlap",
            shared,
            "== 0",
            shared == 0,
            "no prompt is on both sides of the split"
            if shared == 0
            else f"{overlap['shared_prompt_ids']} prompt ids and {overlap['shared_prompt_texts']} prompt texts are "
            f"on both sides (e.g. {overlap['examples'][:1]}): held-out accuracy overstates generalisation",
        )
    ]

    length = report["length"]
    n, accuracy = length.get("length_matched_n", 0), length.get("length_matched_accuracy")
    checks.append(
        _check(
            "length_matched_accuracy",
            accuracy,
            f">= {t.min_length_matched_accuracy} on >= {t.min_pairs} pairs",
            n >= t.min_pairs and accuracy is not None and accuracy >= t.min_length_matched_accuracy,
            f"only {n} held-out pairs have lengths within 10% of each other"
            if n < t.min_pairs
            else f"{shown(length, 'length_matched_accuracy')} on {n} length-matched pairs, where length cannot "
            "explain a win",
        )
    )

    checks.append(_fresh_policy_check(report["fresh_policy"], t))

    calibration = report["calibration"]
    n, ece = calibration.get("n", 0), calibration.get("ece")
    checks.append(
        _check(
            "calibration_error",
            ece,
            f"<= {t.max_ece} on >= {t.min_pairs} pairs",
            n >= t.min_pairs and ece is not None and ece <= t.max_ece,
            f"only {n} held-out pairs"
            if n < t.min_pairs
            else f"expected calibration error of sigmoid(margin) {ece:.3f} on {n} held-out pairs",
        )
    )

    checks.append(_probe_check(report.get("probes") or {}, t))

    ready = all(check["passed"] for check in checks)
    return {
        READY: ready,
        "checks": checks,
        "thresholds": {field.name: getattr(t, field.name) for field in fields(ReadinessThresholds)},
        "reasons": [f"{check['check']}: {check['reason']}" for check in checks if not check["passed"]],
        "recommendation": recommendation(ready, checks, overlap["train_pairs"], dpo),
    }


def _fresh_policy_check(fresh: dict, t: ReadinessThresholds) -> dict:
    """Accuracy on human-labelled pairs of the policy's own outputs, which the model never saw."""
    n, accuracy = fresh.get("n", 0), fresh.get("accuracy")
    if n == 0:
        reason = (
            "no human-labelled pairs of fresh policy outputs (unlabelled outputs such as the bundled "
            "AlpacaEval ones, ranked by an LLM judge, do not count). Label pairs of the policy's own samples "
            "and put them in `fresh-policy/` in the eval folder"
        )
    elif n < t.min_pairs:
        reason = f"only {n} human-labelled pairs of fresh policy outputs"
    else:
        reason = f"{shown(fresh, 'accuracy')} on {n} human-labelled pairs of outputs the model never saw in training"
    return _check(
        "fresh_policy_accuracy",
        accuracy,
        f">= {t.min_fresh_policy_accuracy} on >= {t.min_pairs} pairs",
        n >= t.min_pairs and accuracy is not None and accuracy >= t.min_fresh_policy_accuracy,
        reason,
    )


def _probe_check(probes: dict, t: ReadinessThresholds) -> dict:
    """The worst flip rate of the held-out probe family (the changes no training option makes: a model trained
    against the other family cannot pass by learning its wordings), on at least ``min_pairs`` counted pairs for
    every probe of that family. A report from before the families judges every probe."""
    table = [row for row in probes.get("table", []) if row.get("family", HELD_OUT) == HELD_OUT]
    worst = worst_probe(table)
    thin = [row for row in table if row["n"] < t.min_pairs]
    if not probes.get("sampled_pairs") or worst is None:
        reason = "no shortcut probes were scored: materialise shortcut_probes, then reward_scores"
    else:
        reason = (
            f"worst held-out probe `{worst['probe']}` ({worst['description']}): flip rate "
            f"{shown(worst, 'flip_rate')} on {worst['n']} pairs"
        )
        if thin:
            reason += f"; only {thin[0]['n']} pairs count for the `{thin[0]['probe']}` probe"
    return _check(
        "shortcut_probe_flip_rate",
        worst["flip_rate"] if worst else None,
        f"<= {t.max_probe_flip_rate} on >= {t.min_pairs} pairs per held-out probe",
        worst is not None and not thin and worst["flip_rate"] <= t.max_probe_flip_rate,
        reason,
    )


def verdict_in_words(model_name: str, verdict: dict) -> str:
    """One line: `<model>: ready`, or `<model>: NOT READY, 2 of 6 checks failed: <reasons>`."""
    if verdict[READY]:
        return f"{model_name}: ready"
    reasons = verdict["reasons"]
    return f"{model_name}: NOT READY, {len(reasons)} of {len(verdict['checks'])} checks failed: " + "; ".join(reasons)


def checks_in_words(verdict: dict) -> str:
    """Every check as a Markdown list item: pass or FAIL, its name and its reason."""
    return "\n".join(f"- {'pass' if c['passed'] else 'FAIL'} `{c['check']}`: {c['reason']}" for c in verdict["checks"])


def recommendation(ready: bool, checks: list[dict], train_pairs: int, dpo: dict | None = None) -> str:
    """When an explicit reward model is worth it, and when DPO on the same pairs is the simpler choice; with
    the measured DPO comparison (``dpo``) when there is one."""
    measured = f" {dpo_comparison_sentence(dpo)}" if dpo else ""
    if ready:
        return (
            "An explicit reward model is worth it here: it ranks outputs it was never trained on, so it can "
            "score fresh samples online (PPO, GRPO), rerank best-of-N and filter data. If you only ever "
            f"optimise offline on these same pairs, DPO on them is still the simpler choice.{measured}"
        )
    failed = ", ".join(check["check"] for check in checks if not check["passed"])
    return (
        f"DPO on the same {train_pairs} training pairs is the simpler choice for now: it "
        "optimises the policy on these preferences directly, with no reward model for the policy to exploit. "
        "An explicit reward model is worth it only when you need to score outputs the pairs do not cover "
        f"(online RL, best-of-N, data filtering), and this one has not yet shown it can ({failed} failed).{measured}"
    )


def dpo_comparison_sentence(dpo: dict) -> str:
    """The DPO policy's implicit reward against the reward model, with its intervals."""

    def shown(interval: dict, percent: bool = False) -> str:
        scale, unit, digits = (100, "%", 0) if percent else (1, "", 2)
        return (
            f"{interval['estimate'] * scale:.{digits}f}{unit} "
            f"[{interval['low'] * scale:.{digits}f}{unit}, {interval['high'] * scale:.{digits}f}{unit}]"
        )

    return (
        f"DPO's implicit reward: {shown(dpo['implicit_accuracy'])} against the reward model's "
        f"{shown(dpo['explicit_accuracy'])} on {dpo['n']} held-out pairs; they agree on "
        f"{shown(dpo['agreement'], percent=True)} of them (Spearman's rho of their margins "
        f"{shown(dpo['margin_spearman'])})."
    )
