"""A snapshot of the code location: an accidental change to the graph fails here with a readable diff.

After a deliberate change, rewrite the snapshot with `RM_PIPELINE_UPDATE_SNAPSHOTS=1 pytest <this file>`
and commit it with the change.
"""

import difflib
import json
import os
from pathlib import Path

import dagster as dg

from rm_pipeline.definitions import build_defs
from rm_pipeline.lib.automation import AutomationSettings, FolderWatchSettings

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def describe(defs: dg.Definitions) -> dict:
    """Every asset (group, code version, deps, automation condition, pools), check (blocking), sensor and
    schedule."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        condition = node.automation_condition
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "code_version": node.code_version,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "automation_condition": condition.get_label() if condition else None,
            **({"pools": sorted(node.pools)} if node.pools else {}),  # concurrency pools, where set
            "checks": {
                check.name: {"blocking": graph.get_check_spec(check).blocking}
                for check in sorted(node.check_keys, key=lambda c: c.name)
            },
        }
    sensors = {
        sensor.name: {
            "type": type(sensor).__name__,
            "default_status": sensor.default_status.value,
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
        }
        for sensor in sorted(defs.sensors or [], key=lambda s: s.name)
    }
    schedules = {s.name: s.cron_schedule for s in sorted(defs.schedules or [], key=lambda s: s.name)}
    jobs = sorted(job.name for job in defs.jobs or [])
    return {"assets": assets, "sensors": sensors, "schedules": schedules, "jobs": jobs}


def test_the_definitions_match_their_snapshot():
    # Settings from the environment would change intervals and crons: the snapshot is of the defaults.
    defs = build_defs(folder_watch=FolderWatchSettings(), automation=AutomationSettings())
    current = json.dumps(describe(defs), indent=2, sort_keys=True) + "\n"
    if os.environ.get("RM_PIPELINE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(current)
    expected = SNAPSHOT.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), current.splitlines(True), "snapshot", "now"))
    assert not diff, (
        f"the code location changed:\n{diff}\nIf this is deliberate: RM_PIPELINE_UPDATE_SNAPSHOTS=1 pytest {__file__}"
    )
