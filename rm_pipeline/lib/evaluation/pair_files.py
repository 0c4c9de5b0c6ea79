"""Labelled pair files (``rm-pipeline evaluate``, benchmark files): reading them, and one file's headline numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from rm_pipeline.lib.annotations import read_annotations
from rm_pipeline.lib.evaluation.accuracy import (
    ACCURACY_COLUMNS,
    TIE_TOLERANCE,
    pair_accuracy,
    pair_margins,
)
from rm_pipeline.lib.evaluation.calibration import calibration
from rm_pipeline.lib.evaluation.length_bias import length_audit
from rm_pipeline.lib.evaluation.rewardbench import rewardbench_accuracy
from rm_pipeline.lib.evaluation.rewardbench2 import (
    PAIR_SUFFIX,
    REWARDBENCH2_FORMAT,
    best_of_n_summary,
    is_best_of_n,
    rewardbench2_pairs,
)
from rm_pipeline.lib.evaluation.statistics import CONFIDENCE
from rm_pipeline.lib.evaluation.uncertainty import accuracy_by_uncertainty
from rm_pipeline.lib.pairs import check_pair_rules
from rm_pipeline.lib.table_files import QUARANTINE_COLUMNS, AnnotationFileError

PAIR_FILE_COLUMNS = [
    "pair_id",
    "file",
    "line",
    "row_id",
    "best_of_n",
    "prompt",
    "conversational",
    "chosen",
    "rejected",
    "domain",
    "domain_from_file",
]


def read_pair_file(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled pairs to evaluate on, and the rows that could not be used.

    Reads RewardBench's format (``prompt``, ``chosen``, ``rejected``, ``subset``), RewardBench 2's
    (``chosen`` and ``rejected`` as lists of answers, see ``is_rewardbench2``: a row becomes one pair per
    chosen and rejected answer, ``best_of_n`` True) and TRL's standard and conversational formats
    (explicit or implicit prompt), as JSONL, JSON, CSV or Parquet, with the annotation reader: a bad row is
    quarantined with file, line, field and reason, never dropped. Pairs then go through training's own
    single-pair rules (``pairs.check_pair_rules``: empty_prompt, empty_candidate, context_mismatch,
    identical_candidates), quarantined under the same reasons; one bad pair quarantines its whole row, once.
    So distinct ``line`` values of the pairs plus the quarantined rows are the file's rows. ``row_id`` is
    the row's id as written (else its line). ``domain`` is the file's ``subset`` (else its ``domain``); a
    row with neither gets the file's stem and ``domain_from_file`` True, so callers can report how many.
    Raises ``AnnotationFileError`` for a file that is not a table of pairs.
    """
    path = Path(path)
    ingested = read_annotations([path], rows_to_pairs=rewardbench2_pairs)
    best_of_n = len(ingested.batches) > 0 and ingested.batches["format"].iloc[0] == REWARDBENCH2_FORMAT
    if len(ingested.batches) and ingested.batches["format"].iloc[0] == "votes":
        raise AnnotationFileError(
            path,
            "holds annotator votes, not labelled pairs: evaluation reads prompt, chosen, rejected (and subset) columns",
        )
    votes = ingested.votes.rename(columns={"response_a": "chosen", "response_b": "rejected"})
    broken = check_pair_rules(votes)
    bad = broken.reason.notna()
    rejected = pd.DataFrame(
        {
            "file": str(path),
            "line": votes.loc[bad, "line"],
            "field": broken.field[bad],
            "reason": broken.reason[bad],
            "detail": broken.detail[bad],
            "raw": None,
        }
    )
    quarantine = pd.concat([ingested.quarantine, rejected], ignore_index=True)[QUARANTINE_COLUMNS]
    quarantine["line"] = quarantine["line"].astype("int64")
    kept = votes[~bad]
    row_id = kept["source_item_id"].astype(str)
    if best_of_n:  # a row is scored whole or not at all, and quarantined once
        quarantine = quarantine.drop_duplicates("line")
        kept = kept[~kept["line"].isin(quarantine["line"])]
        row_id = kept["source_item_id"].astype(str).str.rsplit(PAIR_SUFFIX, n=1).str[0]
    pairs = kept.assign(
        pair_id=kept["item_id"],
        file=str(path),
        row_id=row_id,
        best_of_n=best_of_n,
        domain=kept["domain"].fillna(path.stem),
        domain_from_file=kept["domain"].isna(),
    )
    return pairs[PAIR_FILE_COLUMNS].reset_index(drop=True), quarantine.sort_values("line", kind="stable").reset_index(
        drop=True
    )


