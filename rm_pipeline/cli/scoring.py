"""`rm-pipeline score` and `rm-pipeline evaluate`: use a trained reward model on files."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rm_pipeline.cli.common import (
    EXIT_BAD_INPUT,
    InputError,
    model_dir,
    model_options,
    positive_int,
    print_quarantine,
    progress,
    settings_from_args,
    settings_options,
)
from rm_pipeline.lib.asset_values import READY
from rm_pipeline.lib.model_files import new_file_mode

SCORING_OPTIONS = ("batch_size", "precision")


def scoring_options() -> argparse.ArgumentParser:
    """The scoring settings' options (rm_pipeline.lib.scoring.ScoringSettings), declared once for both commands."""
    from rm_pipeline.lib.scoring import ScoringSettings

    parent = argparse.ArgumentParser(add_help=False)
    settings_options(parent, ScoringSettings, SCORING_OPTIONS, types={"batch_size": positive_int})
    help_text = ScoringSettings.__dataclass_fields__["length_calibration"].metadata["help"]
    parent.add_argument("--length-calibration", action="store_true", default=None, help=help_text)
    return parent


def add_commands(commands) -> None:
    from rm_pipeline.lib.evaluation.probes import ProbeSettings

    parents = [model_options(), scoring_options()]
    evaluate = commands.add_parser(
        "evaluate", parents=parents, help="score labelled pair files with a model; print one JSON object"
    )
    evaluate.add_argument(
        "--pairs",
        required=True,
        nargs="+",
        type=Path,
        help="pair files: RewardBench (prompt, chosen, rejected, subset), RewardBench 2 (chosen and rejected as "
        "lists of answers: best-of-N and Ties scores), TRL standard or conversational; JSONL, JSON, CSV or Parquet",
    )
    evaluate.add_argument(
        "--probes",
        action="store_true",
        help="also run the shortcut probes (both families: trained-against and held-out) on each file and "
        "print their flip rates with their confidence intervals",
    )
    settings_options(evaluate, ProbeSettings, ["probe_pairs"], types={"probe_pairs": positive_int})
    evaluate.set_defaults(handler=evaluate_files)

    score = commands.add_parser(
        "score", parents=parents, help="reward and rank candidates per prompt (best-of-N, data filtering)"
    )
    score.add_argument(
        "--input",
        required=True,
        type=Path,
        help='JSONL: {"prompt": text or messages, "candidates": [text, ...], ...} per line',
    )
    score.add_argument("--output", type=Path, help="JSONL written here (default: stdout)")
    score.set_defaults(handler=score_candidates)


def score_candidates(args: argparse.Namespace) -> int:
    from rm_pipeline.lib.evaluation.report import jsonable
    from rm_pipeline.lib.scoring import rank_candidates, read_candidates

    model = model_dir(args)
    with atomic_output(args.output) as output:  # an output that can't be written fails before any scoring
        records = read_candidates(args.input)
        scorer = load_scorer(model, args)
        with progress(sum(len(record["candidates"]) for record in records), "scoring candidates") as bar:
            ranked = rank_candidates(scorer, records, progress=bar.update)
        for record in ranked:
            # NaN and infinities (an input's extra field, a reward) are null: JSON has no such numbers
            output.write(json.dumps(jsonable(record), ensure_ascii=False, allow_nan=False) + "\n")
    return 0


