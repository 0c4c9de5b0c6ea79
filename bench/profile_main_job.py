"""Where the main job's time goes: `rm-pipeline run` on a new storage root under py-spy (every process, the
training child included), samples sorted into the parts the pipeline is made of.

Each sample is one Python stack of a busy thread; a part's seconds are its samples / the sampling rate, so they
are time spent in that part, not wall time of a step (`bench/main_job.py` times the steps). The first rule that
matches a stack names its part; rules are checked top to bottom. Needs py-spy (`pip install py-spy`), which
samples from outside the processes: the job runs at full speed (one core of two is busy sampling ~1% of it).

    python bench/profile_main_job.py                  # runs the job, then prints the table
    python bench/profile_main_job.py --samples FILE   # only sorts an earlier py-spy --format raw file
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RATE = 40  # samples per second
# (part, substrings that must all appear in the stack): the first match wins
PARTS = [
    ("training: checkpoint writes", ["_save_checkpoint"]),
    ("training: loading the best checkpoint", ["_load_best_model"]),
    ("training: early-stopping evaluations", ["evaluation_loop"]),
    ("training: backward", ["training_step", "backward"]),
    ("training: forward and loss", ["training_step"]),
    ("training: optimizer step", ["_inner_training_loop", "step ("]),  # after training_step, which holds "step ("
    ("training: batches (sampler, collator)", ["_inner_training_loop"]),
    ("training: tokenization", ["pair_dataset"]),
    ("training: loading the base model", ["prepare_model"]),
    ("training: building the trainer", ["build_trainer"]),
    ("training: reward statistics (scoring the eval split)", ["reward_statistics"]),
    ("training: saving the model", ["publish ("]),
    ("evaluation: tokenization", ["reward_scores", "encode ("]),
    ("evaluation: forward", ["reward_scores", "score_ids"]),
    ("evaluation: loading the model", ["reward_scores", "load ("]),
    ("evaluation: other scoring", ["reward_scores"]),
    ("evaluation: report", ["evaluation_report"]),
    ("evaluation: readiness and promotion", ["reward_readiness"]),
    ("evaluation: readiness and promotion", ["current_reward_model"]),
    ("imports", ["_find_and_load"]),
    ("data stages", ["rm_pipeline/stages/"]),
    ("Dagster (events, storage, run)", ["dagster/"]),
]


def sort_samples(path: Path) -> collections.Counter:
    seconds = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        part = next((name for name, needles in PARTS if all(needle in stack for needle in needles)), "other")
        seconds[part] += int(count) / RATE
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, help="a py-spy --format raw file to sort instead of running the job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile-main-job-") as scratch:
        samples = args.samples or Path(scratch) / "samples.txt"
        if not args.samples:
            beside_python = Path(sys.executable).with_name("py-spy")  # a virtual environment's, not on the PATH
            py_spy = shutil.which("py-spy") or (beside_python.exists() and str(beside_python))
            py_spy = py_spy or sys.exit("py-spy is not installed: pip install py-spy")
            job = [sys.executable, "-m", "rm_pipeline.cli", "run", "--home", str(Path(scratch) / "home")]
            record = [py_spy, "record", "-r", str(RATE), "--subprocesses", "--format", "raw", "-o", str(samples)]
            subprocess.run([*record, "--", *job], check=True, stdout=subprocess.DEVNULL)
        seconds = sort_samples(samples)
    total = sum(seconds.values())
    print("| part | seconds | share |\n|---|---:|---:|")
    for part, spent in seconds.most_common():
        print(f"| {part} | {spent:.1f} | {spent / total:.0%} |")
    print(f"| **all sampled** | **{total:.1f}** | |")


if __name__ == "__main__":
    main()