def pair_file_summary(
    scored: pd.DataFrame,
    bins: int = 10,
    tie_tolerance: float = TIE_TOLERANCE,
    confidence: float = CONFIDENCE,
    temperature: float | None = None,
) -> dict:
    """The headline numbers of one scored file of pairs (``rm-pipeline evaluate``, benchmark files).

    n, correct, wrong, ties, accuracy (ties half), mean_margin, longer_wins_accuracy, length_matched_accuracy
    (and its n), ece, truncated (pairs cut to the model's length), subsets (``domain`` value -> n, accuracy);
    with RewardBench subset names also rewardbench_sections (name -> accuracy, n) and rewardbench_score; for
    a RewardBench 2 file (answer-list rows) ``best_of_n`` (``best_of_n_summary``), the accuracy that file is
    meant to be read by: the pair numbers then count every (chosen, rejected) answer pair. Every accuracy and
    score has its interval as ``<name>_interval``. With the model's fitted ``temperature`` (its calibration
    sidecar), also ``reward_temperature`` and ``calibrated_ece``: the ECE of sigmoid(margin / temperature).
    Scored by an ensemble (``chosen_uncertainty`` / ``rejected_uncertainty``): ``uncertainty``, accuracy by
    uncertainty bin (`accuracy_by_uncertainty`).
    """
    overall = pair_accuracy(scored, tie_tolerance, confidence)
    audit = length_audit(scored, tie_tolerance=tie_tolerance, confidence=confidence)
    benchmark = rewardbench_accuracy(scored.rename(columns={"domain": "subset"}), tie_tolerance, confidence)
    summary = {
        **{key: overall[key] for key in ACCURACY_COLUMNS},
        **{
            key: audit[key]
            for key in (
                "longer_wins_accuracy",
                "longer_wins_accuracy_interval",
                "length_matched_accuracy",
                "length_matched_accuracy_interval",
                "length_matched_n",
            )
        },
        "ece": calibration(pair_margins(scored), bins=bins)["ece"] if len(scored) else math.nan,
        "truncated": int(scored["truncated"].sum()) if "truncated" in scored else 0,
        "subsets": {
            row.subset: {"n": int(row.n), "accuracy": float(row.accuracy), "accuracy_interval": row.accuracy_interval}
            for row in benchmark["subsets"].itertuples()
        },
    }
    if temperature is not None and len(scored):
        summary["reward_temperature"] = temperature
        summary["calibrated_ece"] = calibration(pair_margins(scored), bins=bins, temperature=temperature)["ece"]
    if benchmark["score"] is not None:
        summary["rewardbench_sections"] = {
            row.section: {"accuracy": float(row.accuracy), "accuracy_interval": row.accuracy_interval, "n": int(row.n)}
            for row in benchmark["sections"].itertuples()
        }
        summary["rewardbench_score"] = benchmark["score"]
        summary["rewardbench_score_interval"] = benchmark["score_interval"]
    if "chosen_uncertainty" in scored:  # scored by an ensemble
        summary["uncertainty"] = accuracy_by_uncertainty(scored, confidence=confidence)
    if is_best_of_n(scored).any():
        summary["best_of_n"] = best_of_n_summary(scored, tie_tolerance, confidence)
    return summary
