#!/usr/bin/env python
"""Throughput benchmark: synthetic votes -> ingestion -> aggregation -> review queue -> pairs -> split.

Generates N synthetic votes in the canonical row format (rm_pipeline/data/README.md, "Row format"), writes them
as a few batch files to a temporary folder, then runs the pure pipeline functions of
`rm_pipeline.lib` on them in a *fresh child process*, timing every stage with time.perf_counter.

Memory: the peak is the child's own high-water mark (VmHWM from /proc/self/status; ru_maxrss where
there is no /proc), so it covers the imports and the pipeline only, never the data generation,
which happens in the parent. The child is started before the generation anyway, because Linux
carries a parent's ru_maxrss over into a child through fork/vfork + exec. A psutil sampling thread
(every 10 ms) in the child also reports the highest RSS it saw during each stage (indicative: a
sampler can miss a short spike, VmHWM cannot).

Target: 1,000,000 votes in under 30 s total (sum of the five stages) with peak RSS under 4 GB, on
2 cores.

    python bench/ingest_to_split.py                                  # 1M votes, parquet, dawid_skene
    python bench/ingest_to_split.py --format jsonl
    python bench/ingest_to_split.py --method majority_vote
    python bench/ingest_to_split.py --votes 100000 --profile /tmp/bench.prof   # cProfile the stages
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_VOTES, TARGET_SECONDS, TARGET_RSS_MB = 1_000_000, 30.0, 4096.0
STAGES = ("ingestion", "aggregation", "review_queue", "pairs", "split")

# A small vocabulary keeps generation fast; numbered suffixes keep prompts and responses distinct.
WORDS = (
    "the",
    "model",
    "answer",
    "explains",
    "clearly",
    "why",
    "a",
    "short",
    "list",
    "of",
    "steps",
    "helps",
    "user",
    "with",
    "code",
    "python",
    "error",
    "fix",
    "summary",
    "essay",
    "recipe",
    "travel",
    "plan",
    "budget",
    "poem",
    "about",
    "rain",
    "translate",
    "into",
    "french",
    "sorry",
    "cannot",
    "help",
    "here",
    "is",
    "an",
    "example",
    "first",
    "then",
    "finally",
    "check",
    "your",
    "input",
    "data",
    "carefully",
)
DOMAINS = tuple(f"domain_{i:02d}" for i in range(20))
VOTE_LABELS = np.array(["a", "b", "tie", "abstain"])


# ---------------------------------------------------------------- generation (parent process)


def _phrases(rng: np.random.Generator, count: int, words: int) -> np.ndarray:
    """`count` phrases of `words` vocabulary words (vectorised: one str.cat per word position)."""
    import pandas as pd

    vocab = np.array(WORDS, dtype=object)
    text = pd.Series(vocab[rng.integers(0, len(vocab), count)])
    for _ in range(words - 1):
        text = text + " " + vocab[rng.integers(0, len(vocab), count)]
    return text.to_numpy(dtype=object)


def generate_votes(n_votes: int, seed: int, n_annotators: int = 200, n_domains: int = 20, votes_per_prompt: int = 30):
    """A pyarrow Table of `n_votes` canonical votes, rows in random (arrival) order.

    Shape: 1-5 votes per item (mean ~3.1), each by distinct annotators from a pool of `n_annotators`
    with mixed reliability (reliable / average / noisy coin-flippers / contrarian) and skewed
    activity; items grouped under ~n_votes/30 prompt_ids, prompts spread over `n_domains` domains
    (Zipf-like); ~6% truly tied items, ~5% tie votes and ~2% abstentions otherwise; ~5% of votes see
    the candidates in swapped A/B order; ~0.3% items with identical candidates; ~0.05% repeated
    (item, annotator) votes. Everything is numpy fancy indexing and pyarrow `take`: no per-row loop.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)

    # votes per item, truncated to exactly n_votes
    k_values, k_probs = np.arange(1, 6), np.array([0.06, 0.14, 0.55, 0.15, 0.10])
    guess = int(n_votes / (k_values @ k_probs) * 1.05) + 10
    k = rng.choice(k_values, size=guess, p=k_probs)
    cum = np.cumsum(k)
    n_items = int(np.searchsorted(cum, n_votes) + 1)
    k = k[:n_items].copy()
    k[-1] -= int(cum[n_items - 1] - n_votes)
    starts = np.cumsum(k) - k
    item = np.repeat(np.arange(n_items), k)
    pos = np.arange(n_votes) - np.repeat(starts, k)

    # prompts (groups) and domains
    n_prompts = max(1, round(n_votes / votes_per_prompt))
    prompt_of_item = rng.integers(0, n_prompts, n_items)
    domain_weights = 1.0 / np.arange(1, n_domains + 1) ** 0.8
    domain_of_prompt = rng.choice(n_domains, size=n_prompts, p=domain_weights / domain_weights.sum())

    # annotators: reliability mix and skewed activity; distinct annotators within an item
    kind = rng.choice(4, size=n_annotators, p=[0.60, 0.27, 0.09, 0.04])
    accuracy = np.select(
        [kind == 0, kind == 1, kind == 2],
        [rng.uniform(0.85, 0.97, n_annotators), rng.uniform(0.65, 0.80, n_annotators), np.full(n_annotators, 0.5)],
        rng.uniform(0.20, 0.35, n_annotators),
    )
    activity = rng.pareto(1.5, n_annotators) + 1.0
    first = rng.choice(n_annotators, size=n_items, p=activity / activity.sum())
    units = np.array([s for s in range(1, n_annotators) if np.gcd(s, n_annotators) == 1])
    step = rng.choice(units, size=n_items)  # base + j*step mod n is distinct for j < n
    annotator = (first[item] + pos * step[item]) % n_annotators
    repeat = (pos > 0) & (rng.random(n_votes) < 0.0005)
    annotator[repeat] = first[item[repeat]]

    # votes: true outcome per item, then each annotator's noisy report
    truth = rng.choice(3, size=n_items, p=[0.47, 0.47, 0.06])  # 0 a, 1 b, 2 tie
    hard = rng.random(n_items) < 0.15
    p_correct = np.clip(accuracy[annotator] - 0.15 * hard[item], 0.05, 0.99)
    u, v = rng.random(n_votes), rng.random(n_votes)
    t = truth[item]
    side_vote = np.where(v < p_correct, t, 1 - t)  # for a/b truths
    tie_truth_vote = np.where(v < 0.5, 2, rng.integers(0, 2, n_votes))  # for tied truths
    vote = np.where(t == 2, tie_truth_vote, side_vote)
    vote = np.where(u < 0.02, 3, np.where(u < 0.07, 2, vote))  # abstain 2%, tie 5%
    strength = np.where(rng.random(n_votes) < 0.6, 2, 1)
    strength_null = (vote >= 2) | (rng.random(n_votes) < 0.3)  # no strength for ties, some sources

    # A/B order as shown to the annotator
    flip = rng.random(n_votes) < 0.05
    vote = np.where(flip & (vote < 2), 1 - vote, vote)

    # texts: per prompt and per item, then gathered per vote
    prompt_text = _phrases(rng, n_prompts, 8) + " (#" + np.arange(n_prompts).astype(str).astype(object) + ")"
    resp_a = _phrases(rng, n_items, 6) + " [a" + np.arange(n_items).astype(str).astype(object) + "]"
    resp_b = _phrases(rng, n_items, 6) + " [b" + np.arange(n_items).astype(str).astype(object) + "]"
    identical = rng.random(n_items) < 0.003
    resp_b[identical] = resp_a[identical]

    order = rng.permutation(n_votes)  # arrival order: an item's votes are spread over the batches
    item, annotator, vote, flip = item[order], annotator[order], vote[order], flip[order]
    strength, strength_null = strength[order], strength_null[order]

    def gather(values, index):
        return pa.array(values, type=pa.string()).take(pa.array(index))

    item_ids = np.char.add("syn:", np.arange(n_items).astype(str)).astype(object)
    prompt_ids = np.char.add("synp:", np.arange(n_prompts).astype(str)).astype(object)
    prompt_index = prompt_of_item[item]
    a_index = np.where(flip, n_items + item, item)  # into concat(resp_a, resp_b)
    b_index = np.where(flip, item, n_items + item)
    responses = np.concatenate([resp_a, resp_b])
    null_text = pa.nulls(n_votes, pa.string())
    return pa.table(
        {
            "item_id": gather(item_ids, item),
            "prompt_id": gather(prompt_ids, prompt_index),
            "prompt": gather(prompt_text, prompt_index),
            "response_a": gather(responses, a_index),
            "response_b": gather(responses, b_index),
            "context_a": null_text,
            "context_b": null_text,
            "annotator_id": gather(
                np.array([f"syn:annotator{i:03d}" for i in range(n_annotators)], dtype=object), annotator
            ),
            "vote": gather(VOTE_LABELS.astype(object), vote),
            "strength": pa.array(strength, mask=strength_null, type=pa.int64()),
            "domain": gather(np.array(DOMAINS[:n_domains], dtype=object), domain_of_prompt[prompt_index]),
            "source": pa.array(np.full(n_votes, "synthetic", dtype=object), type=pa.string()),
        }
    )


