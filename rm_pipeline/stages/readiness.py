"""Stage 6c: the readiness gate: the evaluation report's verdict written beside the model, and its check."""

import json

import dagster as dg

from rm_pipeline.asset_outputs import EVALUATION_GROUP as GROUP
from rm_pipeline.asset_outputs import OWNERS, report_of
from rm_pipeline.config import config_class
from rm_pipeline.lib.asset_values import MODEL_PATH, READINESS_CHECK, READY, EvaluationReport, PublishedModel
from rm_pipeline.lib.evaluation.readiness import ReadinessGate, checks_in_words, verdict_in_words
from rm_pipeline.lib.model_files import READINESS_FILE, write_atomically

ReadinessConfig = config_class(ReadinessGate, "ReadinessConfig")


@dg.asset(
    group_name=GROUP,
    kinds={"json"},
    code_version="3",
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
):
    """The evaluation report's verdict (`optimize_against_reward`, check by check) written beside the model as
    `readiness.json`, and the `reward_model_ready` check that passes only for a ready model. Its value is the
    verdict."""
    verdict = {**report_of(reward_model, evaluation_report)["readiness"], "strict": config.strict}
    model_dir = reward_model.directory
    write_atomically(model_dir / READINESS_FILE, json.dumps(verdict, indent=2))
    ready = verdict[READY]
    context.log.info(
        f"{model_dir.name}: {'ready' if ready else 'NOT ready'}"
        + "".join(f"\n- {reason}" for reason in verdict["reasons"])
    )
    yield dg.Output(
        verdict,
        metadata={
            READY: ready,
            "checks": dg.MetadataValue.md(checks_in_words(verdict)),
            "recommendation": verdict["recommendation"],
            "readiness_file": dg.MetadataValue.path(str(model_dir / READINESS_FILE)),
            "report": dg.MetadataValue.path(evaluation_report.markdown_path),
            MODEL_PATH: dg.MetadataValue.path(str(model_dir)),
        },
    )
    yield dg.AssetCheckResult(
        check_name=READINESS_CHECK,
        passed=ready,
        # The verdict in words, where the UI shows a check first: a not-ready model is a verdict, not an error.
        description=verdict_in_words(model_dir.name, verdict),
        # Dagster fails the step and stops what follows only for a blocking check failed at ERROR.
        severity=dg.AssetCheckSeverity.ERROR if config.strict else dg.AssetCheckSeverity.WARN,
        metadata={
            "failed_checks": len(verdict["reasons"]),
            "reasons": dg.MetadataValue.md("\n".join(f"- {reason}" for reason in verdict["reasons"]) or "none"),
        },
    )
