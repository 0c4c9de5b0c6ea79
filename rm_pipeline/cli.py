"""`rm-pipeline`: run the asset graph headless, check annotation files, evaluate and use a reward model, open the UI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

EXIT_GATE_FAILED = 2
EXIT_BAD_INPUT = 3
EXIT_NOT_READY = 4
READINESS_CHECK = "reward_model_ready"
# Metadata too long for a one-line summary (tables and plots are left out too): for the UI.
LEFT_OUT_OF_SUMMARY = ("path", "base_model", "settings", "recommendation")
# dagster dev waits up to 60 s for its webserver, then up to 60 s for its daemon, before killing each: give it
# all of that and a margin before killing its whole group
UI_STOP_SECONDS = 150


class InputError(Exception):
    """A path, model or option the command can't use; printed as one line, exit status 3."""


def positive_int(text: str) -> int:
    value = int(text) if text.strip().lstrip("+").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    from rm_pipeline.lib.evaluation.statistics import CONFIDENCE

    parser = argparse.ArgumentParser(prog="rm-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="materialise the whole asset graph headless and summarise each stage")
    run.add_argument("--home", help="storage root (default: $RM_PIPELINE_HOME or ./.rm_pipeline_home)")
    run.add_argument("--annotations", help="folder of annotation batches (default: the bundled data/annotations)")
    run.add_argument("--base-model", help="Hugging Face id or local path (default: the bundled all-MiniLM-L6-v2)")
    run.add_argument("--eval-dir", help="evaluation folder laid out like data/eval (default: the bundled data/eval)")
    run.add_argument(
        "--reviews", help="folder of reviewed review-queue files (default: $RM_PIPELINE_REVIEWS or data/reviews)"
    )
    run.add_argument(
        "--config",
        type=Path,
        help="run config, YAML or JSON, as the UI's launchpad takes it: the settings of each stage, e.g. "
        "`ops: {reward_model: {config: {epochs: 2}}}` (default: every stage's defaults)",
    )
    run.add_argument(
        "--require-ready",
        action="store_true",
        help=f"exit with status {EXIT_NOT_READY} when the model is not ready for optimisation",
    )
    run.set_defaults(handler=_run)

    evaluate = commands.add_parser("evaluate", help="score labelled pair files with a model; print one JSON object")
    _model_arguments(evaluate)
    evaluate.add_argument(
        "--pairs",
        required=True,
        nargs="+",
        type=Path,
        help="pair files: RewardBench (prompt, chosen, rejected, subset), RewardBench 2 (chosen and rejected as "
        "lists of answers: best-of-N and Ties scores), TRL standard or conversational; JSONL, JSON, CSV or Parquet",
    )
    _scoring_arguments(evaluate)
    evaluate.add_argument(
        "--probes",
        action="store_true",
        help="also run the shortcut probes (padding, flattery, Markdown, truncation, repetition) on each file and "
        f"print their flip rates with {CONFIDENCE:.0%}% intervals",
    )
    evaluate.add_argument(
        "--probe-pairs",
        type=positive_int,
        help="pairs sampled per file for --probes (default: the probe settings' 100)",
    )
    evaluate.set_defaults(handler=_evaluate)

    score = commands.add_parser("score", help="reward and rank candidates per prompt (best-of-N, data filtering)")
    _model_arguments(score)
    score.add_argument(
        "--input",
        required=True,
        type=Path,
        help='JSONL: {"prompt": text or messages, "candidates": [text, ...], ...} per line',
    )
    score.add_argument("--output", type=Path, help="JSONL written here (default: stdout)")
    _scoring_arguments(score)
    score.set_defaults(handler=_score)

    validate = commands.add_parser("validate", help="ingest, aggregate and validate files; print counts as JSON")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("--method", help="aggregation method: dawid_skene (default) or majority_vote")
    validate.add_argument("--max-length", type=int, help="token limit of a pair under the base model's tokenizer")
    validate.set_defaults(handler=_validate)

    models = commands.add_parser("models", help="list every trained model: status, data version, accuracy, verdict")
    models.add_argument("--home", help="storage root (default: $RM_PIPELINE_HOME or ./.rm_pipeline_home)")
    models.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    models.set_defaults(handler=_models)

    lineage = commands.add_parser(
        "lineage", help="the stages and batch files a model came from; flags batch files changed on disk since"
    )
    lineage.add_argument("model", nargs="?", type=Path, help="a model directory (default: <root>/models/current)")
    lineage.add_argument("--home", help="storage root (default: $RM_PIPELINE_HOME or ./.rm_pipeline_home)")
    lineage.add_argument("--json", action="store_true", help="print one JSON object")
    lineage.set_defaults(handler=_lineage)

    dpo = commands.add_parser(
        "dpo-baseline",
        help="train a DPO policy on the split's training pairs (or a pair file): the baseline whose implicit "
        "reward the evaluation sets beside the reward model's",
    )
    dpo.add_argument(
        "--base-model", required=True, help="local causal language model (or a locally cached id); also the reference"
    )
    dpo.add_argument("--home", help="storage root whose published split is read (default: $RM_PIPELINE_HOME)")
    dpo.add_argument("--pairs", type=Path, help="a pair file to train on instead of the split's training pairs")
    dpo.add_argument(
        "--output",
        type=Path,
        help="policy folder (default: <storage root>/dpo-policies/dpo-<time>; models/ holds reward models)",
    )
    for name, kind in (("beta", float), ("learning-rate", float), ("epochs", float), ("max-steps", int)):
        dpo.add_argument(f"--{name}", type=kind, help=_setting_help("DpoSettings", name.replace("-", "_")))
    for name in ("batch-size", "max-length"):
        dpo.add_argument(f"--{name}", type=positive_int, help=_setting_help("DpoSettings", name.replace("-", "_")))
    dpo.set_defaults(handler=_dpo_baseline)

    ui = commands.add_parser("ui", help="open the Dagster UI on this project (dagster dev)")
    ui.add_argument("--home", help="storage root (default: $RM_PIPELINE_HOME or ./.rm_pipeline_home)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=_ui)

    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Exception as error:
        if not isinstance(error, _input_errors()):
            raise
        print(f"rm-pipeline {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _setting_help(settings: str, name: str) -> str:
    """A setting's help text and default, as declared in its dataclass (rm_pipeline.lib.dpo)."""
    import dataclasses

    from rm_pipeline.lib import dpo

    field = next(f for f in dataclasses.fields(getattr(dpo, settings)) if f.name == name)
    return f"{field.metadata['help']} (default: {field.default})"


def _dpo_baseline(args) -> int:
    import dataclasses

    import pandas as pd

    from rm_pipeline.lib.dpo import DpoSettings, train_dpo_policy
    from rm_pipeline.lib.evaluation.pair_files import read_pair_file
    from rm_pipeline.lib.locations import default_home

    overrides = {
        name: getattr(args, name)
        for name in ("beta", "learning_rate", "epochs", "max_steps", "batch_size", "max_length")
        if getattr(args, name) is not None
    }
    for name in ("beta", "learning_rate", "epochs"):
        if overrides.get(name, 1) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be above 0, not {overrides[name]}")
    settings = dataclasses.replace(DpoSettings(), **overrides)
    root = Path(args.home).resolve() if args.home else default_home()
    if args.pairs is not None:
        pairs, quarantine = read_pair_file(args.pairs)
        _print_quarantine(quarantine, "; not trained on")
        source = {"pairs_file": str(args.pairs.resolve())}
    else:
        split_file = root / "tables" / "preference_split.parquet"
        if not split_file.is_file():
            raise InputError(
                f"{split_file}: no published split under this storage root; run `rm-pipeline run` or give --pairs FILE"
            )
        split = pd.read_parquet(split_file)
        pairs = split[split["split"] == "train"]
        source = {"split_file": str(split_file)}
    if pairs.empty:
        raise InputError(f"{source.popitem()[1]}: no training pairs")
    output = args.output or root / "dpo-policies" / time.strftime("dpo-%Y%m%d-%H%M%S", time.gmtime())
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InputError(f"{output}: exists and is not an empty folder; give another --output")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the base model is local: nothing is downloaded
    record = train_dpo_policy(pairs, args.base_model, output, settings, source)
    print(json.dumps({"policy": str(output), **record}, indent=2, default=str))
    print(f"\ncompare it with the reward model: RM_PIPELINE_DPO_POLICY={output} rm-pipeline run", file=sys.stderr)
    return 0


def _model_arguments(command) -> None:
    command.add_argument(
        "--model", type=Path, help="a trained reward model directory (default: <storage root>/models/current)"
    )
    command.add_argument("--home", help="storage root whose current model is used without --model")


def _scoring_arguments(command) -> None:
    import typing

    from rm_pipeline.lib.precision import SCORING_PRECISION_HELP, Precision

    command.add_argument(
        "--batch-size", type=positive_int, help="sequences per forward pass (default: the scoring settings' 32)"
    )
    command.add_argument(
        "--precision", choices=typing.get_args(Precision), help=f"{SCORING_PRECISION_HELP} (default: auto)"
    )


def _model_dir(args) -> Path:
    """--model, else the storage root's current model (the last one promoted)."""
    from rm_pipeline.lib.locations import default_home
    from rm_pipeline.lib.model_registry import CURRENT

    if args.model is not None:
        return args.model
    current = (Path(args.home).resolve() if args.home else default_home()) / "models" / CURRENT
    if not current.is_dir():
        raise InputError(
            f"{current}: no current model (none promoted yet under this storage root); "
            "run `rm-pipeline run` or give --model DIR"
        )
    return current


def _input_errors() -> tuple[type[Exception], ...]:
    """What bad input raises: exit status 3 with its message, never a traceback."""
    from rm_pipeline.lib.dpo import DpoInputError
    from rm_pipeline.lib.scoring import CandidateFileError
    from rm_pipeline.lib.table_files import AnnotationFileError

    return InputError, AnnotationFileError, CandidateFileError, DpoInputError


def _use_home(home: str | None) -> Path:
    """Pin the storage root and the Dagster instance beneath it, so the UI sees headless runs."""
    from rm_pipeline.lib.locations import default_home

    root = Path(home).resolve() if home else default_home()
    os.environ["RM_PIPELINE_HOME"] = str(root)
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(root / "dagster")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    settings = dagster_home / "dagster.yaml"
    if not settings.exists():  # no telemetry calls: the pipeline runs without a network
        settings.write_text("telemetry:\n  enabled: false\n")
    return root


def _run(args) -> int:
    home = _use_home(args.home)
    import uuid

    import dagster as dg

    from rm_pipeline.definitions import build_defs, reward_pipeline_job
    from rm_pipeline.lib.storage_lock import StorageInUse, hold_storage
    from rm_pipeline.publishing import fail_abandoned_run, gate_not_passed

    defs = build_defs(str(home), args.annotations, args.base_model, args.eval_dir, reviews_dir=args.reviews)
    job = defs.resolve_job_def(reward_pipeline_job.name)
    run_config = _run_config(job, args.config) if args.config else None
    run_id = str(uuid.uuid4())  # known before the run starts, so the lock names it from the first moment
    try:
        with hold_storage(home, run_id=run_id) as previous, dg.DagsterInstance.get() as instance:
            abandoned = fail_abandoned_run(instance, previous, home)
            if abandoned is not None:
                print(
                    f"run {abandoned.run_id} was still marked {abandoned.status.value}, but its process is gone: "
                    f"reported it failed"
                )
            result = job.execute_in_process(
                run_config=run_config, instance=instance, raise_on_error=False, run_id=run_id
            )
    except StorageInUse as error:
        print(f"rm-pipeline run: {error}", file=sys.stderr)
        return 1
    evaluations = result.get_asset_check_evaluations()
    # A check fails its step, and the run, only at ERROR severity: the readiness verdict does so only when strict.
    stopped_by = [e for e in evaluations if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    crashes = [  # a failed blocking check fails its step too: that step is reported by the check's name
        event
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.error.cls_name != "DagsterAssetCheckFailedError"
    ]
    # An upstream table whose gate failed in an earlier run stops this one as surely as a gate of its own.
    unpassed = [event for event in crashes if gate_not_passed(event.step_failure_data.error)]
    print(f"run {result.run_id} ({'succeeded' if result.success else 'failed'}); storage: {home}")
    readiness = None
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        print(f"  {materialization.asset_key.to_user_string()}: {_summary(materialization.metadata)}")
        if materialization.asset_key.to_user_string() == "reward_readiness":
            readiness = materialization.metadata
    for evaluation in evaluations:
        outcome = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        print(f"  gate {evaluation.check_name}: {outcome}")
    for evaluation in stopped_by:
        explanation = evaluation.metadata.get("failures") or evaluation.metadata.get("reasons")
        print(
            f"\n{evaluation.check_name} stopped the run:\n{explanation.value if explanation else ''}", file=sys.stderr
        )
    for event in crashes:
        print(f"\nstep {event.step_key} failed: {_cause(event.step_failure_data.error)}", file=sys.stderr)
    if readiness is not None:
        _print_verdict(Path(readiness["readiness_file"].value))
    not_ready = readiness is not None and not readiness["optimize_against_reward"].value
    if any(e.check_name != READINESS_CHECK for e in stopped_by) or unpassed:
        return EXIT_GATE_FAILED
    if crashes:
        return 1
    # Not ready is a result: a distinct status only when it was required (--require-ready, or strict).
    required = args.require_ready or any(e.check_name == READINESS_CHECK for e in stopped_by)
    return EXIT_NOT_READY if not_ready and required else 0


def _cause(error) -> str:
    """The first line of what went wrong: the gate that did not pass, or the error inside Dagster's wrapper."""
    from rm_pipeline.publishing import gate_not_passed

    error = gate_not_passed(error) or error
    while error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
        error = error.cause
    return error.message.strip().splitlines()[0]


def _print_verdict(readiness_file: Path) -> None:
    verdict = json.loads(readiness_file.read_text())
    ready = verdict["optimize_against_reward"]
    print(
        f"\nverdict: {'READY' if ready else 'NOT READY'} for optimisation "
        f"(optimize_against_reward: {str(ready).lower()})"
    )
    for check in verdict["checks"]:
        print(f"  {'pass' if check['passed'] else 'FAIL'} {check['check']}: {check['reason']}")
    print(
        f"\n{verdict['recommendation']}\n\nmodel:     {verdict['model_path']}\nreport:    {verdict['report']}"
        f"\nreadiness: {readiness_file}"
    )


def _summary(metadata: dict) -> str:
    """The plain numbers and small dicts of an asset's metadata, on one line."""
    import dagster as dg

    parts = []
    for key, value in metadata.items():
        raw = getattr(value, "value", value)
        if isinstance(value, dg.MarkdownMetadataValue) or key in LEFT_OUT_OF_SUMMARY:
            continue
        if key == "dagster/row_count":
            parts.insert(0, f"{raw} rows")
        elif isinstance(raw, (int, float, str)):
            parts.append(f"{key}={raw}")
        elif isinstance(raw, dict):
            parts.append(f"{key}={json.dumps(raw)}")
        elif hasattr(raw, "records") and all("count" in r.data for r in raw.records):  # a counts table
            parts.append(f"{key}={json.dumps({r.data[next(iter(r.data))]: r.data['count'] for r in raw.records})}")
    return ", ".join(parts)


def _validate(args) -> int:
    from dataclasses import asdict, replace
    from functools import partial
    from typing import get_args

    from rm_pipeline.lib.aggregation import (
        AggregationMethod,
        AggregationSettings,
        ReviewThresholds,
        aggregate_votes,
        review_queue,
    )
    from rm_pipeline.lib.annotations import read_annotations
    from rm_pipeline.lib.locations import default_base_model_name
    from rm_pipeline.lib.pairs import PairSettings, build_pairs, rejection_counts
    from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH, load_tokenizer, token_lengths

    aggregation = AggregationSettings()
    if args.method and args.method not in get_args(AggregationMethod):
        raise InputError(f"--method {args.method!r}: use one of {', '.join(get_args(AggregationMethod))}")
    ingested = read_annotations(args.files)
    _print_quarantine(ingested.quarantine)
    comparisons = aggregate_votes(
        ingested.votes, **asdict(replace(aggregation, method=args.method or aggregation.method))
    ).comparisons
    queue = review_queue(comparisons, **asdict(ReviewThresholds()))
    count_tokens = partial(token_lengths, load_tokenizer(default_base_model_name()))
    kept, rejected = build_pairs(
        comparisons,
        queue["item_id"],
        count_tokens,
        args.max_length or DEFAULT_MAX_LENGTH,
        PairSettings().include_disputed,
    )
    print(
        json.dumps(
            {
                "rows_read": ingested.rows_read,  # = votes + quarantined
                "votes": len(ingested.votes),
                "quarantined": {k: int(v) for k, v in ingested.quarantine["reason"].value_counts().items()},
                "comparisons": len(comparisons),
                "pairs_kept": len(kept),
                "pairs_rejected": rejection_counts(rejected),
                "review_queue": len(queue),
            },
            indent=2,
        )
    )
    return 0


def _evaluate(args) -> int:
    from rm_pipeline.lib.evaluation.pair_files import pair_file_summary, read_pair_file
    from rm_pipeline.lib.evaluation.report import jsonable
    from rm_pipeline.lib.table_files import AnnotationFileError

    scorer = _load_scorer(_model_dir(args), args.batch_size, args.precision)
    results, failed = {}, False
    for path in args.pairs:  # a bad file is named and skipped: the others' results still count
        try:
            pairs, quarantine = read_pair_file(path)
        except AnnotationFileError as error:
            print(f"rm-pipeline evaluate: {error}", file=sys.stderr)
            results[str(path)], failed = {"error": str(error)}, True
            continue
        _print_quarantine(quarantine, "; not scored")
        if pairs.empty:
            print(
                f"rm-pipeline evaluate: {path}: no usable pairs (all {len(quarantine)} rows quarantined)",
                file=sys.stderr,
            )
            results[str(path)] = {"n": 0, "quarantined": len(quarantine), "error": "no usable pairs"}
            failed = True
            continue
        with _progress(2 * len(pairs), f"scoring {path.name}") as bar:
            scored = scorer.score_pairs(pairs, progress=bar.update)
        rows = pairs.drop_duplicates("line")  # a RewardBench 2 row is several pairs
        results[str(path)] = {
            **pair_file_summary(scored),
            "rows": len(rows),  # rows + quarantined = the file's rows
            "quarantined": len(quarantine),
            "rows_without_subset": int(rows["domain_from_file"].sum()),
        }
        if args.probes:
            results[str(path)]["probes"] = _probe_flip_rates(scorer, scored, args.probe_pairs, path)
    print(json.dumps(jsonable(results), indent=2))
    return EXIT_BAD_INPUT if failed else 0


def _probe_flip_rates(scorer, scored, probe_pairs: int | None, path: Path) -> dict:
    """The shortcut probes' flip rates on one scored file; only the perturbed answers are scored again.
    Pairs are keyed by their row, so ids repeated within a file can't mix two pairs up."""
    from rm_pipeline.lib.evaluation.probes import ProbeSettings, flip_rates, probe_answers

    settings = ProbeSettings(probe_pairs=probe_pairs or ProbeSettings.probe_pairs)
    keyed = scored.assign(pair_id=range(len(scored)))  # no prompt ids in a file: intervals group by prompt text
    answers = probe_answers(keyed, settings)
    with _progress(len(answers), f"probing {path.name}") as bar:
        rewards = scorer.score(answers["prompt"], answers["response"], answers["conversational"], progress=bar.update)
    section = flip_rates(keyed, answers.assign(reward=rewards["reward"].to_numpy()))
    return {
        "sampled_pairs": section["sampled_pairs"],
        "confidence": section["confidence"],
        "worst_probe": section["worst"]["probe"] if section["worst"] else None,
        "flip_rates": {row["probe"]: {k: v for k, v in row.items() if k != "probe"} for row in section["table"]},
    }


def _models(args) -> int:
    from rm_pipeline.lib.locations import default_home
    from rm_pipeline.lib.model_registry import format_models, list_models

    root = Path(args.home).resolve() if args.home else default_home()
    rows = list_models(root / "models", root / "reports")
    print(json.dumps(rows, indent=2) if args.json else format_models(rows))
    return 0


def _print_quarantine(quarantine, suffix: str = "") -> None:
    """Each quarantined row on stderr as ``file:line: field: reason (detail)`` (no field: the whole line)."""
    for row in quarantine.itertuples():
        field = f"{row.field}: " if row.field else ""
        print(f"{row.file}:{row.line}: {field}{row.reason} ({row.detail}){suffix}", file=sys.stderr)


def _score(args) -> int:
    from rm_pipeline.lib.scoring import rank_candidates, read_candidates

    model = _model_dir(args)
    with _atomic_output(args.output) as output:  # an output that can't be written fails before any scoring
        records = read_candidates(args.input)
        scorer = _load_scorer(model, args.batch_size, args.precision)
        with _progress(sum(len(record["candidates"]) for record in records), "scoring candidates") as bar:
            ranked = rank_candidates(scorer, records, progress=bar.update)
        for record in ranked:
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


@contextmanager
def _atomic_output(path: Path | None):
    """stdout, or a temporary file beside ``path`` that replaces it only once everything is written:
    a failed run leaves the old file (which may be the input) untouched."""
    if path is None:
        yield sys.stdout
        return
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a file to write")
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise InputError(f"{path}: can't be written: {error.strerror}") from error
    partial = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            yield output
        # mkstemp makes the file private: give it the mode the old file had, or that a new one would get
        partial.chmod(path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _load_scorer(model: Path, batch_size: int | None, precision: str | None):
    from rm_pipeline.lib.scoring import RewardScorer, ScoringSettings

    config = model / "config.json"
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{model}: not a model directory (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{config}: not a readable model configuration ({error})") from None
    if not isinstance(settings, dict):
        raise InputError(f"{config}: not a model configuration (a JSON object)")
    try:
        scorer = RewardScorer.load(
            model, batch_size or ScoringSettings.batch_size, precision=precision or ScoringSettings.precision
        )
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{model}: can't be loaded as a reward model ({first_line})") from None
    _warn_unless_ready(model)
    return scorer


def _warn_unless_ready(model: Path) -> None:
    """Say on stderr when the model's readiness verdict (written by reward_readiness) is missing or not ready;
    scoring goes on: the verdict is about optimising against the model, not about using its scores."""
    from rm_pipeline.lib.model_files import READINESS_FILE

    path = model / READINESS_FILE
    try:
        verdict = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"rm-pipeline: {model} has no readiness verdict (never evaluated)", file=sys.stderr)
        return
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:  # a verdict that can't be read is none
        verdict = {"reasons": [f"the verdict can't be read ({error})"]}
    if not isinstance(verdict, dict):
        verdict = {"reasons": ["the verdict is not a JSON object"]}
    if verdict.get("optimize_against_reward") is not True:
        reasons = "; ".join(map(str, verdict.get("reasons") or ["optimize_against_reward is not true"]))
        print(f"rm-pipeline: {model} is NOT READY for optimisation ({path}): {reasons}", file=sys.stderr)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _progress(total: int, description: str):
    """A progress bar on stderr, so stdout stays machine-readable."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="seq", file=sys.stderr, mininterval=1.0)


def _lineage(args) -> int:
    """Read from the instance under the storage root, not a run's: nothing is materialised."""
    _use_home(args.home)
    import dagster as dg

    from rm_pipeline.lib.lineage import lineage_report, render
    from rm_pipeline.lib.model_files import LINEAGE_FILE
    from rm_pipeline.lineage_reader import LineageNotFoundError, model_lineage

    model = _model_dir(args)
    if not model.is_dir():
        raise InputError(f"{model}: no such model directory")
    with dg.DagsterInstance.get() as instance:
        try:
            facts = model_lineage(instance, model)
        except LineageNotFoundError as error:
            raise InputError(f"{error} (instance {os.environ['DAGSTER_HOME']})") from None
    card_file, card = model / LINEAGE_FILE, None
    if card_file.is_file():
        try:
            card = json.loads(card_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{card_file}: not a readable lineage file ({error})") from None
    report = lineage_report(facts, card)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


def _ui(args) -> int:
    _use_home(args.home)
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}", flush=True)
    # Its own process group, so that whatever it leaves behind can be stopped together.
    server = subprocess.Popen(command, cwd=workspace.parent, process_group=0)
    stop_asked = []

    def forward(signum, _frame):
        # dagster dev shuts its webserver, daemon and code servers down on SIGINT or SIGTERM.
        stop_asked.append(time.monotonic())
        server.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                return server.wait(timeout=1)
            except subprocess.TimeoutExpired:
                if stop_asked and time.monotonic() - stop_asked[0] > UI_STOP_SECONDS:
                    _kill_group(server.pid)
    finally:
        _kill_group(server.pid)  # anything still running once dagster dev is gone
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_config(job, path: Path) -> dict:
    """The run config in `path`, checked against the job's config schema before anything runs."""
    import dagster as dg
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: can't be read ({error})") from None
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not YAML or JSON ({' '.join(str(error).split())})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a run config (a mapping such as `ops: {{...}}`)")
    try:
        dg.validate_run_config(job, config)
    except dg.DagsterInvalidConfigError as error:
        problems = "; ".join(problem.message for problem in error.errors)
        raise InputError(f"{path}: not a valid run config for {job.name}: {problems}") from None
    return config


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is empty
        pass


if __name__ == "__main__":
    sys.exit(main())
