#!/usr/bin/env python3
"""Cut the bundled evaluation sample in ``rm_pipeline/data/eval/`` from the shared public data snapshot.

Reads the read-only snapshot (``../shared/data``, described in its SOURCES.md) and writes, under --out
(default: the package's ``rm_pipeline/data/eval/``):

* ``alpaca-eval/prompts.jsonl``                 AlpacaEval prompts, stratified: the first --per-dataset
                                                (default 20) prompts of each ``dataset`` in source order
* ``alpaca-eval/model_outputs/<policy>.jsonl``  the kept prompts' outputs of the policies in ``POLICIES``
* ``alpaca-eval/*.csv``                         both leaderboards, whole and unchanged
* ``oasst/en_100_tree.jsonl``                   the 100 OpenAssistant conversation trees, unchanged
* ``alpacaeval-easy.jsonl``                     a RewardBench-format benchmark file rebuilt with RewardBench's
                                                alpacaeval-easy recipe (GPT-4 Turbo chosen vs Alpaca 7B
                                                rejected) on the kept prompts, without its manual filtering

Deterministic: no randomness. Prompt and output lines are copied byte for byte in source order; a line
is kept when its parsed ``idx`` is in the kept set, so a policy that skipped a prompt just has no line
for it. ``alpacaeval-easy.jsonl`` has one line per kept prompt (source order) that both policies
answered, written with ``json.dumps(..., ensure_ascii=False)`` in UTF-8. Regenerate with
``python scripts/sample_eval_data.py``. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = REPO_ROOT / "rm_pipeline" / "data" / "eval"

# The length probe (one policy told to be concise / verbose) plus three policies that appear in both
# leaderboards and span them from top to bottom.
POLICIES = (
    "alpaca-7b",
    "alpaca-7b_concise",
    "alpaca-7b_verbose",
    "gpt4_1106_preview",
    "llama-2-70b-chat-hf",
    "falcon-7b-instruct",
)
LEADERBOARDS = ("alpaca_eval_gpt4_leaderboard.csv", "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv")
OASST_FILE = "en_100_tree.jsonl"

# RewardBench's alpacaeval-easy subset: GPT-4 Turbo (chosen) vs Alpaca 7B (rejected) on AlpacaEval prompts
# (Lambert et al. 2024, arXiv:2403.13787, Table 1; allenai/reward-bench dataset card, "Subset Summary").
EASY_SUBSET = "alpacaeval-easy"
EASY_CHOSEN = "gpt4_1106_preview"
EASY_REJECTED = "alpaca-7b"


def stratified_idx(prompts: Path, per_dataset: int) -> tuple[set[int], dict[str, int]]:
    """The ``idx`` of the first ``per_dataset`` prompts of each ``dataset``, in source order, and the counts."""
    kept: set[int] = set()
    counts: dict[str, int] = {}
    with open(prompts, "rb") as reader:
        for line in reader:
            if not line.strip():
                continue
            row = json.loads(line)
            if counts.get(row["dataset"], 0) < per_dataset:
                kept.add(row["idx"])
                counts[row["dataset"]] = counts.get(row["dataset"], 0) + 1
    return kept, counts


def copy_lines_in(source: Path, target: Path, keep: set[int]) -> int:
    """Copy the lines whose JSON ``idx`` is in ``keep``, unchanged and in order; returns how many."""
    kept = 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as reader, open(target, "wb") as writer:
        for line in reader:
            if line.strip() and json.loads(line)["idx"] in keep:
                writer.write(line)
                kept += 1
    return kept


def read_jsonl(path: Path) -> list[dict]:
    with open(path, "rb") as reader:
        return [json.loads(line) for line in reader if line.strip()]


def write_alpacaeval_easy(alpaca_eval: Path, target: Path) -> int:
    """RewardBench-format pairs from a (sampled) AlpacaEval folder: one line per prompt both policies answered."""
    chosen = {row["idx"]: row["output"] for row in read_jsonl(alpaca_eval / "model_outputs" / f"{EASY_CHOSEN}.jsonl")}
    rejected = {
        row["idx"]: row["output"] for row in read_jsonl(alpaca_eval / "model_outputs" / f"{EASY_REJECTED}.jsonl")
    }
    written = 0
    with open(target, "w", encoding="utf-8", newline="\n") as writer:
        for prompt in read_jsonl(alpaca_eval / "prompts.jsonl"):
            idx = prompt["idx"]
            if idx in chosen and idx in rejected:
                pair = {
                    "id": idx,
                    "prompt": prompt["instruction"],
                    "chosen": chosen[idx],
                    "rejected": rejected[idx],
                    "subset": EASY_SUBSET,
                }
                writer.write(json.dumps(pair, ensure_ascii=False) + "\n")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data snapshot")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the sample goes")
    parser.add_argument(
        "--per-dataset", type=int, default=20, help="keep the first N AlpacaEval prompts of each dataset (source order)"
    )
    args = parser.parse_args()

    source = args.shared / "alpaca-eval"
    target = args.out / "alpaca-eval"
    keep, per_dataset = stratified_idx(source / "prompts.jsonl", args.per_dataset)
    count = copy_lines_in(source / "prompts.jsonl", target / "prompts.jsonl", keep)
    print(f"alpaca-eval/prompts.jsonl: {count} prompts ({', '.join(f'{k} {v}' for k, v in per_dataset.items())})")
    for policy in POLICIES:
        name = f"model_outputs/{policy}.jsonl"
        print(f"alpaca-eval/{name}: {copy_lines_in(source / name, target / name, keep)} outputs")
    for name in LEADERBOARDS:
        shutil.copyfile(source / name, target / name)
        print(f"alpaca-eval/{name}: copied")
    (args.out / "oasst").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.shared / "oasst-sample" / OASST_FILE, args.out / "oasst" / OASST_FILE)
    print(f"oasst/{OASST_FILE}: copied")
    easy = args.out / f"{EASY_SUBSET}.jsonl"
    print(f"{easy.name}: {write_alpacaeval_easy(target, easy)} pairs ({EASY_CHOSEN} chosen, {EASY_REJECTED} rejected)")


if __name__ == "__main__":
    main()