def write_batches(table, folder: Path, fmt: str, n_batches: int) -> list[Path]:
    """Contiguous row ranges of `table` as `batch_000.<fmt>`, ... with the `batch` column set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths, n = [], table.num_rows
    bounds = np.linspace(0, n, n_batches + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = folder / f"batch_{i:03d}.{fmt}"
        part = table.slice(lo, hi - lo)
        part = part.append_column("batch", pa.array(np.full(hi - lo, path.stem, dtype=object), type=pa.string()))
        if fmt == "parquet":
            pq.write_table(part, path)
        else:
            frame = part.to_pandas()
            frame["strength"] = frame["strength"].astype("Int64")  # 1 / 2 / null, not 1.0
            if fmt == "jsonl":
                frame.to_json(path, orient="records", lines=True, force_ascii=False)
            else:
                frame.to_csv(path, index=False)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- pipeline (child process)


class RssSampler(threading.Thread):
    """Highest RSS seen since the last `take()`, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        import psutil

        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def take(self) -> float:
        peak = max(self.peak, self.process.memory_info().rss)
        self.peak = 0
        return peak / 2**20


def run_pipeline(method: str, seed: int, profile: str | None) -> dict:
    """Import the library, wait for the batch file paths (one JSON line on stdin), run the stages."""
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    from rm_pipeline.lib.aggregation import aggregate_votes, review_queue
    from rm_pipeline.lib.annotations import read_annotations
    from rm_pipeline.lib.hardware import peak_memory_mb
    from rm_pipeline.lib.pairs import build_pairs
    from rm_pipeline.lib.split import split_by_group

    import_s = time.perf_counter() - t0
    paths = [Path(p) for p in json.loads(sys.stdin.readline())]

    try:
        sampler = RssSampler()
        sampler.start()
    except ImportError:
        sampler = None
    baseline = peak_memory_mb("cpu")
    if sampler:
        sampler.take()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()

    stages, state = [], {}

    def stage(name, fn, rows):
        if profiler:
            profiler.enable()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if profiler:
            profiler.disable()
        state[name] = out
        stages.append(
            {
                "stage": name,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "rows": rows(out),
                "sampled_peak_rss_mb": sampler.take() if sampler else None,
            }
        )

    stage(
        "ingestion",
        lambda: read_annotations(paths),
        lambda r: f"{len(r.votes):,} votes kept, {len(r.quarantine):,} quarantined (of {r.rows_read:,} read)",
    )
    votes = state["ingestion"].votes
    stage(
        "aggregation",
        lambda: aggregate_votes(votes, method, "count_as_vote", 50),
        lambda r: f"{len(r.comparisons):,} comparisons, {len(r.annotators):,} annotators",
    )
    comparisons = state["aggregation"].comparisons
    stage("review_queue", lambda: review_queue(comparisons), lambda q: f"{len(q):,} disputed")
    queue = state["review_queue"]
    stage(
        "pairs",
        lambda: build_pairs(comparisons, queue["item_id"], token_lengths=None),
        lambda kr: f"{len(kr[0]):,} kept, {len(kr[1]):,} rejected",
    )
    kept = state["pairs"][0]
    stage(
        "split",
        lambda: split_by_group(kept, 0.2, seed),
        lambda s: f"{(s['split'] == 'train').sum():,} train, {(s['split'] == 'eval').sum():,} eval",
    )

    if sampler:
        sampler.stop.set()
    if profiler:
        profiler.dump_stats(profile)
    return {
        "stages": stages,
        "import_s": import_s,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_memory_mb("cpu"),
        "votes_in": state["ingestion"].rows_read,
        "quarantine_reasons": state["ingestion"].quarantine["reason"].value_counts().to_dict(),
        "rejection_reasons": state["pairs"][1]["reason"].value_counts().to_dict(),
        "winners": state["aggregation"].comparisons["winner"].value_counts().to_dict(),
    }


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--votes", type=int, default=TARGET_VOTES, help="synthetic votes (default 1,000,000)")
    parser.add_argument("--format", choices=("parquet", "jsonl", "csv"), default="parquet")
    parser.add_argument("--method", choices=("dawid_skene", "majority_vote"), default="dawid_skene")
    parser.add_argument("--seed", type=int, default=0, help="numpy default_rng seed (and split seed)")
    parser.add_argument("--batches", type=int, default=4, help="number of batch files (default 4)")
    parser.add_argument("--data-dir", type=Path, help="write the batch files here and keep them (default: a temp dir)")
    parser.add_argument("--profile", help="cProfile the five stages (in the child) into this .prof file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:  # the measured process: prints one JSON object
        print(json.dumps(run_pipeline(args.method, args.seed, args.profile)))
        return 0

    # The measured child starts first, while this process is still small, and imports the library
    # while the data is generated; it gets the file paths on stdin.
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--method",
        args.method,
        "--seed",
        str(args.seed),
    ]
    if args.profile:
        command += ["--profile", str(Path(args.profile).resolve())]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        result = _generate_and_measure(args, child)
    except BaseException:
        child.kill()
        raise
    if result is None:
        print(f"pipeline child process failed (exit {child.returncode})")
        return child.returncode or 1
    report(args, result)
    return 0


