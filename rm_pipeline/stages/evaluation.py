"""Stage 6: score the evidence, report how the reward model generalises, and decide whether it is ready."""

import json
import time
from pathlib import Path

import dagster as dg
import pandas as pd

from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.lib.dpo import COMPARISON_FILE as DPO_COMPARISON_FILE
from rm_pipeline.lib.evaluation.accuracy import pair_credit
from rm_pipeline.lib.evaluation.inputs import file_pairs_to_score, responses_to_score, split_pairs_to_score
from rm_pipeline.lib.evaluation.policies import read_leaderboard
from rm_pipeline.lib.evaluation.probes import PROBE_NAMES, SOURCE_PREFIX, ProbeSettings, probe_answers, probe_table
from rm_pipeline.lib.evaluation.readiness import ReadinessThresholds, readiness, split_overlap
from rm_pipeline.lib.evaluation.report import (
    REPORT_JSON,
    REPORT_MARKDOWN,
    ReportSettings,
    build_report,
    write_plots,
    write_report,
)
from rm_pipeline.lib.fingerprints import split_data_version, table_fingerprint
from rm_pipeline.lib.markdown import inline_png, markdown_table, with_intervals
from rm_pipeline.lib.model_files import PROMOTION_FILE, READINESS_FILE, store_in_model_config, write_atomically
from rm_pipeline.lib.model_registry import current_model_dir, switch_current
from rm_pipeline.lib.precision import Precision
from rm_pipeline.lib.promotion import PROMOTED, PromotionSettings, evidence_pairs, promotion_record
from rm_pipeline.lib.scoring import RewardScorer, ScoringSettings
from rm_pipeline.resources import EvaluationSource, PipelineStorage
from rm_pipeline.stages.metadata import OWNERS, counts_table, preview

GROUP = "evaluation"


ScoringConfig = config_class(ScoringSettings, "ScoringConfig")


EvaluationReportConfig = config_class(ReportSettings, "EvaluationReportConfig")


ReadinessConfig = config_class(ReadinessThresholds, "ReadinessConfig")


PromotionConfig = config_class(PromotionSettings, "PromotionConfig")


ProbeConfig = config_class(ProbeSettings, "ProbeConfig")


def current_model(context) -> tuple[Path, str]:
    """The model the last reward_model materialisation published (the one being evaluated) and the
    data version of the split it was trained on."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("reward_model"))
    if event is None or "model_path" not in event.asset_materialization.metadata:
        raise dg.Failure("reward_model has not been materialised: train a model before evaluating it")
    metadata = event.asset_materialization.metadata
    path = Path(metadata["model_path"].value)
    if not path.is_dir():
        raise dg.Failure(f"the last trained model {path} no longer exists: materialise reward_model again")
    return path, metadata["data_version"].value if "data_version" in metadata else ""


def scored_in(context) -> Precision:
    """The precision the last reward_scores materialisation scored in: another model compared with its scores
    is scored the same way."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("reward_scores"))
    metadata = event.asset_materialization.metadata if event else {}
    return metadata["precision"].value if "precision" in metadata else ScoringSettings.precision


def report_folder(storage: PipelineStorage, model_dir: Path) -> Path:
    return storage.directory("reports", model_dir.name)


def _progress_log(context, total: int, every: float = 0.1):
    """A progress callback that logs each tenth of the sequences scored, with an ETA."""
    started, done, next_report = time.perf_counter(), 0, every

    def progress(count: int) -> None:
        nonlocal done, next_report
        done += count
        if done >= next_report * total and done < total:
            elapsed = time.perf_counter() - started
            context.log.info(f"scored {done}/{total} sequences, ETA {elapsed * (total - done) / done:.0f} s")
            next_report = done / total + every

    return progress


