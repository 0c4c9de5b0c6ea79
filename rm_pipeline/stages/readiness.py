"""Stage 6c: the readiness verdict, `optimize_against_reward` check by check, written beside the model."""

import json

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import EVALUATION_GROUP as GROUP
from rm_pipeline.asset_outputs import OWNERS, report_of
from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.lib.asset_values import MODEL_PATH, READINESS_CHECK, READY, EvaluationReport, PublishedModel
from rm_pipeline.lib.evaluation.readiness import ReadinessThresholds, readiness, split_overlap
from rm_pipeline.lib.evaluation.report import write_report
from rm_pipeline.lib.model_files import READINESS_FILE, write_atomically

ReadinessConfig = config_class(ReadinessThresholds, "ReadinessConfig")


@dg.asset(
    group_name=GROUP,
    kinds={"json"},
    code_version="2",
    owners=OWNERS,
    io_manager_key="value_io_manager",
    check_specs=[
        dg.AssetCheckSpec(
            READINESS_CHECK,
            asset="reward_readiness",
            blocking=True,
            description="Fails unless every readiness check passes. A not-ready model is a verdict: the check "
            "fails at WARN severity and the run succeeds; under the `strict` setting it fails at ERROR severity, "
            "failing the run and blocking anything downstream.",
        )
    ],
)
def reward_readiness(
    context: dg.AssetExecutionContext,
    config: ReadinessConfig,
    reward_model: PublishedModel,
    evaluation_report: EvaluationReport,
    dpo_comparison: dict,
    preference_split: pd.DataFrame,
):
    """`optimize_against_reward`, check by check, written beside the model as `readiness.json` and added to
    the evaluation report. Its value is the verdict."""
    document = report_of(reward_model, evaluation_report)
    model_dir = reward_model.directory
    verdict = readiness(
        document["report"],
        split_overlap(preference_split),
        settings_from_config(ReadinessThresholds, config),
        dpo_comparison if dpo_comparison.get("status") == "compared" else None,
    )
    verdict = {**verdict, MODEL_PATH: str(model_dir), "report": evaluation_report.markdown_path}
    write_atomically(model_dir / READINESS_FILE, json.dumps(verdict, indent=2))
    _, markdown_path = write_report(evaluation_report.folder, {**document, "readiness": verdict})
    ready = verdict[READY]
    context.log.info(
        f"{model_dir.name}: {'ready' if ready else 'NOT ready'}"
        + "".join(f"\n- {reason}" for reason in verdict["reasons"])
    )
    checks = dg.MetadataValue.md(
        "\n".join(f"- {'pass' if c['passed'] else 'FAIL'} `{c['check']}`: {c['reason']}" for c in verdict["checks"])
    )
    yield dg.Output(
        verdict,
        metadata={
            READY: ready,
            "checks": checks,
            "recommendation": verdict["recommendation"],
            "readiness_file": dg.MetadataValue.path(str(model_dir / READINESS_FILE)),
            "report": dg.MetadataValue.path(str(markdown_path)),
            MODEL_PATH: dg.MetadataValue.path(str(model_dir)),
        },
    )
    failed = len(verdict["reasons"])
    yield dg.AssetCheckResult(
        check_name=READINESS_CHECK,
        passed=ready,
        # The verdict in words, where the UI shows a check first: a not-ready model is a verdict, not an error.
        description=f"{model_dir.name}: ready"
        if ready
        else f"{model_dir.name}: NOT READY, {failed} of {len(verdict['checks'])} checks failed: "
        + "; ".join(verdict["reasons"]),
        # Dagster fails the step and stops what follows only for a blocking check failed at ERROR.
        severity=dg.AssetCheckSeverity.ERROR if config.strict else dg.AssetCheckSeverity.WARN,
        metadata={
            "failed_checks": failed,
            "reasons": dg.MetadataValue.md("\n".join(f"- {reason}" for reason in verdict["reasons"]) or "none"),
        },
    )