def evaluate_files(args: argparse.Namespace) -> int:
    from rm_pipeline.lib.evaluation.pair_files import pair_file_summary, read_pair_file
    from rm_pipeline.lib.evaluation.probes import ProbeSettings
    from rm_pipeline.lib.evaluation.report import jsonable
    from rm_pipeline.lib.table_files import AnnotationFileError

    model = model_dir(args)
    scorer = load_scorer(model, args)
    temperature = fitted_temperature(model)
    probe_settings = settings_from_args(ProbeSettings, args, ["probe_pairs"])
    results, failed = {}, False
    for path in args.pairs:  # a bad file is named and skipped: the others' results still count
        try:
            pairs, quarantine = read_pair_file(path)
        except AnnotationFileError as error:
            print(f"rm-pipeline evaluate: {error}", file=sys.stderr)
            results[str(path)], failed = {"error": str(error)}, True
            continue
        print_quarantine(quarantine, "; not scored")
        if pairs.empty:
            print(
                f"rm-pipeline evaluate: {path}: no usable pairs (all {len(quarantine)} rows quarantined)",
                file=sys.stderr,
            )
            results[str(path)] = {"n": 0, "quarantined": len(quarantine), "error": "no usable pairs"}
            failed = True
            continue
        with progress(2 * len(pairs), f"scoring {path.name}") as bar:
            scored = scorer.score_pairs(pairs, progress=bar.update)
        rows = pairs.drop_duplicates("line")  # a RewardBench 2 row is several pairs
        results[str(path)] = {
            **pair_file_summary(scored, temperature=temperature),
            "rows": len(rows),  # rows + quarantined = the file's rows
            "quarantined": len(quarantine),
            "rows_without_subset": int(rows["domain_from_file"].sum()),
        }
        if args.probes:
            results[str(path)]["probes"] = probe_flip_rates(scorer, scored, probe_settings, path)
    print(json.dumps(jsonable(results), indent=2))
    return EXIT_BAD_INPUT if failed else 0


def probe_flip_rates(scorer, scored, settings, path: Path) -> dict:
    """The shortcut probes' flip rates on one scored file; only the perturbed answers are scored again.
    Pairs are keyed by their row, so ids repeated within a file can't mix two pairs up."""
    from rm_pipeline.lib.evaluation.probes import flip_rates, probe_answers

    keyed = scored.assign(pair_id=range(len(scored)))  # no prompt ids in a file: intervals group by prompt text
    answers = probe_answers(keyed, settings)
    with progress(len(answers), f"probing {path.name}") as bar:
        rewards = scorer.score(answers["prompt"], answers["response"], answers["conversational"], progress=bar.update)
    section = flip_rates(keyed, answers.assign(reward=rewards["reward"].to_numpy()))
    return {
        "sampled_pairs": section["sampled_pairs"],
        "confidence": section["confidence"],
        "worst_probe": section["worst"]["probe"] if section["worst"] else None,
        "worst_held_out_probe": (section["worst_by_family"]["held_out"] or {}).get("probe"),
        "flip_rates": {row["probe"]: {k: v for k, v in row.items() if k != "probe"} for row in section["table"]},
    }


@contextmanager
def atomic_output(path: Path | None):
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
        partial.chmod(path.stat().st_mode & 0o777 if path.exists() else new_file_mode())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def load_scorer(model: Path, args: argparse.Namespace):
    """The reward model in `model`, scoring with the settings the command line gives (defaults otherwise)."""
    from rm_pipeline.lib.model_files import ModelDirectoryError
    from rm_pipeline.lib.scoring import RewardScorer, ScoringSettings
    from rm_pipeline.lib.tokenization import ModelSourceError

    scoring = settings_from_args(ScoringSettings, args, [*SCORING_OPTIONS, "length_calibration"])
    try:  # the directory is checked before anything in it is loaded: one line naming what is wrong
        scorer = RewardScorer.load(
            model, scoring.batch_size, precision=scoring.precision, length_calibration=scoring.length_calibration
        )
    except (ModelDirectoryError, ModelSourceError) as error:
        raise InputError(str(error)) from None
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{model}: can't be loaded as a reward model ({first_line})") from None
    if scorer.ignored_cache:
        print(f"rm-pipeline: {scorer.ignored_cache}", file=sys.stderr)
    warn_unless_ready(model)
    return scorer


def fitted_temperature(model: Path) -> float | None:
    """The temperature evaluation fitted for the model (its calibration.json sidecar); a sidecar that can't be
    read is said on stderr and left out, as the verdict is: the scores themselves don't depend on it."""
    from rm_pipeline.lib.model_files import reward_temperature

    try:
        return reward_temperature(model)
    except ValueError as error:
        print(f"rm-pipeline: {error}; calibrated_ece left out", file=sys.stderr)
        return None


def warn_unless_ready(model: Path) -> None:
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
    if verdict.get(READY) is not True:
        reasons = "; ".join(map(str, verdict.get("reasons") or [f"{READY} is not true"]))
        print(f"rm-pipeline: {model} is NOT READY for optimisation ({path}): {reasons}", file=sys.stderr)
