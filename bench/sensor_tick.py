#!/usr/bin/env python
"""Annotation folder sensor: one tick over many batch files, the first one and one with nothing changed.

Writes N JSONL batch files holding V small votes in all to a temporary folder (mtimes set a minute in
the past, so they count as settled), then times with time.perf_counter:

- `fingerprint_folder` (rm_pipeline.lib.fingerprints): a first look (every file hashed and its rows
  counted) and a look at the unchanged folder with the first look's state (each file `stat`-ed, none read);
- `annotation_folder_sensor` through `dg.build_sensor_context` on `dg.instance_for_test()`: the first tick
  (no cursor: a new version with its metadata) and a tick with nothing changed (a SkipReason), the cursor
  carried over as the daemon does. Storing the reported event on the instance is timed apart.

Target: an unchanged tick under 0.5 s for 1,000 files / 1,000,000 votes, with no file read again.

    python bench/sensor_tick.py                          # 1,000 files, 1,000,000 votes
    python bench/sensor_tick.py --files 10000 --votes 1000000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402

from rm_pipeline.folder_sensors import build_annotation_folder_sensor  # noqa: E402
from rm_pipeline.lib.automation import FolderWatchSettings  # noqa: E402
from rm_pipeline.lib.fingerprints import fingerprint_folder  # noqa: E402
from rm_pipeline.resources import AnnotationSource  # noqa: E402

TARGET_SECONDS = 0.5


def write_batches(folder: Path, files: int, votes: int) -> int:
    """`files` JSONL batches, `votes` one-line votes in all; returns the bytes written."""
    per_file, extra = divmod(votes, files)
    written, vote = 0, 0
    past = time.time_ns() - 60 * 10**9
    for index in range(files):
        lines = []
        for _ in range(per_file + (index < extra)):
            lines.append(
                f'{{"item_id":"i{vote // 3}","prompt":"Say hi {vote // 3}.","response_a":"Hi!","response_b":'
                f'"Go away.","annotator_id":"a{vote % 3}","vote":"a"}}\n'
            )
            vote += 1
        path = folder / f"batch_{index:05d}.jsonl"
        path.write_text("".join(lines))
        os.utime(path, ns=(past, past))
        written += path.stat().st_size
    return written


def timed(function, repeat: int = 1):
    """The last result and every duration in seconds."""
    durations, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - start)
    return result, durations


def figures(durations: list[float]) -> str:
    if len(durations) == 1:
        return f"{durations[0]:.3f} s"
    return f"median {statistics.median(durations):.3f} s, min {min(durations):.3f} s, max {max(durations):.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--votes", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="unchanged ticks timed (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        size = write_batches(folder, args.files, args.votes)
        print(
            f"{args.files:,} JSONL files, {args.votes:,} votes, {size / 2**20:.1f} MiB "
            f"(written in {time.perf_counter() - start:.1f} s)"
        )

        first, durations = timed(lambda: fingerprint_folder(folder))
        rows = sum(entry["rows"] for entry in first.state.values())
        assert len(first.hashed) == args.files and rows == args.votes, (len(first.hashed), rows)
        print(f"fingerprint_folder, first look:     {figures(durations)}  ({len(first.hashed):,} files hashed)")
        again, durations = timed(lambda: fingerprint_folder(folder, first.state), args.repeat)
        assert again.hashed == [] and again.version == first.version
        print(f"fingerprint_folder, unchanged:      {figures(durations)}  (files read: {len(again.hashed)})")
        unchanged_pure = statistics.median(durations)

        sensor = build_annotation_folder_sensor(FolderWatchSettings())
        resources = {"annotation_source": AnnotationSource(directory=str(folder))}
        with dg.instance_for_test() as instance:

            def tick(cursor):
                return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))

            result, durations = timed(lambda: tick(None))
            assert isinstance(result, dg.SensorResult) and len(result.asset_events) == 1
            print(
                f"sensor, first tick:                 {figures(durations)}  "
                f"(cursor {len(result.cursor) / 1024:.0f} KiB)"
            )
            _, durations = timed(lambda: [instance.report_runless_asset_event(e) for e in result.asset_events])
            print(f"  storing the new version's event:  {figures(durations)}  (what the sensor daemon does)")
            cursor = result.cursor
            assert json.loads(cursor)["version"] == first.version
            skipped, durations = timed(lambda: tick(cursor), args.repeat)
            assert isinstance(skipped, dg.SkipReason), skipped
            print(f"sensor, unchanged tick:             {figures(durations)}  ({skipped.skip_message})")
            unchanged_sensor = statistics.median(durations)

    worst = max(unchanged_pure, unchanged_sensor)
    verdict = "meets" if worst < TARGET_SECONDS else "MISSES"
    print(f"unchanged tick {worst:.3f} s: {verdict} the {TARGET_SECONDS} s target, no file read again")


if __name__ == "__main__":
    main()