def _generate_and_measure(args, child: subprocess.Popen) -> dict | None:
    with tempfile.TemporaryDirectory(prefix="rm_bench_") as tmp:
        folder = args.data_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        table = generate_votes(args.votes, args.seed)
        gen_s = time.perf_counter() - start
        start = time.perf_counter()
        paths = write_batches(table, folder, args.format, args.batches)
        write_s = time.perf_counter() - start
        del table
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        print(
            f"rm-pipeline ingest->split benchmark: {args.votes:,} votes, format={args.format}, "
            f"method={args.method}, seed={args.seed}, cpus={os.cpu_count()}, python {sys.version.split()[0]}"
        )
        print(
            f"generated in {gen_s:.2f} s, wrote {len(paths)} {args.format} files ({size_mb:.1f} MiB) "
            f"to {folder} in {write_s:.2f} s  [not timed below]"
        )

        load_before = os.getloadavg()[0]
        stdout, _ = child.communicate(json.dumps([str(p) for p in paths]) + "\n")
        if child.returncode != 0:
            return None
        result = json.loads(stdout.strip().splitlines()[-1])
        result["load"] = (load_before, os.getloadavg()[0])
        return result


def report(args, result: dict) -> None:
    """One line per stage, the totals, the machine's load, then the verdict against the target."""
    total = sum(s["seconds"] for s in result["stages"])
    cpu_total = sum(s["cpu_seconds"] for s in result["stages"])
    for s in result["stages"]:
        sampled = f"   rss<= {s['sampled_peak_rss_mb']:7.0f} MB" if s["sampled_peak_rss_mb"] else ""
        print(f"  {s['stage']:<13}{s['seconds']:8.2f} s  (cpu {s['cpu_seconds']:6.2f} s)   {s['rows']}{sampled}")
    print(
        f"  quarantine: {result['quarantine_reasons']}; winners: {result['winners']}; "
        f"pair rejections: {result['rejection_reasons']}"
    )
    peak = result["peak_rss_mb"]
    profiled = " [under cProfile: timings inflated]" if args.profile else ""
    print(
        f"total {total:.2f} s (cpu {cpu_total:.2f} s) for {args.votes:,} votes = {args.votes / total:,.0f} votes/s; "
        f"peak RSS {peak:,.0f} MB{profiled}"
    )
    print(
        f"  peak RSS = VmHWM of the pipeline child process (started before the data generation, so generation "
        f"is excluded): imports {result['import_s']:.1f} s / {result['baseline_rss_mb']:.0f} MB + the five "
        f"stages"
    )
    cpus = os.cpu_count() or 1
    busy = max(result["load"]) > cpus  # the load counts this benchmark too
    print(
        f"  1-min load average {result['load'][0]:.2f} before, {result['load'][1]:.2f} after, on {cpus} cpus"
        + (": other work was running, wall times may be inflated" if busy else "")
    )
    ok_time, ok_mem = total < TARGET_SECONDS, peak < TARGET_RSS_MB
    scale = "" if args.votes == TARGET_VOTES else f" (measured at {args.votes:,} votes, target is defined at 1,000,000)"
    print(
        f"VERDICT: {'PASS' if ok_time and ok_mem else 'FAIL'} - target 1,000,000 votes < {TARGET_SECONDS:.0f} s "
        f"and < 4 GB peak on 2 cores: time {total:.1f} s {'OK' if ok_time else 'MISSED'}, "
        f"memory {peak:,.0f} MB {'OK' if ok_mem else 'MISSED'}{scale}"
    )


if __name__ == "__main__":
    sys.exit(main())
