"""Stage 6b: the evaluation report: how the trained model generalises, with an interval on every number."""

import json

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import EVALUATION_GROUP as GROUP
from rm_pipeline.asset_outputs import OWNERS, scored_in
from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.lib.asset_values import MODEL_PATH, READY, EvaluationReport, PublishedModel
from rm_pipeline.lib.evaluation.policies import read_leaderboard
from rm_pipeline.lib.evaluation.probes import HELD_OUT, probe_table
from rm_pipeline.lib.evaluation.readiness import checks_in_words, readiness, split_overlap, verdict_in_words
from rm_pipeline.lib.evaluation.report import (
    REPORT_MARKDOWN,
    EvaluationSettings,
    build_report,
    write_plots,
    write_report,
)
from rm_pipeline.lib.fingerprints import split_data_version
from rm_pipeline.lib.markdown import inline_png, markdown_table, with_intervals
from rm_pipeline.lib.model_files import CALIBRATION_FILE, write_atomically
from rm_pipeline.resources import EvaluationSource, PipelineStorage

EvaluationReportConfig = config_class(EvaluationSettings, "EvaluationReportConfig")


@dg.asset(
    group_name=GROUP, kinds={"markdown", "json"}, code_version="3", owners=OWNERS, io_manager_key="value_io_manager"
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationReportConfig,
    storage: PipelineStorage,
    evaluation_source: EvaluationSource,
    reward_model: PublishedModel,
    reward_scores: pd.DataFrame,
    response_scores: pd.DataFrame,
    preference_split: pd.DataFrame,
    dpo_comparison: dict,
) -> dg.Output[EvaluationReport]:
    """Held-out accuracy, per-domain and spillover, the disagreement slice, a length-bias audit, calibration,
    fresh policy outputs, K-way rankings and benchmark files, and the readiness verdict they add up to
    (`optimize_against_reward`, check by check): Markdown and JSON under `reports/<model>/`. The temperature
    fitted on the held-out pairs is written beside the model as `calibration.json`."""
    model_dir, trained_on = reward_model.directory, reward_model.split_data_version
    scored_in(reward_model, reward_scores)  # a report never pairs one model with another's scores
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
    settings = settings_from_config(EvaluationSettings, config)
    try:
        report = build_report(reward_scores, response_scores, train_domains, leaderboard, settings)
    except ValueError as error:  # probe answers of pairs no longer held out: shortcut_probes is stale
        raise dg.Failure(f"{error}; materialise shortcut_probes and reward_scores again") from None
    temperature = report["calibration"].get("temperature_fit", {}).get("temperature")
    if temperature is not None:
        write_atomically(model_dir / CALIBRATION_FILE, json.dumps({"reward_temperature": temperature}, indent=2))

    folder = storage.report_folder(model_dir.name)
    plots = write_plots(reward_scores, response_scores, report, folder)
    facts = {
        "model_name": model_dir.name,
        MODEL_PATH: str(model_dir),
        "trained_on_split": trained_on,
        "evaluated_split": split_version,
        "evaluation_folder": str(evaluation_source.directory),
    }
    compared = dpo_comparison if dpo_comparison.get("status") == "compared" else None
    verdict = {
        **readiness(report, split_overlap(preference_split), settings, compared),
        MODEL_PATH: str(model_dir),
        "report": str(folder / REPORT_MARKDOWN),
    }
    json_path, markdown_path = write_report(
        folder, {"facts": facts, "plots": {k: p.name for k, p in plots.items()}, "report": report, "readiness": verdict}
    )
    report_value = EvaluationReport(str(model_dir), str(json_path), str(markdown_path))
    metadata = {  # the verdict first: it is what a reader of this page comes for
        "verdict": verdict_in_words(model_dir.name, verdict),
        READY: verdict[READY],
        "checks": dg.MetadataValue.md(checks_in_words(verdict)),
        "recommendation": verdict["recommendation"],
        "report": dg.MetadataValue.path(str(markdown_path)),
        "report_json": dg.MetadataValue.path(str(json_path)),
        MODEL_PATH: dg.MetadataValue.path(str(model_dir)),
        "temperature": temperature,
        **_report_metadata(report),
        **{name: dg.MetadataValue.md(inline_png(path, name)) for name, path in plots.items()},
    }
    return dg.Output(report_value, metadata=metadata)


def _report_metadata(report: dict) -> dict:
    """The report's headline numbers as the UI shows them, each beside its interval (`<name>_interval`)."""
    held, length, calibration = report["held_out"], report["length"], report["calibration"]
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
    return {
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
        "worst_probe_flip_rate": (report["probes"]["worst"] or {}).get("flip_rate"),
        # the family the readiness check judges (lib/evaluation/probes.py)
        "worst_held_out_probe_flip_rate": ((report["probes"].get("worst_by_family") or {}).get(HELD_OUT) or {}).get(
            "flip_rate"
        ),
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
            markdown_table(with_intervals(report["agreement"]), ["agreement", "n", "accuracy", "ties", "mean_margin"])
        ),
        "policies": dg.MetadataValue.md(markdown_table(report["policies"].get("summary", []))),
    }


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
