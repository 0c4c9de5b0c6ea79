"""Where the pipeline reads and writes, as Dagster resources swapped per environment."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from rm_pipeline.config import check_launched_run_config
from rm_pipeline.lib.dpo import DpoInputError, DpoSettings, read_policy_record
from rm_pipeline.lib.environment import DPO_POLICY, DPO_REFERENCE
from rm_pipeline.lib.evaluation.inputs import EvaluationFolder
from rm_pipeline.lib.locations import (
    default_annotations_dir,
    default_base_model_name,
    default_evaluation_dir,
    default_home,
    default_reviews_dir,
)
from rm_pipeline.lib.storage_lock import check_instance, hold_for_run
from rm_pipeline.lib.tokenization import DEFAULT_MAX_LENGTH, check_remote_code, load_tokenizer, token_lengths
from rm_pipeline.publishing import fail_abandoned_run


class PipelineStorage(dg.ConfigurableResource):
    """The storage root: tables, review exports, models and reports live under it. A run holds it for its
    whole execution (`<root>/.run.lock`): a second run on the same root fails at once, naming the first."""

    root: str = Field(default_factory=lambda: str(default_home()), description="Storage root ($RM_PIPELINE_HOME).")

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext):
        if context.instance is not None:  # the root's history lives in one instance: refuse any other first
            check_instance(self.root, *_instance_identity(context.instance))

        def fail_abandoned(previous: dict):
            return fail_abandoned_run(context.instance, previous, self.root) if context.instance else None

        if context.dagster_run is not None:  # the run's first code (in-process executor): no step has run yet
            check_launched_run_config(context.dagster_run.run_config)
        with hold_for_run(self.root, context.run_id, fail_abandoned) as abandoned:
            if abandoned is not None:
                context.log.warning(f"run {abandoned.run_id} died holding {self.root}; reported it failed")
            yield self

    def path(self, *parts: str) -> Path:
        """A file path under the root, its folder created."""
        target = Path(self.root).joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def table(self, *asset_key: str) -> Path:
        """Where a table asset is published."""
        return self.path("tables", *asset_key[:-1], asset_key[-1] + ".parquet")

    def pending_table(self, key: dg.AssetKey, run_id: str) -> Path:
        """Where a run writes a table that waits for its gates."""
        return self.path("tables", ".pending", *key.path[:-1], f"{key.path[-1]}-{run_id}.parquet")

    def failed_table(self, key: dg.AssetKey, run_id: str) -> Path:
        """Where a table that failed a gate is kept for inspection."""
        return self.path("tables", "failed", *key.path[:-1], f"{key.path[-1]}-{run_id}.parquet")

    def report_folder(self, model_name: str) -> Path:
        """Where the evaluation of a model is written: `reports/<model>/`."""
        return self.directory("reports", model_name)

    def directory(self, *parts: str) -> Path:
        target = Path(self.root).joinpath(*parts)
        target.mkdir(parents=True, exist_ok=True)
        return target


INSTANCE_ID_KEY = "rm_pipeline/instance_id"  # in the instance's key-value store: the same from every process


def _instance_identity(instance: dg.DagsterInstance):
    """The instance's home, its id (made on first use), and whether it is throwaway: in memory, or the temporary
    one Dagster's commands make when DAGSTER_HOME is unset (deleted when the command ends)."""

    def instance_id(create: bool) -> str | None:
        found = instance.run_storage.get_cursor_values({INSTANCE_ID_KEY}).get(INSTANCE_ID_KEY)
        if found is None and create:
            found = uuid.uuid4().hex
            instance.run_storage.set_cursor_values({INSTANCE_ID_KEY: found})
        return found

    home = instance.root_directory
    throwaway = instance.is_ephemeral or Path(home).name.startswith(".tmp_dagster_home")
    return home, instance_id, throwaway


class AnnotationSource(dg.ConfigurableResource):
    """The folder vendors drop annotation batches into; every file in it is one batch."""

    directory: str = Field(
        default_factory=lambda: str(default_annotations_dir()),
        description="Folder of batch files (.jsonl, .json, .csv, .parquet).",
    )


