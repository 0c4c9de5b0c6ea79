"""The CPU levers issue 13 named and the first measurements left untried: thread count and `torch.compile`,
for a training step (forward, Bradley-Terry loss, backward, AdamW) and for scoring (forward, no gradient).

Real batches: pairs of the split the main job wrote (`--split`), both sides encoded as training and scoring do,
sorted by length and cut into batches (training: 16 pairs = 32 sequences; scoring: 32 sequences), of which
`--batches` evenly spaced ones are timed. Model: the bundled all-MiniLM-L6-v2 with its one-unit score head
(`load_model`). Variants are timed in turns (A, B, C, A, B, C, ...) after a warm-up, so load changes hit them
alike; medians are printed. A compiled variant's first call (the compilation) is printed on its own.
`--onnx` adds scoring with ONNX Runtime (the model exported by torch.onnx; needs `pip install onnx onnxruntime`,
which the project does not depend on).

    python bench/cpu_levers.py --split .rm_pipeline_home/tables/preference_split.parquet [--onnx]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import pandas as pd
import torch

from rm_pipeline.lib.precision import autocast
from rm_pipeline.lib.scoring import fit_to_length, pad_right
from rm_pipeline.lib.tokenization import default_base_model, encode
from rm_pipeline.lib.training.model import load_model
from rm_pipeline.lib.training.settings import TrainingSettings


def batches(split: pd.DataFrame, tokenizer, size: int, count: int, max_length: int) -> list[tuple]:
    """`count` evenly spaced length-sorted batches of `size` pairs: (input_ids, attention_mask), chosen first."""
    pairs = split[split["split"] == "train"]
    chosen = encode(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
    rejected = encode(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
    order = sorted(range(len(pairs)), key=lambda i: len(chosen[i]) + len(rejected[i]))
    groups = [order[start : start + size] for start in range(0, len(order) - size + 1, size)]
    picked = [groups[round(i * (len(groups) - 1) / max(count - 1, 1))] for i in range(count)]
    return [
        pad_right([fit_to_length(ids, max_length) for ids in [chosen[i] for i in g] + [rejected[i] for i in g]], 0)
        for g in picked
    ]


def training_step(model, optimizer, bf16: bool):
    def step(input_ids, attention_mask):
        with autocast("cpu", bf16):
            rewards = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        half = len(rewards) // 2
        loss = -torch.nn.functional.logsigmoid(rewards[:half] - rewards[half:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def scoring_forward(model, bf16: bool):
    @torch.inference_mode()
    def forward(input_ids, attention_mask):
        with autocast("cpu", bf16):
            model(input_ids=input_ids, attention_mask=attention_mask)

    return forward


def onnx_runtime_forward(model, example, threads: int, folder: str):
    """The model exported to ONNX and run by ONNX Runtime's CPU provider; checks it scores as torch does."""
    import numpy as np
    import onnxruntime

    path = f"{folder}/reward_model.onnx"
    names, dynamic = ["input_ids", "attention_mask"], {0: "batch", 1: "tokens"}
    torch.onnx.export(
        model, example, path, input_names=names, output_names=["logits"], dynamic_axes=dict.fromkeys(names, dynamic),
        dynamo=False, opset_version=17,
    )  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(input_ids, attention_mask):
        return session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]

    with torch.inference_mode():
        expected = model(input_ids=example[0], attention_mask=example[1]).logits.numpy()
    difference = np.abs(forward(*example) - expected).max()
    print(f"  ONNX Runtime against torch, fp32: max |reward difference| {difference:.1e}")
    return forward


def timed(work, data, threads: int) -> float:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    for input_ids, attention_mask in data:
        work(input_ids, attention_mask)
    return time.perf_counter() - started


def compare(title: str, variants: dict, data, repeats: int) -> None:
    """variants: name -> (work, threads). One untimed pass each (compilation, warm-up), then turns."""
    print(f"\n{title} ({len(data)} batches, {repeats} repeats, medians)")
    for name, (work, threads) in variants.items():
        print(f"  {name:<34} first pass {timed(work, data, threads):7.1f} s (warm-up / compilation)", flush=True)
    seconds = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (work, threads) in variants.items():
            seconds[name].append(timed(work, data, threads))
    baseline = statistics.median(next(iter(seconds.values())))
    for name, values in seconds.items():
        median, every = statistics.median(values), ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<34} {median:7.2f} s  {baseline / median:5.2f}x  (all: {every})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", required=True, help="preference_split.parquet written by the main job")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnx", action="store_true", help="also score with ONNX Runtime")
    args = parser.parse_args()
    torch.manual_seed(0)
    settings = TrainingSettings(base_model=default_base_model())
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    split = pd.read_parquet(args.split)

    def model_and_optimizer():
        model, tokenizer = load_model(settings)
        return model, tokenizer, torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)

    eager, tokenizer, eager_optimizer = model_and_optimizer()
    compiled, _, compiled_optimizer = model_and_optimizer()
    compiled_forward = torch.compile(compiled, dynamic=True)
    data = batches(split, tokenizer, 16, args.batches, settings.max_length)
    compare(
        "training step, fp32 (what an AVX2-only CPU runs)",
        {
            f"eager, {threads} threads": (training_step(eager, eager_optimizer, False), threads),
            "eager, 1 thread": (training_step(eager, eager_optimizer, False), 1),
            f"torch.compile, {threads} threads": (training_step(compiled_forward, compiled_optimizer, False), threads),
        },
        data,
        args.repeats,
    )
    eager.eval()
    compiled.eval()
    scoring = {
        "eager fp32": (scoring_forward(eager, False), threads),
        "torch.compile fp32": (scoring_forward(compiled_forward, False), threads),
        "eager bf16 autocast": (scoring_forward(eager, True), threads),
        "torch.compile bf16 autocast": (scoring_forward(compiled_forward, True), threads),
    }
    with tempfile.TemporaryDirectory() as folder:
        if args.onnx:
            scoring["ONNX Runtime fp32"] = (onnx_runtime_forward(eager, data[0], threads, folder), threads)
        compare("scoring forward (32 sequences a batch)", scoring, data, args.repeats)


if __name__ == "__main__":
    main()
