"""`rm-pipeline run`: materialise the whole asset graph headless, summarise each stage, print the verdict."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from rm_pipeline.cli.common import EXIT_GATE_FAILED, EXIT_NOT_READY, InputError, home_options, use_home
from rm_pipeline.lib.asset_values import READINESS_CHECK, READY
from rm_pipeline.lib.environment import ANNOTATIONS, BASE_MODEL, EVALUATION, REVIEWS

# The readiness check's name (rm_pipeline.stages.evaluation): not a gate that stops the run unless strict.
# Metadata too long for a one-line summary (tables and plots are left out too): for the UI. The verdict and its
# recommendation are printed in full after the summary.
LEFT_OUT_OF_SUMMARY = ("path", "base_model", "settings", "recommendation", "verdict")


def add_command(commands) -> None:
    run = commands.add_parser(
        "run",
        parents=[home_options()],
        help="materialise the whole asset graph headless and summarise each stage",
    )
    for option, variable, meaning, bundled in (
        ("--annotations", ANNOTATIONS, "folder of annotation batches", "annotations"),
        ("--base-model", BASE_MODEL, "Hugging Face id or local path", "all-MiniLM-L6-v2"),
        ("--eval-dir", EVALUATION, "evaluation folder laid out like the bundled one", "one"),
        ("--reviews", REVIEWS, "folder of reviewed review-queue files", "reviews folder"),
    ):
        run.add_argument(option, help=f"{meaning} (default: ${variable.name}, else the bundled {bundled})")
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
    run.set_defaults(handler=run_pipeline)


def run_pipeline(args: argparse.Namespace) -> int:
    home = use_home(args.home)

    import dagster as dg

    from rm_pipeline.definitions import build_defs, reward_pipeline_job
    from rm_pipeline.folder_sensors import record_folder_versions
    from rm_pipeline.lib.storage_lock import in_use, peek

    defs = build_defs(str(home), args.annotations, args.base_model, args.eval_dir, reviews_dir=args.reviews)
    job = defs.resolve_job_def(reward_pipeline_job.name)
    run_config = read_run_config(job, args.config) if args.config else None
    # Only the run's storage resource takes the root; looked at first, a root in use is refused in one line
    # with no failed run recorded, and a run that died holding it is named once the new run has reported it.
    held, holder = peek(home)
    if held:
        print(f"rm-pipeline run: {in_use(home.resolve(), holder)}", file=sys.stderr)
        return 1
    print_expected_duration()
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        ghost = instance.get_run_by_id(holder["run_id"]) if holder.get("run_id") else None
        sources = defs.resources
        record_folder_versions(instance, sources["annotation_source"].directory, sources["review_source"].directory)
        result = job.execute_in_process(run_config=quiet(run_config), instance=instance, raise_on_error=False)
        event_log = write_event_log(instance, result.run_id, home)
        if ghost is not None and not ghost.is_finished and instance.get_run_by_id(ghost.run_id).is_failure:
            print(
                f"run {ghost.run_id} was still marked {ghost.status.value}, but its process is gone: reported it failed"
            )
    status = report_run(result, home, args.require_ready)
    print(f"\nfinished in {_minutes(time.monotonic() - started)}; every event of the run: {event_log}")
    return status


def print_expected_duration() -> None:
    from rm_pipeline.lib.hardware import MAIN_JOB_MACHINES, MAIN_JOB_MINUTES, main_job_machine

    machine = main_job_machine()
    low, high = MAIN_JOB_MINUTES[machine]
    print(f"expected: {low} to {high} minutes on {MAIN_JOB_MACHINES[machine]} (the bundled data, default settings)")


def quiet(run_config: dict | None) -> dict:
    """Dagster's console logger at INFO: stage starts and ends, gates, training progress; not the DEBUG events
    of every input and output (they go to the event log file). A run config's own `loggers` win."""
    return {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **(run_config or {})}