class ReviewSource(dg.ConfigurableResource):
    """The folder reviewers drop their filled-in review queue exports into (data/reviews/README.md)."""

    directory: str = Field(
        default_factory=lambda: str(default_reviews_dir()),
        description="Folder of review files (.csv as exported, .jsonl, .json, .parquet) ($RM_PIPELINE_REVIEWS).",
    )


class EvaluationSource(dg.ConfigurableResource):
    """The folder of evaluation evidence: benchmark files, fresh policy outputs, rankings (data/eval/README.md)."""

    directory: str = Field(
        default_factory=lambda: str(default_evaluation_dir()),
        description="Folder laid out like the bundled data/eval ($RM_PIPELINE_EVAL).",
    )
    policy_outputs: str = Field(
        default="",
        description="Folder of AlpacaEval-format outputs of the policies to "
        "compare (empty: `alpaca-eval/` in the folder above).",
    )

    def folder(self) -> EvaluationFolder:
        root = Path(self.directory)
        return EvaluationFolder(root, Path(self.policy_outputs) if self.policy_outputs else root / "alpaca-eval")


class BaseModelResource(dg.ConfigurableResource):
    """The base checkpoint and the longest pair it reads: the pair rules and training both take `max_length`
    from here, counted in tokens of this model's own tokenizer."""

    name_or_path: str = Field(
        default_factory=default_base_model_name,
        description="Local path, or Hugging Face id already in the cache: never downloaded ($RM_PIPELINE_BASE_MODEL, "
        "else the bundled all-MiniLM-L6-v2).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run code shipped with the model: honoured only where the code server runs with "
        "RM_PIPELINE_ALLOW_REMOTE_CODE=1, refused otherwise.",
    )
    max_length: int = Field(
        default=DEFAULT_MAX_LENGTH,
        gt=0,
        description="Pairs longer than this many tokens are dropped and counted, never truncated; training reads "
        "no more. The default, 256, is the sequence length all-MiniLM-L6-v2 was trained with.",
    )

    def token_lengths(self, prompts, responses, conversational):
        check_remote_code(self.trust_remote_code)  # before anything of the model is loaded
        tokenizer = load_tokenizer(self.name_or_path, self.trust_remote_code)
        return token_lengths(tokenizer, prompts, responses, conversational)


class QualityGates(dg.ConfigurableResource):
    """Thresholds of the expectation gates that aren't a property of one stage's settings."""

    max_quarantine_fraction: float = Field(
        default=0.2,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="A batch with a larger share of unreadable rows fails the raw_annotations gate.",
    )


class DpoPolicyResource(dg.ConfigurableResource):
    """A DPO-trained policy and its reference, whose implicit reward `dpo_comparison` sets beside the reward
    model's on the held-out pairs. No causal model is bundled: with no policy, the comparison is off."""

    policy: str = Field(
        default_factory=lambda: DPO_POLICY.get(),
        description="Local folder (or locally cached id) of the DPO policy; empty: no comparison "
        "($RM_PIPELINE_DPO_POLICY). Never downloaded.",
    )
    reference: str = Field(
        default_factory=lambda: DPO_REFERENCE.get(),
        description="Its reference model; empty: the one `rm-pipeline dpo-baseline` recorded beside the policy "
        "($RM_PIPELINE_DPO_REFERENCE).",
    )
    beta: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="β the policy was trained with; unset: the recorded one, else DPO's 0.1.",
    )
    batch_size: int = Field(default=DpoSettings.batch_size, gt=0, description="Sequences per forward pass.")

    @property
    def configured(self) -> bool:
        return bool(self.policy)

    def resolved(self) -> tuple[str, str, float]:
        """Policy, reference and β, the last two from the policy's record where not given."""
        record = read_policy_record(Path(self.policy)) if Path(self.policy).is_dir() else {}
        reference = self.reference or record.get("reference", "")
        if not reference:
            raise DpoInputError(
                f"no reference model for the DPO policy {self.policy}: set `reference` (none is recorded beside it)"
            )
        return self.policy, reference, self.beta or record.get("beta", DpoSettings.beta)
