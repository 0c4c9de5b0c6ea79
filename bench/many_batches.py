#!/usr/bin/env python
"""Ingestion of many small batch files: `read_annotations` over N one-vote JSONL files (issue 19 #13).

Writes N files of one vote each (mtimes a minute in the past, so they count as settled) to a temporary
folder, lists them with `list_batch_files` and times `read_annotations` with time.perf_counter (best of
--repeat), then checks the result equals reading each file on its own and concatenating (same votes, same
quarantine, same batches table).

Target: 10,000 one-vote files in <= 30 s on 2 cores.

    python bench/many_batches.py                     # 10,000 files
    python bench/many_batches.py --files 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from rm_pipeline.lib.annotations import read_annotations  # noqa: E402
from rm_pipeline.lib.batch_folder import list_batch_files  # noqa: E402

TARGET_SECONDS = 30.0


def write_batches(folder: Path, files: int) -> None:
    past = time.time_ns() - 60 * 10**9
    for index in range(files):
        path = folder / f"batch_{index:05d}.jsonl"
        path.write_text(
            f'{{"item_id":"i{index // 3}","prompt":"Say hi {index // 3}.","response_a":"Hi!","response_b":'
            f'"Go away.","annotator_id":"a{index % 3}","vote":"{"ab"[index % 2]}"}}\n'
        )
        os.utime(path, ns=(past, past))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-check", action="store_true", help="skip the file-by-file comparison (slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        write_batches(Path(folder), args.files)
        paths = list_batch_files(folder)
        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = read_annotations(paths)
            timings.append(time.perf_counter() - started)
        best = min(timings)
        print(f"files: {len(paths)}  votes: {len(result.votes)}  quarantined: {len(result.quarantine)}")
        print(
            f"read_annotations: {best:.2f} s ({1000 * best / len(paths):.2f} ms per file; target <= {TARGET_SECONDS} s)"
        )
        if not args.no_check:
            one_by_one = [read_annotations([path]) for path in paths]
            votes = pd.concat([r.votes for r in one_by_one], ignore_index=True)
            batches = pd.concat([r.batches for r in one_by_one], ignore_index=True)
            pd.testing.assert_frame_equal(result.votes.reset_index(drop=True), votes, check_dtype=False)
            pd.testing.assert_frame_equal(result.batches.reset_index(drop=True), batches, check_dtype=False)
            print("same votes and batches as reading each file on its own")


if __name__ == "__main__":
    main()
