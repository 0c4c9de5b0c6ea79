"""The main job (Quickstart command 1, `rm-pipeline run`) timed stage by stage, with the accuracy it reached.

Runs `rm-pipeline run` on a new storage root in a child process (optionally with another environment's Python,
`--python`, where another checkout is installed: how "before" and "after" are measured one after the other on
the same machine), then reads the run's Dagster instance for each step's seconds and the report for the
held-out and benchmark accuracies with their 95% intervals. Prints one table and, with `--out`, writes JSON.

    python bench/main_job.py --out /tmp/after.json
    python bench/main_job.py --python /tmp/before-venv/bin/python --out /tmp/before.json
    python bench/main_job.py --compare /tmp/before.json /tmp/after.json
    python bench/main_job.py --config fp32.yaml --out /tmp/after-fp32.json   # `rm-pipeline run --config`
    python bench/main_job.py --avx2-only --out /tmp/after-avx2.json          # as on a CPU without AMX/AVX-512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINING_FACTS = ("train_seconds", "pairs_per_second", "steps", "duration_seconds", "precision")


AVX2_ONLY = {  # kernels held to AVX2; bench/avx2_only/sitecustomize.py hides AMX and AVX-512 BF16 from torch's probes
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "PYTHONPATH": str(Path(__file__).resolve().parent / "avx2_only"),
}


def run_main_job(python: str, home: Path, config: Path | None = None, avx2_only: bool = False) -> dict:
    env = dict(
        os.environ, RM_PIPELINE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), **(AVX2_ONLY if avx2_only else {})
    )
    command = [python, "-m", "rm_pipeline.cli", "run", *(["--config", str(config.resolve())] if config else [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    # run from the storage root's folder: a checkout as the working directory would shadow the installed code
    finished = subprocess.run(command, env=env, capture_output=True, text=True, cwd=home.parent)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode != 0:
        sys.exit(f"rm-pipeline run failed ({finished.returncode}):\n{finished.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), **read_run(home)}


def read_run(home: Path) -> dict:
    """Step seconds from the instance, training facts from the model, accuracies from the report."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        stats = instance.get_run_stats(run.run_id)
        steps = {
            step.step_key: round(step.end_time - step.start_time, 1)
            for step in sorted(instance.get_run_step_stats(run.run_id), key=lambda step: step.start_time)
        }
    model = (home / "models" / "current").resolve()
    training = json.loads((model / "training_metrics.json").read_text())
    report = json.loads(next((home / "reports").glob("*/evaluation_report.json")).read_text())["report"]
    return {
        "run_seconds": round(stats.end_time - stats.start_time, 1),
        "steps": steps,
        "training": {key: training.get(key) for key in TRAINING_FACTS},
        "held_out": report["held_out"]["accuracy_interval"],
        "benchmarks": {name: summary["accuracy_interval"] for name, summary in report["benchmarks"].items()},
    }


def show(result: dict) -> None:
    print(f"wall {result['wall_seconds']} s, CPU {result['cpu_seconds']} s, run {result['run_seconds']} s")
    for step, seconds in result["steps"].items():
        print(f"  {step:<60} {seconds:7.1f} s")
    print(f"  training: {result['training']}")
    for name, interval in {"held_out": result["held_out"], **result["benchmarks"]}.items():
        low, high = interval["low"], interval["high"]
        print(f"  {name}: {interval['estimate']:.4f} [{low:.4f}, {high:.4f}] (n={interval['n']})")


def compare(before: dict, after: dict) -> None:
    """The before/after table of BENCHMARKS.md, and whether the accuracy targets hold."""
    print("| | before | after | after / before |\n|---|---:|---:|---:|")
    for label, key in (("wall", "wall_seconds"), ("CPU", "cpu_seconds"), ("run", "run_seconds")):
        print(f"| {label} (s) | {before[key]} | {after[key]} | {after[key] / before[key]:.2f} |")
    for step in before["steps"]:
        if step in after["steps"] and before["steps"][step] >= 1:
            b, a = before["steps"][step], after["steps"][step]
            print(f"| {step} (s) | {b} | {a} | {a / b:.2f} |")
    print(f"\nspeed-up of the whole job (wall): {before['wall_seconds'] / after['wall_seconds']:.2f}x")
    held_b, held_a = before["held_out"]["estimate"], after["held_out"]["estimate"]
    print(f"held-out accuracy {held_b:.4f} -> {held_a:.4f} (change {held_a - held_b:+.4f}; target within 0.01)")
    for name, interval in before["benchmarks"].items():
        estimate = after["benchmarks"][name]["estimate"]
        inside = interval["low"] <= estimate <= interval["high"]
        print(
            f"{name}: {interval['estimate']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}] -> {estimate:.4f} "
            f"({'inside' if inside else 'OUTSIDE'} the 95% interval)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the job (default: this one)")
    parser.add_argument("--home", type=Path, help="storage root (default: a new temporary folder)")
    parser.add_argument("--config", type=Path, help="run config for the job (`rm-pipeline run --config`)")
    parser.add_argument(
        "--avx2-only",
        action="store_true",
        help="emulate a CPU without AMX or AVX-512 (bench/avx2_only/sitecustomize.py)",
    )
    parser.add_argument("--out", type=Path, help="write the result as JSON")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="compare two results")
    args = parser.parse_args()
    if args.compare:
        compare(*(json.loads(path.read_text()) for path in args.compare))
        return
    with tempfile.TemporaryDirectory(prefix="main-job-") as scratch:
        home = args.home or Path(scratch) / "home"
        code = subprocess.run(
            [args.python, "-c", "import rm_pipeline; print(rm_pipeline.__file__)"],
            capture_output=True,
            text=True,
            cwd=scratch,
        ).stdout.strip()
        config = args.config.read_text() if args.config else None
        result = {
            "code": code,
            "config": config,
            "avx2_only": args.avx2_only,
            **run_main_job(args.python, home, args.config, args.avx2_only),
        }
    show(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
