"""`rm-pipeline ui`: `dagster dev` on this project, its instance under the storage root."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from rm_pipeline.cli.common import home_options, use_home
from rm_pipeline.lib.environment import DAGSTER_HOME

# dagster dev waits up to 60 s for its webserver, then up to 60 s for its daemon, before killing each: give it
# all of that and a margin before killing its whole group
UI_STOP_SECONDS = 150
# The code location, as the repository's workspace.yaml declares it; written beside the instance, so `ui` runs
# the same from an installed wheel as from a checkout.
WORKSPACE = {
    "load_from": [{"python_module": {"module_name": "rm_pipeline.definitions", "location_name": "rm_pipeline"}}]
}


def lineage_url(port: int) -> str:
    """The asset graph with every group open: Dagster opens groups collapsed unless the URL names them
    (`expanded`, ids `global@global:<group>`), and keeps no deployment-wide setting for it."""
    from rm_pipeline.asset_outputs import ASSET_GROUPS

    expanded = ",".join(f"global@global:{group}" for group in ASSET_GROUPS)
    return f"http://127.0.0.1:{port}/asset-groups?expanded={quote(expanded, safe=',')}"


def add_command(commands) -> None:
    ui = commands.add_parser("ui", parents=[home_options()], help="open the Dagster UI on this project (dagster dev)")
    ui.add_argument("--port", type=int, default=3000, help="port of the webserver (default: %(default)s)")
    ui.set_defaults(handler=open_ui)


def open_ui(args: argparse.Namespace) -> int:
    use_home(args.home)
    workspace = Path(DAGSTER_HOME.get()) / "workspace.yaml"
    workspace.write_text(json.dumps(WORKSPACE, indent=2) + "\n")  # JSON is YAML
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-p", str(args.port)]
    print(f"{DAGSTER_HOME.name}={DAGSTER_HOME.get()} {' '.join(command)}", flush=True)
    print(f"the asset graph, every group open: {lineage_url(args.port)}", flush=True)
    stop_asked, started = [], []

    def forward(signum, _frame):
        # dagster dev shuts its webserver, daemon and code servers down on SIGINT or SIGTERM.
        stop_asked.append(time.monotonic())
        for server in started:
            server.send_signal(signum)

    # Caught before the child starts: a caught signal is reset to its default in the child, while an ignored one
    # stays ignored, and a script's background job starts with SIGINT ignored (dagster dev then ignores SIGTERM).
    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    # Its own process group, so that whatever it leaves behind can be stopped together.
    server = subprocess.Popen(command, process_group=0)
    started.append(server)
    if stop_asked:  # asked to stop while it was starting
        server.send_signal(signal.SIGTERM)
    try:
        while True:
            try:
                return server.wait(timeout=1)
            except subprocess.TimeoutExpired:
                if stop_asked and time.monotonic() - stop_asked[0] > UI_STOP_SECONDS:
                    _kill_group(server.pid)
    finally:
        _kill_group(server.pid)  # anything still running once dagster dev is gone
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is empty
        pass
