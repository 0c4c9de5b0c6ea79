"""Training throughput of our reward_model path, padded batches (before issue 21) vs each lever vs all together.

Random weights from a config (no download), the ~0.5B shape issue 21 measured or Qwen2.5-1.5B's; synthetic tokens, TRL's
RewardTrainer through `train_reward_model`, bf16 autocast where the hardware has it. Each variant first trains a
few batches untimed (flex_attention compiles then), then the timed run. Per variant: pair tokens/s (chosen + rejected
tokens, as the pipeline's metrics count them: comparable across variants), pairs/s, peak memory and MFU:

    MFU = (6 * N * computed tokens + 12 * layers * hidden * attended query-key pairs) / seconds / peak bf16 FLOP/s

N is the non-embedding parameter count (a reward model's embedding is a lookup, never a matmul); computed tokens
are those the variant's layout needs, no padding (the padded variant's padding is wasted, not counted; the shared
prompt's prompt is counted once); attended pairs are the causal pairs the mask lets through (4 FLOPs per pair
and dimension forward, 3x for backward). Peak: H100/H200 SXM 989 TFLOP/s dense bf16, A100 312.

    python bench/train_gpu_mfu.py                                  # 0.5B shape, every variant (a GPU)
    python bench/train_gpu_mfu.py --shape 1.5b --pairs 256         # 1.5B shape
    python bench/train_gpu_mfu.py --prompt-length 512              # long shared prompts (multi-turn chats)
    python bench/train_gpu_mfu.py --tiny                           # CPU: a tiny decoder, pairs/s ratios (best of 3)
    python bench/train_gpu_mfu.py --bundled-savings                # tokens the shared prompt saves, bundled data
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.training.packing import shared_prefix_length
from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
SHAPES = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2
    ),
    "0.5b": dict(  # the ~0.5B shape of issue 21's 9.9% (Qwen2.5-0.5B's depth and MLP, 1,024 wide)
        hidden_size=1024, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=2
    ),
    "1.5b": dict(  # Qwen2.5-1.5B
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2
    ),
}
VARIANTS = {
    "padded": dict(padding_free="off", shared_prompt="off"),
    "padding-free": dict(padding_free="on", shared_prompt="off"),
    "shared-prompt": dict(padding_free="on", shared_prompt="on"),
    "all": dict(padding_free="on", shared_prompt="on"),  # + a token budget: the padded batch's footprint
}
VOCABULARY = 32_000


def build_decoder(folder: Path, shape: str) -> dict:
    """A decoder of the shape (as a Llama config: AutoTokenizer would swap a Qwen2 config's word-level tokenizer for
    Qwen's own) with a word-level tokenizer, saved locally; returns its sizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCABULARY)} | {"<unk>": VOCABULARY, "<eos>": VOCABULARY + 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>").save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        max_position_embeddings=8192,
        eos_token_id=VOCABULARY + 1,
        num_labels=1,
        tie_word_embeddings=True,
        **SHAPES[shape],
    )
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "parameters": parameters,
        "non_embedding_parameters": parameters - model.get_input_embeddings().weight.numel(),
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * config.head_dim,
    }


