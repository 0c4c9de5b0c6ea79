"""Which number format the matrix multiplications run in: fp32, or bf16 autocast (fp32 weights, bf16 products).

bf16 pays only on hardware that multiplies bf16 natively: CUDA GPUs that support it, and CPUs with Intel AMX or
AVX-512 BF16 (on the 2-core Xeon this project is measured on, scoring is ~2.7x faster; BENCHMARKS.md). Elsewhere
bf16 would be emulated and slower, so "auto" means fp32 there. Knows nothing of Dagster.
"""

from __future__ import annotations

import contextlib
from typing import Literal

from rm_pipeline.lib.hardware import native_bf16

Precision = Literal["auto", "fp32", "bf16"]
PRECISION_HELP = (
    "auto: bf16 autocast where the hardware multiplies bf16 natively (a CUDA GPU with bf16, a CPU with AMX or "
    "AVX-512 BF16), fp32 elsewhere; fp32; bf16 (autocast: weights and saved models stay fp32)."
)

SCORING_PRECISION_HELP = (
    PRECISION_HELP + " On a GPU auto scores in fp32: scoring is cheap there, and fp32 gives the rewards TRL's "
    "trainers compute from the same directory."
)


def uses_bf16(precision: Precision, device: str) -> bool:
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def scores_in_bf16(precision: Precision, device: str) -> bool:
    """Scoring's reading of `precision` (SCORING_PRECISION_HELP)."""
    return uses_bf16(precision, device) if device == "cpu" else precision == "bf16"


def autocast(device: str, bf16: bool):
    """bf16 autocast on `device` when asked, else nothing."""
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def head_module_name(model) -> str:
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return name
    raise ValueError(f"{type(model).__name__} has no `score` or `classifier` head")


def head_in_fp32(model) -> None:
    """The score head computes in fp32 even under autocast: a bf16 reward keeps 3 significant digits, which
    would round nearby rewards into ties (and the loss's differences with them)."""
    import torch

    def fp32_output(module, inputs, _):
        with torch.autocast(device_type=inputs[0].device.type, enabled=False):
            return module.forward(*(x.float() for x in inputs))

    getattr(model, head_module_name(model)).register_forward_hook(fp32_output)


FP32_SDPA = "sdpa_in_fp32"  # the name our attention function is registered under with transformers


def attention_in_fp32(model) -> None:
    """Attention (PyTorch's scaled-dot-product kernel) in fp32 when gradients are computed, while the matrix
    products around it stay under bf16 autocast: on a CPU, torch 2.13's flash-attention backward is ~5x slower in
    bf16 than in fp32, which made bf16 training only 1.6x faster than fp32 instead of 2.1x (BENCHMARKS.md).
    Without gradients (evaluations) attention stays bf16, as in scoring. Models that don't use SDPA are left as
    they are."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
        if not torch.is_grad_enabled():  # evaluating: the forward kernel is fast in bf16
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        with torch.autocast(device_type=query.device.type, enabled=False):
            output, weights = sdpa_attention_forward(
                module, query.float(), key.float(), value.float(), attention_mask, **kwargs
            )
        return output.to(query.dtype), weights

    if model.config._attn_implementation == "sdpa":
        AttentionInterface.register(FP32_SDPA, sdpa_in_fp32)
        ALL_MASK_ATTENTION_FUNCTIONS.register(FP32_SDPA, sdpa_mask)  # unregistered, padding would not be masked
        model.set_attn_implementation(FP32_SDPA)
