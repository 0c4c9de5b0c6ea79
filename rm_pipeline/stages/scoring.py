"""Stage 6a: the evidence scored by the trained model: held-out pairs and their shortcut probes, benchmark files,
fresh policy outputs and rankings."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from rm_pipeline.asset_outputs import EVALUATION_GROUP as GROUP
from rm_pipeline.asset_outputs import OWNERS, counts_table, log_skipped, preview, records_table, table_output
from rm_pipeline.config import config_class, settings_from_config
from rm_pipeline.lib.asset_values import LENGTH_CALIBRATED, MODEL_PATH, SCORED_BY, SCORED_IN, PublishedModel
from rm_pipeline.lib.batch_folder import SKIPPED_COLUMNS
from rm_pipeline.lib.evaluation.inputs import file_pairs_to_score, responses_to_score, split_pairs_to_score
from rm_pipeline.lib.evaluation.probes import PROBE_NAMES, SOURCE_PREFIX, ProbeSettings, probe_answers
from rm_pipeline.lib.scoring import RewardScorer, ScoringSettings
from rm_pipeline.resources import EvaluationSource

ScoringConfig = config_class(ScoringSettings, "ScoringConfig")

ProbeConfig = config_class(ProbeSettings, "ProbeConfig")


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
    return table_output(
        answers,
        metadata={
            "probed_pairs": pairs,
            "answers_by_probe": counts_table({name: int(counts.get(name, 0)) for name in PROBE_NAMES}, key="probe"),
            "examples": preview(examples, ["source", "candidate", "response"]),
        },
    )


@dg.multi_asset(
    group_name=GROUP,
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
    reward_model: PublishedModel,
    preference_split: pd.DataFrame,
    review_queue: pd.DataFrame,
    shortcut_probes: pd.DataFrame,
):
    """Score with the trained model, batched and length-sorted, without gradients; each row says which model
    scored it, in which precision."""
    model_dir = reward_model.directory
    folder = evaluation_source.folder()
    fresh, fresh_quarantine = file_pairs_to_score(folder.fresh_policy_files(), "fresh_policy")
    benchmarks, benchmark_quarantine = file_pairs_to_score(folder.benchmark_files(), "benchmark")
    pairs = pd.concat([split_pairs_to_score(preference_split, review_queue), fresh, benchmarks], ignore_index=True)
    responses = pd.concat([responses_to_score(folder), shortcut_probes], ignore_index=True)
    quarantine = pd.concat([fresh_quarantine, benchmark_quarantine], ignore_index=True)
    for row in quarantine.itertuples():
        context.log.warning(f"{row.file}:{row.line}: {row.field}: {row.reason} ({row.detail}); not scored")
    skipped = folder.skipped_files()
    log_skipped(context.log, skipped)

    scorer = RewardScorer.load(
        model_dir, config.batch_size, precision=config.precision, length_calibration=config.length_calibration
    )
    sequences = 2 * len(pairs) + len(responses)
    progress = _progress_log(context, sequences)
    started = time.perf_counter()
    pair_scores = scorer.score_pairs(pairs, progress)
    answers = scorer.score(responses["prompt"], responses["response"], responses["conversational"], progress=progress)
    precision = "bf16" if scorer.bf16 else "fp32"  # as `precision` resolved on this machine
    provenance = {SCORED_BY: model_dir.name, SCORED_IN: precision, LENGTH_CALIBRATED: config.length_calibration}
    pair_scores = pair_scores.assign(**provenance)
    response_scores = responses.assign(
        reward=answers["reward"].to_numpy(),
        tokens=answers["tokens"].to_numpy(),
        truncated=answers["truncated"].to_numpy(),
        **({"uncertainty": answers["uncertainty"].to_numpy()} if "uncertainty" in answers else {}),  # an ensemble's
        **provenance,
    )
    seconds = time.perf_counter() - started
    context.log.info(
        f"scored {len(pair_scores)} pairs and {len(response_scores)} answers with {model_dir.name} in {seconds:.1f} s"
    )
    common = {
        MODEL_PATH: dg.MetadataValue.path(str(model_dir)),
        "sequences_per_s": round(sequences / seconds, 1),
        "precision": precision,
    }
    yield table_output(
        pair_scores,
        output_name="reward_scores",
        metadata={
            **common,
            "pairs_by_source": counts_table(pair_scores["source"].value_counts().to_dict(), key="source"),
            "truncated_pairs": int(pair_scores["truncated"].sum()),
            "rows_quarantined": len(quarantine),
            "evaluation_files_skipped": records_table(skipped, SKIPPED_COLUMNS),
            "quarantined": counts_table(
                {
                    f"{Path(file).name}: {reason}": n
                    for (file, reason), n in quarantine.groupby(["file", "reason"]).size().items()
                },
                key="file: reason",
            ),
        },
    )
    yield table_output(
        response_scores,
        output_name="response_scores",
        metadata={
            **common,
            "answers_by_source": counts_table(response_scores["source"].value_counts().to_dict(), key="source"),
        },
    )
