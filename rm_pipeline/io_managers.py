"""IO managers: how asset values are stored under the storage root and read back as inputs, never as pickles."""

from __future__ import annotations

import dagster as dg
import pandas as pd

from rm_pipeline.lib.asset_values import from_json, to_json
from rm_pipeline.lib.model_files import write_atomically
from rm_pipeline.publishing import BLOCKING_CHECKS, GATED_BY, latest_table, published_table, settle_run
from rm_pipeline.resources import PipelineStorage


def _plain(value):
    """A definition metadata entry as its plain value (Dagster may hand it back wrapped)."""
    return value.value if isinstance(value, dg.MetadataValue) else value


class ParquetIOManager(dg.ConfigurableIOManager):
    """Every table asset as `<root>/tables/<asset>.parquet`: readable by any tool, no pickles. A table with
    blocking checks is published there only once they pass (rm_pipeline.publishing); inputs are read only from
    there, so no stage consumes a table that failed its gate or never went through it."""

    storage: PipelineStorage

    def handle_output(self, context: dg.OutputContext, table: pd.DataFrame) -> None:
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()} must be a DataFrame, got {type(table).__name__}")
        key = context.asset_key
        gates = sorted(_plain(context.definition_metadata.get(BLOCKING_CHECKS)) or [])
        path = self.storage.pending_table(key, context.run_id) if gates else self.storage.table(*key.path)
        partial = path.with_suffix(".parquet.partial")
        table.to_parquet(partial, index=False)
        partial.replace(path)  # readers never see a half-written table
        context.add_output_metadata(
            {"path": dg.MetadataValue.path(str(self.storage.table(*key.path))), **({GATED_BY: gates} if gates else {})}
        )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        key = context.upstream_output.asset_key
        checks = context.step_context.assets_def.check_keys if context.step_context.assets_def else set()
        if any(check.asset_key == key for check in checks):  # a check looks at what was just written
            path = latest_table(context.instance, self.storage, key)
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist: materialise {key.to_user_string()} first")
        else:
            path = published_table(context.instance, self.storage, key)
        return pd.read_parquet(path)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if context.instance is not None and context.run_id:
            for result in settle_run(context.instance, self.storage, context.run_id):
                if not result.passed:
                    context.log.warning(
                        f"{result.asset.to_user_string()} not published: gate "
                        f"{', '.join(result.failed + result.not_evaluated)} did not pass"
                    )


class AssetValueIOManager(dg.ConfigurableIOManager):
    """Small asset values (the published model, the evaluation report, the readiness verdict, a promotion record)
    as `<root>/values/<asset>.json`: a pointer to files or a record, written atomically. The model itself stays
    in its published directory."""

    storage: PipelineStorage

    def _path(self, key: dg.AssetKey):
        return self.storage.path("values", *key.path[:-1], key.path[-1] + ".json")

    def handle_output(self, context: dg.OutputContext, value) -> None:
        write_atomically(self._path(context.asset_key), to_json(value))

    def load_input(self, context: dg.InputContext):
        key = context.upstream_output.asset_key
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: materialise {key.to_user_string()} first")
        return from_json(path.read_text(encoding="utf-8"))
