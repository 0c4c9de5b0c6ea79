"""End to end through the real webserver and daemon (`dagster dev`), as a user drives the UI."""

import pandas as pd
import pytest

from rm_pipeline_tests.conftest import PERMISSIVE_READINESS

pytestmark = [pytest.mark.servers, pytest.mark.trains]

LINEAGE_QUERY = """
{ assetNodes { assetKey { path } dependencyKeys { path } groupName } }
"""


def test_job_launched_through_the_webserver_materialises_the_graph(small_dagster_dev):
    nodes = small_dagster_dev.client._execute(LINEAGE_QUERY)["assetNodes"]
    parents = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert parents["preference_split"] == {"preference_pairs"}
    assert parents["aggregated_preferences"] == {"raw_annotations", "review_folder"}

    status = small_dagster_dev.launch_and_wait("reward_pipeline_job", {"ops": PERMISSIVE_READINESS})
    assert status == "SUCCESS"
    home = small_dagster_dev.home
    split = pd.read_parquet(home / "tables" / "preference_split.parquet")
    assert len(split) > 0 and split.groupby("prompt_id")["split"].nunique().max() == 1
    assert (home / "models" / "current" / "config.json").exists()
    assert (home / "models" / "current" / "readiness.json").exists()
