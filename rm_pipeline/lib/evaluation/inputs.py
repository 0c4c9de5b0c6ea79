"""What the evaluation scores: the held-out side of the split, the review queue's comparisons, labelled
pair files, fresh policy outputs and human-ranked replies, as rows for the scorer (columns ``SCORE_COLUMNS``
for pairs, ``RESPONSE_COLUMNS`` for single answers). Knows nothing of Dagster or of the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.batch_folder import FolderFiles, folder_files
from rm_pipeline.lib.evaluation.pair_files import read_pair_file
from rm_pipeline.lib.evaluation.policies import read_policy_outputs
from rm_pipeline.lib.evaluation.rankings import oasst_ranked_groups
from rm_pipeline.lib.pairs import build_pairs, tie_pairs
from rm_pipeline.lib.table_files import QUARANTINE_COLUMNS, SUPPORTED_SUFFIXES

SCORE_COLUMNS = [
    "source",
    "file",
    "line",
    "row_id",
    "best_of_n",
    "pair_id",
    "prompt_id",
    "domain",
    "n_votes",
    "chosen_share",
    "in_review_queue",
    "prompt",
    "conversational",
    "chosen",
    "rejected",
]
HELD_OUT_TIE = "held_out_tie"  # held-out tie pairs (tie_handling soft): no right answer, never in an accuracy
FRESH_POLICY, RANKINGS = "fresh-policy", "oasst"  # the evaluation folder's sub-folders (data/eval/README.md)
RESPONSE_COLUMNS = ["source", "group_id", "candidate", "rank", "domain", "prompt", "conversational", "response"]


@dataclass(frozen=True)
class EvaluationFolder:
    """Where each kind of evaluation evidence lives (data/eval/README.md describes the layout)."""

    root: Path
    policy_outputs: Path  # prompts.jsonl and model_outputs/<policy>.jsonl
    _listings: dict = field(default_factory=dict, compare=False, repr=False)

    def benchmark_files(self) -> list[Path]:
        return self._listing(self.root, (".jsonl",)).ready

    def fresh_policy_files(self) -> list[Path]:
        return self._listing(self.root / FRESH_POLICY).ready

    def ranking_files(self) -> list[Path]:
        return self._listing(self.root / RANKINGS, (".jsonl",)).ready

    def skipped_files(self) -> list[dict]:
        """Entries of these folders that are not read (file, reason, detail), the layout's folders aside."""
        layout = {str(self.root / name) for name in (FRESH_POLICY, RANKINGS)} | {str(self.policy_outputs)}
        listings = [self._listing(self.root, (".jsonl",)), self._listing(self.root / FRESH_POLICY)]
        listings.append(self._listing(self.root / RANKINGS, (".jsonl",)))
        return [row for listing in listings for row in listing.skipped if row["file"] not in layout]

    def _listing(self, folder: Path, suffixes: tuple[str, ...] = SUPPORTED_SUFFIXES) -> FolderFiles:
        """A folder's files by the annotation folder's rules, listed once per folder and suffixes."""
        key = (folder, suffixes)
        if key not in self._listings:
            self._listings[key] = (
                folder_files(folder, suffixes=suffixes) if folder.is_dir() else FolderFiles([], [], [])
            )
        return self._listings[key]


def split_pairs_to_score(split: pd.DataFrame, queue: pd.DataFrame) -> pd.DataFrame:
    """The held-out pairs, and the review queue's comparisons that are valid pairs outside the split.

    The queue goes through the same pair rules as training (ties, empty or identical candidates,
    duplicates are left out). Queued comparisons inside the split (``include_disputed``) keep their
    place: held out ones are flagged ``in_review_queue``, trained-on ones are never scored. Held-out tie
    pairs are scored apart, as source ``held_out_tie``.
    """
    queued = queue["item_id"]
    held_out = split[split["split"] == "eval"].assign(file=None)
    held_out["source"] = np.where(tie_pairs(held_out), HELD_OUT_TIE, "held_out")
    held_out["in_review_queue"] = held_out["pair_id"].isin(queued)
    disputed, _ = build_pairs(queue, include_disputed=True)
    disputed = disputed[~disputed["pair_id"].isin(split["pair_id"])]
    return pd.concat(
        [held_out, disputed.assign(source="disagreement", file=None, in_review_queue=True)], ignore_index=True
    ).assign(line=None, row_id=None, best_of_n=False)[SCORE_COLUMNS]


def file_pairs_to_score(files: list[Path], source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled pair files as rows to score, and their quarantined rows (file, line, field, reason)."""
    frames, quarantines = [], []
    for path in files:
        pairs, quarantine = read_pair_file(path)
        frames.append(
            pairs.assign(source=source, prompt_id=None, n_votes=np.nan, chosen_share=np.nan, in_review_queue=False)
        )
        quarantines.append(quarantine)
    if not frames:
        return pd.DataFrame(columns=SCORE_COLUMNS), pd.DataFrame(columns=QUARANTINE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[SCORE_COLUMNS], pd.concat(quarantines, ignore_index=True)


def responses_to_score(folder: EvaluationFolder) -> pd.DataFrame:
    """Fresh policy outputs and human-ranked replies as (prompt, response) rows."""
    frames = []
    if (folder.policy_outputs / "prompts.jsonl").exists():
        outputs = read_policy_outputs(folder.policy_outputs)
        frames.append(
            pd.DataFrame(
                {
                    "source": "policy_outputs",
                    "group_id": outputs["idx"].astype(str),
                    "candidate": outputs["policy"],
                    "rank": np.nan,
                    "domain": outputs["dataset"],
                    "prompt": outputs["instruction"],
                    "conversational": False,
                    "response": outputs["output"],
                }
            )
        )
    for path in folder.ranking_files():
        replies = oasst_ranked_groups(path)
        frames.append(
            pd.DataFrame(
                {
                    "source": "rankings",
                    "group_id": replies["group_id"],
                    "candidate": replies["message_id"],
                    "rank": replies["rank"].astype(float),
                    "domain": path.stem,
                    "prompt": [json.dumps(context, ensure_ascii=False) for context in replies["context"]],
                    "conversational": True,
                    "response": replies["text"],
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=RESPONSE_COLUMNS)
    return pd.concat(frames, ignore_index=True)[RESPONSE_COLUMNS]
