"""Training against shortcuts, measured: the main job with the default settings and with each recipe given, on
the bundled data, one after the other on this machine, and for each the held-out accuracy, the length-matched
accuracy, every shortcut probe's flip rate by family (trained-against and held-out), the RewardBench-format
evaluation files and the training time, all with 95% intervals. Prints one Markdown table per measure; with
`--out`, writes JSON. `--lever NAME` measures one of `LEVERS` (`A+B` combines them), `--read HOME` tabulates a
storage root that `rm-pipeline run` already filled, `--show FILE` tabulates earlier `--out` files side by side.

    python bench/robust_training.py --config recipes/robust.yaml --out /tmp/robust.json
    python bench/robust_training.py --no-default --lever non_contextual --lever ensemble --out /tmp/levers.json
    python bench/robust_training.py --no-default --lever non_contextual+length_calibration --out /tmp/best.json
    python bench/robust_training.py --show /tmp/robust.json --show /tmp/levers.json
    python bench/robust_training.py --read /tmp/home-default --read /tmp/home-robust
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from main_job import run_main_job  # noqa: E402  (bench/ is no package)

TRAINING_FACTS = ("train_pairs", "train_seconds", "duration_seconds", "precision")

# Each lever of issue 22 alone, as `rm-pipeline run --config` settings (asset -> config); recipes/ combine them.
LEVERS = {
    "non_contextual": {"reward_model": {"non_contextual_pairs": 1.0}},
    "non_contextual_quarter": {"reward_model": {"non_contextual_pairs": 0.25}},  # one such pair per 4 annotated
    "style_neutral": {"reward_model": {"style_neutral_pairs": 1.0}},
    "length_calibration": {"reward_scores": {"length_calibration": True}},
    "ensemble": {"reward_model": {"ensemble_members": 3, "ensemble_member_data": "seeds", "ensemble_lambda": 1.0}},
    "length_head": {"reward_model": {"length_head": True}},
    "length_head_tenth": {"reward_model": {"length_head": True, "length_correlation_weight": 0.1}},  # ODIN λ_L / 10
}
LEVER_SETTINGS = ("non_contextual_pairs", "style_neutral_pairs", "length_head", "ensemble_members")


def lever_config(name: str, folder: Path) -> Path:
    """`A+B`: the levers' settings merged into one run config file in `folder`."""
    import yaml

    ops: dict[str, dict] = {}
    for lever in name.split("+"):
        if lever not in LEVERS:
            sys.exit(f"--lever {lever}: not one of {', '.join(LEVERS)}")
        for asset, config in LEVERS[lever].items():
            ops.setdefault(asset, {"config": {}})["config"].update(config)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"ops": ops}))
    return path


def measures(home: Path) -> dict:
    """What the issue asks for, read from the storage root's current model and its report."""
    model = (home / "models" / "current").resolve()
    training = json.loads((model / "training_metrics.json").read_text())
    settings = json.loads((model / "training_settings.json").read_text())
    report = json.loads(next((home / "reports").glob("*/evaluation_report.json")).read_text())["report"]
    probes = report["probes"]
    return {
        "model": model.name,
        "levers": {key: settings.get(key) for key in LEVER_SETTINGS},
        "training": {key: training.get(key) for key in TRAINING_FACTS},
        "held_out": report["held_out"]["accuracy_interval"],
        "length_matched": report["length"]["length_matched_accuracy_interval"],
        "probes": [
            {key: row.get(key) for key in ("probe", "family", "kind", "n", "flip_rate", "flip_rate_interval")}
            for row in probes["table"]
        ],
        "benchmarks": {name: summary["accuracy_interval"] for name, summary in report["benchmarks"].items()},
    }


