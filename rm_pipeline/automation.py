"""Declarative automation: which stages run by themselves, and when.

- The data stages (everything before `reward_model`) follow a new version of an upstream folder or table.
  Every stage whose input changes is requested on the same tick, so one run carries a batch through the
  whole chain; the run's blocking checks stop it at a failed gate, and nothing downstream of a failed (or
  errored) gate is requested afterwards.
- `reward_model` is retrained on a cron tick (`AutomationSettings.retrain_cron`) when, at that tick, the
  approved split's data version differs from the one the current model was trained on (or there is no
  model). The tick then waits, if it must, for every upstream gate to pass and for no run to be in
  progress; a tick at which the split is unchanged is spent and nothing runs until the next one.
- The stages after training follow a new `reward_model` in the same run.

Each condition is labelled, so the UI's automation view shows which part held a stage back.
"""

import warnings

import dagster as dg

from rm_pipeline.lib.asset_values import DATA_VERSION
from rm_pipeline.lib.automation import CRON_VARIABLE, AutomationSettings
from rm_pipeline.lib.environment import RETRAIN_CRON
from rm_pipeline.lib.settings import SettingError, shown
from rm_pipeline.publishing import verdict

TRAINING = dg.AssetSelection.assets("reward_model")
AFTER_TRAINING = TRAINING.downstream(include_self=False)
DATA_STAGES = dg.AssetSelection.all().materializable() - TRAINING.downstream()
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _result(context: dg.AutomationContext, holds: bool, **metadata) -> dg.AutomationResult:
    subset = context.candidate_subset if holds else context.get_empty_subset()
    return dg.AutomationResult(context, subset, metadata={k: str(v) for k, v in metadata.items()})


class PipelineIdle(dg.AutomationCondition):
    """No run queued or in progress on the instance: a run holds the whole storage root, so a second one would
    fail at once. A stage held back by this is requested on the first tick after the run ends."""

    @property
    def name(self) -> str:
        return "pipeline_idle"

    @property
    def description(self) -> str:
        return "No run of the pipeline is queued or in progress (one run at a time per storage root)"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        busy = context.asset_graph_view.instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS), limit=1)
        return _result(context, not busy, **({"run_in_progress": busy[0].dagster_run.run_id} if busy else {}))


class UpstreamGatesPassed(dg.AutomationCondition):
    """Every blocking check of every asset upstream passed on that asset's latest materialisation (the rule the
    IO manager applies when a stage reads its inputs), or that asset is requested on this same tick: its
    gates then run again in the run, and stop it there if they fail."""

    @property
    def name(self) -> str:
        return "upstream_gates_passed"

    @property
    def description(self) -> str:
        return "Every blocking check upstream passed on its asset's latest materialization"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance, failed = context.asset_graph_view.instance, []
        for key in sorted(context.asset_graph.get_ancestor_asset_keys(context.key)):
            requested = context.request_subsets_by_key.get(key)
            if (requested is not None and not requested.is_empty) or not context.asset_graph.get(key).is_materializable:
                continue
            gates = verdict(instance, key)
            failed += [f"{key.to_user_string()}.{name} (run {gates.run_id})" for name in gates.failed]
            failed += [f"{key.to_user_string()}.{name}: not evaluated" for name in gates.not_evaluated]
        return _result(context, not failed, **({"gates_not_passed": ", ".join(failed)} if failed else {}))


class SplitChangedSinceModel(dg.AutomationCondition):
    """The split's latest data version differs from the one the target's latest materialisation was trained on
    (both record it as `data_version` metadata), or the target was never materialised."""

    @property
    def name(self) -> str:
        return "split_changed_since_model"

    @property
    def description(self) -> str:
        return "preference_split's data version differs from the one the current reward_model was trained on"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance = context.asset_graph_view.instance
        split = _recorded_version(instance.get_latest_materialization_event(dg.AssetKey("preference_split")))
        model = _recorded_version(instance.get_latest_materialization_event(context.key))
        changed = split is not None and split != model
        return _result(context, changed, split_data_version=split, model_trained_on=model)


def _recorded_version(event) -> str | None:
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return metadata[DATA_VERSION].value if DATA_VERSION in metadata else None


def data_stage_condition() -> dg.AutomationCondition:
    """Dagster's eager (a dependency updated, or will be requested this tick: one run for the chain), held back
    by a failed gate upstream or a run in progress. A folder no sensor reports is not missing data. Unlike
    eager, a stage never materialised is requested too (`missing`, not `newly_missing`): `rm-pipeline ui`
    started on a folder of batches ingests them without a click."""
    return (
        dg.AutomationCondition.eager()
        .replace("newly_missing", dg.AutomationCondition.missing())
        .replace(
            "any_deps_missing",
            dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets("review_folder")),
        )
        & UpstreamGatesPassed()
        & PipelineIdle()
    ).with_label("data stage: follows a new version upstream")


def check_cron(cron: str) -> None:
    """Raise SettingError naming the variable unless `cron` is a schedule Dagster accepts (its own check, through
    the public schedule definition)."""
    try:
        dg.ScheduleDefinition(name="retrain_cron_check", cron_schedule=cron, target=TRAINING)
    except dg.DagsterInvalidDefinitionError:
        raise SettingError(f"${CRON_VARIABLE} must be {RETRAIN_CRON.allowed}; got {shown(cron)}") from None


def retrain_condition(settings: AutomationSettings) -> dg.AutomationCondition:
    check_cron(settings.retrain_cron)
    tick = dg.AutomationCondition.cron_tick_passed(settings.retrain_cron, settings.timezone)
    return (
        (tick & SplitChangedSinceModel()).with_label("split changed at the cron tick").since_last_handled()
        & SplitChangedSinceModel()
        & ~dg.AutomationCondition.any_deps_missing()
        & UpstreamGatesPassed()
        & ~dg.AutomationCondition.in_progress()
        & PipelineIdle()
    ).with_label(f"retrain on {settings.retrain_cron} ({settings.timezone}) when the split changed")


def after_training_condition() -> dg.AutomationCondition:
    """Eager, but only on a new reward_model (or a stage after it): a new split alone doesn't rescore the old
    model."""
    return (
        dg.AutomationCondition.eager().replace(
            "any_deps_updated",
            dg.AutomationCondition.any_deps_updated().allow(TRAINING.downstream()),
        )
        & UpstreamGatesPassed()
        & PipelineIdle()
    ).with_label("after training: follows a new reward_model")


def automate(defs: dg.Definitions, settings: AutomationSettings) -> dg.Definitions:
    """`defs` with every stage's automation condition."""
    for selection, condition in (
        (DATA_STAGES, data_stage_condition()),
        (TRAINING, retrain_condition(settings)),
        (AFTER_TRAINING, after_training_condition()),
    ):
        defs = defs.map_resolved_asset_specs(
            func=lambda spec, condition=condition: spec.replace_attributes(automation_condition=condition),
            selection=selection,
        )
    return defs


with warnings.catch_warnings():  # said once per command otherwise, on stderr, to every user: we chose it knowingly
    warnings.simplefilter("ignore", dg.BetaWarning)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        "rm_pipeline_automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        use_user_code_server=True,  # the gate, idle and split conditions are Python, evaluated in the code location
        description="Runs the data stages when a new annotation batch arrives (one run for the chain, stopped at a "
        "failed gate), retrains reward_model on its cron when the approved split changed, then evaluates it.",
    )