def write_event_log(instance, run_id: str, home: Path) -> Path:
    """Every event of the run, DEBUG included, one per line, under `<root>/logs/`."""
    folder = home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-{run_id}.log"
    with path.open("w", encoding="utf-8") as log:
        for entry in instance.all_logs(run_id):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.timestamp))
            kind = entry.dagster_event_type.value if entry.dagster_event_type else logging.getLevelName(entry.level)
            log.write(f"{stamp} {entry.step_key or '-'} {kind} {entry.message}\n")
    return path


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


def report_run(result, home: Path, require_ready: bool) -> int:
    """Each stage's summary and each gate's outcome on stdout, what stopped the run on stderr; the exit status."""
    import dagster as dg

    from rm_pipeline.publishing import gate_not_passed

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
        print(f"  {materialization.asset_key.to_user_string()}: {summary(materialization.metadata)}")
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
        print(f"\nstep {event.step_key} failed: {cause(event.step_failure_data.error)}", file=sys.stderr)
    if readiness is not None:
        print_verdict(Path(readiness["readiness_file"].value))
    not_ready = readiness is not None and not readiness[READY].value
    if any(e.check_name != READINESS_CHECK for e in stopped_by) or unpassed:
        return EXIT_GATE_FAILED
    if crashes:
        return 1
    # Not ready is a result: a distinct status only when it was required (--require-ready, or strict).
    required = require_ready or any(e.check_name == READINESS_CHECK for e in stopped_by)
    return EXIT_NOT_READY if not_ready and required else 0


def cause(error) -> str:
    """The first line of what went wrong: the gate that did not pass, or the error inside Dagster's wrapper."""
    from rm_pipeline.publishing import gate_not_passed

    error = gate_not_passed(error) or error
    while error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
        error = error.cause
    line = error.message.strip().splitlines()[0]
    prefix, _, rest = line.partition(
        ": "
    )  # Dagster writes `module.path.ErrorClass: message`: the message is for people
    return rest if rest and prefix.split(".")[-1] == error.cls_name else line


def print_verdict(readiness_file: Path) -> None:
    verdict = json.loads(readiness_file.read_text())
    ready = verdict[READY]
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


def summary(metadata: dict) -> str:
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


def read_run_config(job, path: Path) -> dict:
    """The run config in `path` (JSON by its `.json` suffix, else YAML), checked against the job's config schema
    and every setting's range before anything runs."""
    import dagster as dg

    from rm_pipeline.config import check_run_config
    from rm_pipeline.lib.settings import SettingError, one_line

    try:
        text = path.read_text(encoding="utf-8")
        config = parse_run_config(text, json_file=path.suffix.lower() == ".json")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: can't be read ({one_line(error)})") from None
    except ValueError as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML or JSON"
        raise InputError(one_line(f"{path}: not {kind} ({error})")) from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a run config (a mapping such as `ops: {{...}}`)")
    try:
        dg.validate_run_config(job, config)
        check_run_config(config)
    except dg.DagsterInvalidConfigError as error:
        problems = "; ".join(problem.message for problem in error.errors)
        raise InputError(one_line(f"{path}: not a valid run config for {job.name}: {problems}")) from None
    except SettingError as error:
        raise InputError(one_line(f"{path}: {error}")) from None
    return config


def parse_run_config(text: str, json_file: bool) -> object:
    """JSON, or YAML read as YAML 1.2 reads numbers (`2e-05` is a float), with no alias (`*name`: a billion
    laughs is a few lines) and no key given twice; ValueError says where."""
    import yaml

    if json_file:

        def no_duplicates(pairs):
            keys = [key for key, _ in pairs]
            repeated = sorted({key for key in keys if keys.count(key) > 1})
            if repeated:
                raise ValueError(f"key {repeated[0]!r} given twice in one object")
            return dict(pairs)

        return json.loads(text, object_pairs_hook=no_duplicates)
    try:
        return yaml.load(text, Loader=_run_config_loader())  # noqa: S506 (a SafeLoader, narrowed further)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        raise ValueError(
            f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}" if mark else error
        ) from None
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from None


def _run_config_loader():
    """yaml.SafeLoader without aliases and duplicate keys, with YAML 1.2's exponent floats."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in a run config: write the value out", mark
                )
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    exponent = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
    return Loader