def quick(train_pairs: int, recipes: list[Path], scratch: Path, seed: int = 0, default: bool = True) -> dict[str, dict]:
    """Without Dagster, on a seeded sample of ``train_pairs`` train pairs (whole prompt groups) and the whole
    eval side: the default and each recipe's `reward_model` settings, trained by `train_reward_model` on the
    rows `augment` builds, then the held-out pairs and their probe answers scored by `RewardScorer`."""
    import yaml
    from training_signals import splits, subsample_train

    from rm_pipeline.lib.augmentation import augment
    from rm_pipeline.lib.evaluation.accuracy import pair_credit, pair_margins
    from rm_pipeline.lib.evaluation.length_bias import length_audit
    from rm_pipeline.lib.evaluation.probes import flip_rates, probe_answers
    from rm_pipeline.lib.evaluation.statistics import rate_interval
    from rm_pipeline.lib.scoring import RewardScorer
    from rm_pipeline.lib.tokenization import default_base_model
    from rm_pipeline.lib.training.run import train_reward_model
    from rm_pipeline.lib.training.settings import TrainingSettings

    split = subsample_train(
        splits(Path(__file__).resolve().parents[1] / "rm_pipeline/data/annotations", default_base_model())["drop"],
        train_pairs,
        seed,
    )
    held_out = split[split["split"] == "eval"]
    results = {}
    for recipe in [None, *recipes] if default else recipes:
        name = recipe.stem if recipe else "default"
        config = yaml.safe_load(recipe.read_text())["ops"]["reward_model"]["config"] if recipe else {}
        settings = TrainingSettings(base_model=default_base_model(), **config)
        rows, ledger = augment(split, settings.non_contextual_pairs, settings.style_neutral_pairs, settings.seed)
        trained = train_reward_model(rows[rows["split"] == "train"], held_out, settings, scratch / name, name)
        scorer = RewardScorer.load(trained.model_dir)
        scored = scorer.score_pairs(held_out)
        answers = probe_answers(held_out)
        probes = answers.assign(**scorer.score(answers["prompt"], answers["response"], answers["conversational"]))
        groups = scored["prompt_group"].astype(str).to_numpy()
        length = length_audit(scored)
        results[name] = {
            "augmentation": ledger,
            "training": {key: trained.metrics.get(key) for key in TRAINING_FACTS},
            "held_out": rate_interval(pair_credit(pair_margins(scored)), groups).as_dict(),
            "length_matched": {**(length["length_matched_accuracy_interval"] or {}), "n": length["length_matched_n"]},
            "probes": flip_rates(scored, probes)["table"],
            "benchmarks": {},
        }
        print(name, json.dumps(results[name]["held_out"]), flush=True)
    return results


def interval(value: dict | None) -> str:
    if not value or value.get("estimate") is None:
        return "n/a"
    return f"{value['estimate']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def show(results: dict[str, dict]) -> None:
    names = list(results)
    print("| measure | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    first = results[names[0]]
    rows = [
        ("held-out accuracy", lambda r: interval(r["held_out"])),
        ("length-matched accuracy", lambda r: interval(r["length_matched"])),
        *(
            (
                f"flip rate `{row['probe']}` ({row['family']})",
                lambda r, name=row["probe"]: next(
                    (interval(p["flip_rate_interval"]) for p in r["probes"] if p["probe"] == name), "n/a"
                ),
            )
            for row in first["probes"]
        ),
        *(
            (f"accuracy {name}", lambda r, name=name: interval(r["benchmarks"].get(name)))
            for name in first["benchmarks"]
        ),
        ("train rows", lambda r: str(r["training"]["train_pairs"])),
        ("train seconds", lambda r: str(r["training"]["train_seconds"])),
        ("whole run: wall / CPU seconds", lambda r: f"{r.get('wall_seconds', 'n/a')} / {r.get('cpu_seconds', 'n/a')}"),
    ]
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(results[name]) for name in names) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", default=[], help="a recipe to measure (repeatable)")
    parser.add_argument("--lever", action="append", default=[], help=f"one of {', '.join(LEVERS)}; A+B combines")
    parser.add_argument("--read", type=Path, action="append", default=[], help="tabulate a filled storage root")
    parser.add_argument("--show", type=Path, action="append", default=[], help="tabulate earlier --out files")
    parser.add_argument(
        "--quick", type=int, metavar="N", help="no Dagster: N train pairs (a seeded sample of prompt groups)"
    )
    parser.add_argument("--no-default", action="store_true", help="the recipes and levers only")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    results = {}
    if args.show:
        results = {name: result for file in args.show for name, result in json.loads(file.read_text()).items()}
    elif args.read:
        results = {home.name: measures(home) for home in args.read}
    elif args.quick:
        with tempfile.TemporaryDirectory(prefix="robust-training-") as scratch:
            results = quick(args.quick, args.config, Path(scratch), default=not args.no_default)
    else:
        with tempfile.TemporaryDirectory(prefix="robust-training-") as scratch:
            configs = [*args.config, *(lever_config(name, Path(scratch)) for name in args.lever)]
            for config in configs if args.no_default else [None, *configs]:
                name = config.stem if config else "default"
                home = Path(scratch) / name
                timing = run_main_job(sys.executable, home, config)
                results[name] = {key: timing[key] for key in ("wall_seconds", "cpu_seconds")} | measures(home)
                print(name, json.dumps(results[name]["held_out"]), flush=True)
                if args.out:  # written after each run: a long bench cut short keeps what it measured
                    args.out.write_text(json.dumps(results, indent=2))
    show(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