def synthetic_pairs(n: int, length: int, prompt_length: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)

    def words(k: int) -> str:
        return " ".join(f"w{i}" for i in rng.integers(0, VOCABULARY, k))

    lengths = rng.integers(length // 2, length, size=(n, 2))
    return pd.DataFrame(
        {
            "prompt": [words(prompt_length) for _ in range(n)],
            "chosen": [words(a) for a, _ in lengths],
            "rejected": [words(b) for _, b in lengths],
            "conversational": False,
            "strength": np.nan,
        }
    )


def triangle(n):
    return n * (n + 1) // 2


def work(chosen_ids, rejected_ids, shared: bool) -> tuple[int, int]:
    """(computed tokens, attended causal query-key pairs) of one pair in a layout without padding."""
    c, r = len(chosen_ids), len(rejected_ids)
    if not shared:
        return c + r, triangle(c) + triangle(r)
    p = shared_prefix_length(chosen_ids, rejected_ids)
    return c + r - p, triangle(p) + (c - p) * p + triangle(c - p) + (r - p) * p + triangle(r - p)


def layout_work(pairs: pd.DataFrame, tokenizer) -> dict:
    from rm_pipeline.lib.tokenization import encode

    chosen = encode(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
    rejected = encode(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
    result = {}
    for shared in (False, True):
        totals = np.array([work(c, r, shared) for c, r in zip(chosen, rejected)]).sum(axis=0)
        result[shared] = {"tokens": int(totals[0]), "attended": int(totals[1])}
    result["padded_batch_tokens"] = 2 * max(max(map(len, chosen)), max(map(len, rejected)))
    return result


def run_variant(name: str, args, base: Path, sizes: dict, train, workdir: Path, warm: bool) -> dict:
    import torch

    overrides = dict(VARIANTS[name])
    if name == "all":
        overrides["max_tokens_per_batch"] = args.batch_size * 2 * (args.length + args.prompt_length + 2)
    settings = TrainingSettings(
        base_model=str(base),
        max_length=args.length + args.prompt_length + 64,
        batch_size=args.batch_size,
        epochs=1.0,
        use_margin=False,
        early_stopping_patience=None,
        logging_steps=10,
        eval_steps=10**9,
        warmup_ratio=0.0,
        **overrides,
    )
    evaluation = synthetic_pairs(4, args.length, args.prompt_length, 1)
    warmup = synthetic_pairs(4 * args.batch_size, args.length, args.prompt_length, 2)
    if warm:  # flex_attention compiles, caches fill: untimed
        train_reward_model(warmup, evaluation, settings, workdir / f"warmup-{name}", "mfu")
    metrics = train_reward_model(train, evaluation, settings, workdir / name, "mfu").metrics
    seconds = metrics["train_seconds"]
    shared = settings.shared_prompt == "on"
    computed = sizes["work"][shared]
    flops = 6 * sizes["non_embedding_parameters"] * computed["tokens"]
    flops += 12 * sizes["layers"] * sizes["attention_width"] * computed["attended"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((value for key, value in PEAK_BF16_FLOPS.items() if key in device), None)
    return {
        "variant": name,
        "device": device,
        "precision": metrics["precision"],
        "steps": metrics["steps"],
        "train_seconds": seconds,
        "pair_tokens_per_second": round(sizes["work"][False]["tokens"] / seconds, 1),
        "computed_tokens_per_second": round(computed["tokens"] / seconds, 1),
        "pairs_per_second": round(len(train) / seconds, 2),
        "peak_memory_mb": metrics["peak_memory_mb"],
        "tflops_per_second": round(flops / seconds / 1e12, 3),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        # issue 21's 9.9%: 6 * all parameters * pair tokens/s, no attention
        "mfu_issue_formula": round(6 * sizes["parameters"] * sizes["work"][False]["tokens"] / seconds / peak, 4)
        if peak
        else None,
        **{key: overrides[key] for key in ("max_tokens_per_batch",) if key in overrides},
    }


def step_times(base: Path, train: pd.DataFrame, args, repeats: int = 10) -> dict[str, float]:
    """Seconds of one training step's forward and backward on the same pairs per layout: the fastest of `repeats`,
    layouts interleaved (a busy machine's noise, which whole runs suffer from, mostly cancels)."""
    import time

    import torch

    from rm_pipeline.lib.hardware import hardware
    from rm_pipeline.lib.precision import autocast, uses_bf16
    from rm_pipeline.lib.tokenization import encode
    from rm_pipeline.lib.training.model import prepare_model
    from rm_pipeline.lib.training.packing import packed_collator, packed_rewards, resolve_batching
    from rm_pipeline.lib.training.trainer import preference_collator

    device = hardware()["device"]
    pairs = train.iloc[: args.batch_size]
    layouts = {}
    for name in ("padded", "padding-free", "shared-prompt"):
        settings = TrainingSettings(base_model=str(base), max_length=10**6, **VARIANTS[name])
        model, tokenizer, _ = prepare_model(settings)
        model.to(device).train()
        batching = resolve_batching(settings, model, device)
        chosen = encode(tokenizer, pairs["prompt"], pairs["chosen"], pairs["conversational"])
        rejected = encode(tokenizer, pairs["prompt"], pairs["rejected"], pairs["conversational"])
        examples = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(chosen, rejected)]
        if batching.packed:
            batch = packed_collator(batching.shared_prompt, batching.row_per_pair)(examples)
        else:
            batch = preference_collator(tokenizer, argparse.Namespace(pad_to_multiple_of=None))(examples)
        layouts[name] = (model, {key: value.to(device) for key, value in batch.items()})
    best = dict.fromkeys(layouts, float("inf"))
    for _ in range(repeats):
        for name, (model, batch) in layouts.items():
            started = time.perf_counter()
            with autocast(device, uses_bf16("auto", device)):
                if "last_index" in batch:
                    rewards = torch.cat(packed_rewards(model, batch, model.config._attn_implementation))
                else:
                    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            rewards.sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: round(seconds, 4) for name, seconds in best.items()}


def benchmark(args) -> list[dict]:
    from rm_pipeline.lib.tokenization import load_tokenizer

    with tempfile.TemporaryDirectory() as workdir:
        base = Path(workdir) / "decoder"
        sizes = build_decoder(base, args.shape)
        train = synthetic_pairs(args.pairs, args.length, args.prompt_length)
        sizes["work"] = layout_work(train, load_tokenizer(str(base)))
        saved = 1 - sizes["work"][True]["tokens"] / sizes["work"][False]["tokens"]
        print(json.dumps({"shape": args.shape, **{k: v for k, v in sizes.items() if k != "work"}}))
        print(json.dumps({"shared_prompt_saves_tokens": round(saved, 4), "pairs": args.pairs}))
        if args.step_times:
            print(json.dumps({"step_seconds": step_times(base, train, args)}), flush=True)
        best: dict[str, dict] = {}
        for attempt in range(args.repeat):  # interleaved: a busy machine slows every variant alike
            for name in args.variants:
                try:
                    row = run_variant(name, args, base, sizes, train, Path(workdir) / str(attempt), warm=attempt == 0)
                except RuntimeError as error:  # out of memory, say: the other variants still run
                    print(json.dumps({"attempt": attempt, "variant": name, "error": str(error)[:300]}), flush=True)
                    release_memory()
                    continue
                print(json.dumps({"attempt": attempt, **row}), flush=True)
                if name not in best or row["train_seconds"] < best[name]["train_seconds"]:
                    best[name] = row
    return [best[name] for name in args.variants if name in best]


def release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bundled_savings() -> dict:
    """Tokens the shared prompt saves on the bundled annotations as the pipeline turns them into pairs (ingest,
    aggregate, review queue, validated pairs; before the split), in a decoder's plain layout (prompt, a blank
    line, response, EOS) with the default base model's WordPiece vocabulary, the one tokenizer bundled (the shared
    prompt itself applies to decoders only)."""
    from rm_pipeline.lib.aggregation import aggregate_votes, review_queue
    from rm_pipeline.lib.annotations import read_annotations
    from rm_pipeline.lib.pairs import build_pairs
    from rm_pipeline.lib.tokenization import default_base_model, load_tokenizer, prompt_text

    paths = sorted((Path(__file__).resolve().parents[1] / "rm_pipeline" / "data" / "annotations").glob("*.jsonl"))
    comparisons = aggregate_votes(read_annotations(paths).votes).comparisons
    pairs, _ = build_pairs(comparisons, review_queue(comparisons)["item_id"], token_lengths=None)
    tokenizer = load_tokenizer(default_base_model())

    def ids(responses):
        texts = [f"{prompt_text(p, c)}\n\n{r}" for p, r, c in zip(pairs["prompt"], responses, pairs["conversational"])]
        return [row + [tokenizer.sep_token_id] for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    chosen, rejected = ids(pairs["chosen"]), ids(pairs["rejected"])
    total = sum(len(c) + len(r) for c, r in zip(chosen, rejected))
    saved = sum(shared_prefix_length(c, r) for c, r in zip(chosen, rejected))
    return {
        "bundled_pairs": len(pairs),
        "pair_tokens": total,
        "shared_prompt_tokens_saved": saved,
        "saved_share": round(saved / total, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny decoder on the CPU: ratios, not GPU speed")
    parser.add_argument("--shape", choices=list(SHAPES), default="0.5b")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--length", type=int, default=1024, help="tokens of the longer responses (512-1,024)")
    parser.add_argument("--prompt-length", type=int, default=32, help="tokens of each prompt")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--step-times", action="store_true", help="also time one step per layout (10x, fastest)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant, interleaved; the fastest kept")
    parser.add_argument("--bundled-savings", action="store_true", help="only count the bundled data's savings")
    args = parser.parse_args()
    if args.bundled_savings:
        print(json.dumps(bundled_savings()))
        return
    if args.tiny:
        args.shape = "tiny"
        args.pairs, args.length, args.prompt_length, args.batch_size = 128, 128, 64, 16
        args.repeat, args.step_times = max(args.repeat, 3), True
    rows = benchmark(args)
    padded = next((row for row in rows if row["variant"] == "padded"), None)
    if not rows:
        raise SystemExit("no variant ran to the end")
    for row in rows:
        ratio = row["pairs_per_second"] / padded["pairs_per_second"] if padded else float("nan")
        mfu = f"MFU {row['mfu']:.1%}" if row["mfu"] is not None else "MFU n/a (no GPU peak known)"
        print(
            f"{row['variant']:>13}: {row['pairs_per_second']:8.2f} pairs/s ({ratio:4.2f}x padded), "
            f"{row['pair_tokens_per_second']:10.1f} pair tokens/s, {mfu}, peak {row['peak_memory_mb']} MB"
        )


if __name__ == "__main__":
    main()