# After training, like the rest of the evaluation: made in the run that evaluates a new model, from its split.
@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, code_version="1", owners=OWNERS, deps=["reward_model"])
def shortcut_probes(
    context: dg.AssetExecutionContext, config: ProbeConfig, preference_split: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Held-out pairs made worse in ways a reward model might still like (padding, flattery, Markdown on the
    rejected answer; truncation and a repeated sentence on the chosen one): the answers `reward_scores`
    scores and the report's flip rates compare (`rm_pipeline.lib.evaluation.probes`). Seeded, on a fixed sample."""
    held_out = preference_split[preference_split["split"] == "eval"]
    answers = probe_answers(held_out, settings_from_config(ProbeSettings, config))
    pairs = answers["group_id"].nunique()
    context.log.info(f"{len(answers)} probe answers from {pairs} of {len(held_out)} held-out pairs")
    counts = answers["source"].str.removeprefix(SOURCE_PREFIX).value_counts()
    examples = answers.drop_duplicates("source")
    return dg.Output(
        answers,
        data_version=dg.DataVersion(table_fingerprint(answers)),
        metadata={
            "dagster/row_count": len(answers),
            "probed_pairs": pairs,
            "answers_by_probe": counts_table({name: int(counts.get(name, 0)) for name in PROBE_NAMES}, key="probe"),
            "examples": preview(examples, ["source", "candidate", "response"]),
        },
    )


@dg.multi_asset(
    group_name=GROUP,
    deps=["reward_model"],
    can_subset=False,
    outs={
        "reward_scores": dg.AssetOut(
            kinds={"pytorch", "parquet"},
            owners=OWNERS,
            code_version="1",
            description="Every evaluation pair scored once: held-out pairs, the disagreement slice, human-labelled "
            "fresh-policy pairs and benchmark files (`source`), with both rewards and response lengths "
            "in tokens.",
        ),
        "response_scores": dg.AssetOut(
            kinds={"pytorch", "parquet"},
            owners=OWNERS,
            code_version="1",
            description="Single answers scored: fresh policy outputs (`policy_outputs`), human-ranked replies "
            "(`rankings`) and shortcut-probe answers (`probe:<name>`).",
        ),
    },
)
def reward_scores(
    context: dg.AssetExecutionContext,
    config: ScoringConfig,
    evaluation_source: EvaluationSource,
    preference_split: pd.DataFrame,
    review_queue: pd.DataFrame,
    shortcut_probes: pd.DataFrame,
):
    """Score with the current model, batched and length-sorted, without gradients."""
    model_dir, _ = current_model(context)
    folder = evaluation_source.folder()
    fresh, fresh_quarantine = file_pairs_to_score(folder.fresh_policy_files(), "fresh_policy")
    benchmarks, benchmark_quarantine = file_pairs_to_score(folder.benchmark_files(), "benchmark")
    pairs = pd.concat([split_pairs_to_score(preference_split, review_queue), fresh, benchmarks], ignore_index=True)
    responses = pd.concat([responses_to_score(folder), shortcut_probes], ignore_index=True)
    quarantine = pd.concat([fresh_quarantine, benchmark_quarantine], ignore_index=True)
    for row in quarantine.itertuples():
        context.log.warning(f"{row.file}:{row.line}: {row.field}: {row.reason} ({row.detail}); not scored")

    scorer = RewardScorer.load(model_dir, config.batch_size, precision=config.precision)
    sequences = 2 * len(pairs) + len(responses)
    progress = _progress_log(context, sequences)
    started = time.perf_counter()
    pair_scores = scorer.score_pairs(pairs, progress)
    answers = scorer.score(responses["prompt"], responses["response"], responses["conversational"], progress=progress)
    response_scores = responses.assign(
        reward=answers["reward"].to_numpy(),
        tokens=answers["tokens"].to_numpy(),
        truncated=answers["truncated"].to_numpy(),
    )
    seconds = time.perf_counter() - started
    context.log.info(
        f"scored {len(pair_scores)} pairs and {len(response_scores)} answers with {model_dir.name} in {seconds:.1f} s"
    )
    common = {
        "model_path": dg.MetadataValue.path(str(model_dir)),
        "sequences_per_s": round(sequences / seconds, 1),
        "precision": "bf16" if scorer.bf16 else "fp32",  # as `precision` resolved on this machine
    }
    yield dg.Output(
        pair_scores,
        output_name="reward_scores",
        data_version=dg.DataVersion(table_fingerprint(pair_scores)),
        metadata={
            **common,
            "dagster/row_count": len(pair_scores),
            "pairs_by_source": counts_table(pair_scores["source"].value_counts().to_dict(), key="source"),
            "truncated_pairs": int(pair_scores["truncated"].sum()),
            "rows_quarantined": len(quarantine),
            "quarantined": counts_table(
                {
                    f"{Path(file).name}: {reason}": n
                    for (file, reason), n in quarantine.groupby(["file", "reason"]).size().items()
                },
                key="file: reason",
            ),
        },
    )
    yield dg.Output(
        response_scores,
        output_name="response_scores",
        data_version=dg.DataVersion(table_fingerprint(response_scores)),
        metadata={
            **common,
            "dagster/row_count": len(response_scores),
            "answers_by_source": counts_table(response_scores["source"].value_counts().to_dict(), key="source"),
        },
    )


@dg.asset(group_name=GROUP, kinds={"markdown", "json"}, code_version="1", owners=OWNERS)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    storage: PipelineStorage,
    evaluation_source: EvaluationSource,
    reward_scores: pd.DataFrame,
    response_scores: pd.DataFrame,
    preference_split: pd.DataFrame,
) -> dg.MaterializeResult:
    """Held-out accuracy, per-domain and spillover, the disagreement slice, a length-bias audit, calibration,
    fresh policy outputs, K-way rankings and benchmark files: Markdown and JSON under `reports/<model>/`.
    The temperature fitted on the held-out pairs is stored in the model's config as `reward_temperature`."""
    model_dir, trained_on = current_model(context)
    split_version = split_data_version(preference_split)
    if trained_on != split_version:
        context.log.warning(
            f"{model_dir.name} was trained on split {trained_on}, the split is now {split_version}: "
            "its held-out numbers are for pairs it may have seen; retrain it"
        )
    try:
        leaderboard = read_leaderboard(
            evaluation_source.folder().root / config.leaderboard_file, config.leaderboard_column
        )
    except ValueError as error:
        raise dg.Failure(str(error)) from None
    train_domains = preference_split.loc[preference_split["split"] == "train", "domain"].unique()
    try:
        report = build_report(
            reward_scores, response_scores, train_domains, leaderboard, settings_from_config(ReportSettings, config)
        )
    except ValueError as error:  # probe answers of pairs no longer held out: shortcut_probes is stale
        raise dg.Failure(f"{error}; materialise shortcut_probes and reward_scores again") from None
    temperature = report["calibration"].get("temperature_fit", {}).get("temperature")
    if temperature is not None:
        store_in_model_config(model_dir, {"reward_temperature": temperature})

    folder = report_folder(storage, model_dir)
    plots = write_plots(reward_scores, response_scores, report, folder)
    facts = {
        "model_name": model_dir.name,
        "model_path": str(model_dir),
        "trained_on_split": trained_on,
        "evaluated_split": split_version,
        "evaluation_folder": str(evaluation_source.directory),
    }
    json_path, markdown_path = write_report(
        folder, {"facts": facts, "plots": {k: p.name for k, p in plots.items()}, "report": report}
    )
    held, length, calibration = report["held_out"], report["length"], report["calibration"]
    # Each number shown in the UI with its interval beside it, as `<name>_interval`.
    numbers = {
        "held_out_accuracy": (held, "accuracy"),
        "spillover_accuracy": (report["domains"]["spillover"] or {}, "accuracy"),
        "disagreement_accuracy": (report["disagreement"], "accuracy"),
        "length_spearman": (length, "spearman_rho"),
        "longer_wins_accuracy": (length, "longer_wins_accuracy"),
        "length_matched_accuracy": (length, "length_matched_accuracy"),
        "policy_leaderboard_spearman": (report["policies"].get("leaderboard", {}), "spearman_rho"),
        "top1_agreement": (report["rankings"], "top1_agreement"),
    }
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.path(str(markdown_path)),
            "report_json": dg.MetadataValue.path(str(json_path)),
            "model_path": dg.MetadataValue.path(str(model_dir)),
            **{name: result.get(key) for name, (result, key) in numbers.items()},
            **{
                f"{name}_interval": dg.MetadataValue.json(result.get(f"{key}_interval") or {})
                for name, (result, key) in numbers.items()
            },
            "held_out_pairs": held["n"],
            "held_out_ties": held["ties"],
            "held_out_tie_pairs": dg.MetadataValue.json(report["held_out_tie_pairs"]),  # tie_handling soft
            "length_matched_pairs": length["length_matched_n"],
            "ece": calibration.get("ece"),
            "temperature": temperature,
            "worst_probe_flip_rate": (report["probes"]["worst"] or {}).get("flip_rate"),
            "shortcut_probes": dg.MetadataValue.md(probe_table(report["probes"])),
            "benchmarks": dg.MetadataValue.json(
                {name: _benchmark_headline(summary) for name, summary in report["benchmarks"].items()}
            ),
            "by_domain": dg.MetadataValue.md(
                markdown_table(
                    with_intervals(report["domains"]["table"]), ["domain", "n", "accuracy", "ties", "in_training"]
                )
            ),
            "by_agreement": dg.MetadataValue.md(
                markdown_table(
                    with_intervals(report["agreement"]), ["agreement", "n", "accuracy", "ties", "mean_margin"]
                )
            ),
            "policies": dg.MetadataValue.md(markdown_table(report["policies"].get("summary", []))),
            **{name: dg.MetadataValue.md(inline_png(path, name)) for name, path in plots.items()},
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"json"},
    code_version="1",
    owners=OWNERS,
    deps=["evaluation_report", "dpo_comparison"],
    check_specs=[
        dg.AssetCheckSpec(
            "reward_model_ready",
            asset="reward_readiness",
            blocking=True,
            description="Fails unless every readiness check passes. A not-ready model is a verdict: the check "
            "fails at WARN severity and the run succeeds; under the `strict` setting it fails at ERROR severity, "
            "failing the run and blocking anything downstream.",
        )
    ],
)
def reward_readiness(
    context: dg.AssetExecutionContext, config: ReadinessConfig, storage: PipelineStorage, preference_split: pd.DataFrame
) -> dg.MaterializeResult:
    """`optimize_against_reward`, check by check, written beside the model as `readiness.json` and added to
    the evaluation report."""
    model_dir, _ = current_model(context)
    folder = report_folder(storage, model_dir)
    if not (folder / REPORT_JSON).exists():
        raise dg.Failure(f"no evaluation report for {model_dir.name} in {folder}: materialise evaluation_report")
    document = json.loads((folder / REPORT_JSON).read_text())
    dpo_file = folder / DPO_COMPARISON_FILE  # written by dpo_comparison when a DPO policy is configured
    verdict = readiness(
        document["report"],
        split_overlap(preference_split),
        settings_from_config(ReadinessThresholds, config),
        json.loads(dpo_file.read_text()) if dpo_file.exists() else None,
    )
    write_atomically(
        model_dir / READINESS_FILE,
        json.dumps({**verdict, "model_path": str(model_dir), "report": str(folder / REPORT_MARKDOWN)}, indent=2),
    )
    _, markdown_path = write_report(folder, {**document, "readiness": verdict})
    ready = verdict["optimize_against_reward"]
    context.log.info(
        f"{model_dir.name}: {'ready' if ready else 'NOT ready'}"
        + "".join(f"\n- {reason}" for reason in verdict["reasons"])
    )
    checks = dg.MetadataValue.md(
        "\n".join(f"- {'pass' if c['passed'] else 'FAIL'} `{c['check']}`: {c['reason']}" for c in verdict["checks"])
    )
    return dg.MaterializeResult(
        metadata={
            "optimize_against_reward": ready,
            "checks": checks,
            "recommendation": verdict["recommendation"],
            "readiness_file": dg.MetadataValue.path(str(model_dir / READINESS_FILE)),
            "report": dg.MetadataValue.path(str(markdown_path)),
            "model_path": dg.MetadataValue.path(str(model_dir)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="reward_model_ready",
                passed=ready,
                # Dagster fails the step and stops what follows only for a blocking check failed at ERROR.
                severity=dg.AssetCheckSeverity.ERROR if config.strict else dg.AssetCheckSeverity.WARN,
                metadata={
                    "failed_checks": len(verdict["reasons"]),
                    "reasons": dg.MetadataValue.md("\n".join(f"- {reason}" for reason in verdict["reasons"]) or "none"),
                },
            )
        ],
    )


