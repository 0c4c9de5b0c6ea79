"""GPU training throughput of our reward_model path: a ~0.5B-parameter decoder in bf16.

Random weights from a config of Qwen2.5-0.5B's shape (no download), synthetic token sequences, TRL's RewardTrainer
through `train_reward_model`. Prints tokens/s and model FLOPs utilisation:
MFU = 6 * parameters * tokens/s / peak bf16 FLOP/s (dense; H100 SXM: 989 TFLOP/s).

    python bench/train_gpu_mfu.py                 # on a GPU machine
    python bench/train_gpu_mfu.py --tiny          # a smoke run of the same path on a CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from rm_pipeline.lib.training.run import train_reward_model
from rm_pipeline.lib.training.settings import TrainingSettings

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def build_decoder(folder: Path, tiny: bool) -> int:
    """A decoder of Qwen2.5-0.5B's shape (as a Llama config: AutoTokenizer would swap a Qwen2 config's
    word-level tokenizer for Qwen's own) with a word-level tokenizer, saved locally; returns its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(32_000)} | {"<unk>": 32_000, "<eos>": 32_001}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>").save_pretrained(folder)
    size = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
        if tiny
        else dict(
            hidden_size=1024,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=2,
        )
    )  # Qwen2.5-0.5B's shape
    config = LlamaConfig(
        vocab_size=len(vocab),
        max_position_embeddings=4096,
        eos_token_id=32_001,
        num_labels=1,
        tie_word_embeddings=True,
        **size,
    )
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def synthetic_pairs(n: int, length: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)

    def words(k: int) -> str:
        return " ".join(f"w{i}" for i in rng.integers(0, 32_000, k))

    lengths = rng.integers(length // 2, length, size=(n, 2))
    return pd.DataFrame(
        {
            "prompt": [words(32) for _ in range(n)],
            "chosen": [words(a) for a, _ in lengths],
            "rejected": [words(b) for _, b in lengths],
            "conversational": False,
            "strength": np.nan,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU: checks the path, not speed")
    parser.add_argument("--pairs", type=int, default=2048)
    parser.add_argument("--length", type=int, default=1024, help="tokens of the longer responses")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.tiny:
        args.pairs, args.length, args.batch_size = 32, 64, 8

    import torch

    with tempfile.TemporaryDirectory() as workdir:
        base = Path(workdir) / "decoder"
        parameters = build_decoder(base, args.tiny)
        settings = TrainingSettings(
            base_model=str(base),
            max_length=args.length + 64,
            batch_size=args.batch_size,
            epochs=1.0,
            use_margin=False,
            early_stopping_patience=None,
            logging_steps=10,
            eval_steps=10**9,
            warmup_ratio=0.0,
        )
        result = train_reward_model(
            synthetic_pairs(args.pairs, args.length),
            synthetic_pairs(8, args.length, 1),
            settings,
            Path(workdir) / "models",
            "mfu",
        )
    metrics = result.metrics
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device), None)
    mfu = 6 * parameters * metrics["tokens_per_second"] / peak if peak else None
    print(
        json.dumps(
            {
                "device": device,
                "parameters": parameters,
                "pairs": args.pairs,
                "batch_size": args.batch_size,
                "tokens_per_second": metrics["tokens_per_second"],
                "pairs_per_second": metrics["pairs_per_second"],
                "peak_memory_mb": metrics["peak_memory_mb"],
                "mfu": None if mfu is None else round(mfu, 3),
            },
            indent=2,
        )
    )
    if mfu is not None:
        print(f"MFU {mfu:.1%}: {'meets' if mfu >= 0.35 else 'misses'} the 35% target")


if __name__ == "__main__":
    main()