def _benchmark_headline(summary: dict) -> dict:
    """A benchmark file's accuracy (and, for RewardBench 2, its best-of-N accuracy and score) with intervals."""
    headline = {"n": summary["n"], "accuracy": summary["accuracy"], "accuracy_interval": summary["accuracy_interval"]}
    best = summary.get("best_of_n")
    if best:
        headline.update(
            rows=best["rows"],
            best_of_n_accuracy=best["accuracy"],
            best_of_n_accuracy_interval=best["accuracy_interval"],
            rewardbench2_score=best["rewardbench2_score"],
            rewardbench2_score_interval=best["rewardbench2_score_interval"],
        )
    return headline


def _credit(scores: pd.DataFrame):
    return pair_credit((scores["chosen_reward"] - scores["rejected_reward"]).to_numpy())


def _side_by_side(record: dict, candidate: str, current: str | None) -> str:
    """Both models' accuracies with their intervals, as a Markdown table."""

    def shown(interval: dict | None) -> str:
        if not interval:
            return "-"
        return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}] (n={interval['n']})"

    rows = [
        {
            "model": name,
            "role": role,
            "accuracy, held-out + benchmarks": shown(record[role]),
            "accuracy, held-out": shown(record["held_out"][role]),
        }
        for role, name in (("candidate", candidate), ("current", current))
        if name is not None
    ]
    return markdown_table(rows)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "json"},
    code_version="1",
    owners=OWNERS,
    # After the verdict, to record it; at WARN severity (the default) a not-ready model still gets here.
    deps=["evaluation_report", "reward_readiness"],
)
def current_reward_model(
    context: dg.AssetExecutionContext, config: PromotionConfig, storage: PipelineStorage, reward_scores: pd.DataFrame
) -> dg.MaterializeResult:
    """The model `models/current` points at (and `rm-pipeline score`/`evaluate` use by default). A newly
    trained model replaces it only when it is not significantly worse, compared pair by pair with it on
    the same held-out and benchmark pairs (paired bootstrap by prompt group, `promotion_margin`); the first
    model is promoted. The decision is written beside the candidate as `promotion.json`; a candidate that
    loses stays on disk with its reason."""
    candidate_dir, _ = current_model(context)
    models_dir = candidate_dir.parent
    current_dir = current_model_dir(models_dir)
    evidence = evidence_pairs(reward_scores)
    candidate_credit = _credit(evidence)
    precision = scored_in(context)
    if current_dir is None:
        current_credit = None
    elif current_dir == candidate_dir.resolve():  # evaluated again: it is compared with itself
        current_credit = candidate_credit
    else:
        context.log.info(f"scoring the current model {current_dir.name} on {len(evidence)} pairs in {precision}")
        current_credit = _credit(RewardScorer.load(current_dir, precision=precision).score_pairs(evidence))
    record = promotion_record(
        evidence, candidate_credit, current_credit, settings_from_config(PromotionSettings, config)
    )
    readiness_file = candidate_dir / READINESS_FILE
    verdict = json.loads(readiness_file.read_text()) if readiness_file.exists() else None
    record.update(
        candidate_model=candidate_dir.name,
        current_model=current_dir.name if current_dir else None,
        readiness={
            "file": str(readiness_file),
            "optimize_against_reward": verdict["optimize_against_reward"],
            "reasons": verdict["reasons"],
        }
        if verdict
        else None,
        scored_in=precision,
        decided_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    write_atomically(candidate_dir / PROMOTION_FILE, json.dumps(record, indent=2, default=str))
    promoted = record["status"] == PROMOTED
    if promoted:
        switch_current(models_dir, candidate_dir.name)
    now_current = candidate_dir if promoted else current_dir
    (context.log.info if promoted else context.log.warning)(
        f"{candidate_dir.name}: {record['status']} ({record['reason']}); current: {now_current.name}"
    )
    difference = record["difference"]
    return dg.MaterializeResult(
        metadata={
            "status": record["status"],
            "reason": record["reason"],
            "models": dg.MetadataValue.md(
                _side_by_side(record, candidate_dir.name, current_dir.name if current_dir else None)
            ),
            "difference": difference["estimate"] if difference else None,
            "difference_low": difference["low"] if difference else None,
            "difference_high": difference["high"] if difference else None,
            "margin": record["margin"],
            "pairs": record["pairs"],
            "prompt_groups": record["groups"],
            "optimize_against_reward": verdict["optimize_against_reward"] if verdict else None,
            "candidate_path": dg.MetadataValue.path(str(candidate_dir)),
            "model_path": dg.MetadataValue.path(str(now_current)),
            "promotion_file": dg.MetadataValue.path(str(candidate_dir / PROMOTION_FILE)),
        }
    )
