"""Which number format the matrix multiplications run in: fp32, or bf16 autocast (fp32 weights, bf16 products).

bf16 pays only on hardware that multiplies bf16 natively: CUDA GPUs that support it, and CPUs with Intel AMX or
AVX-512 BF16 (on the 2-core Xeon this project is measured on, scoring is ~2.7x faster; BENCHMARKS.md). Elsewhere
bf16 would be emulated and slower, so "auto" means fp32 there. Knows nothing of Dagster.
"""

from __future__ import annotations

import contextlib
from typing import Literal

Precision = Literal["auto", "fp32", "bf16"]
PRECISION_HELP = (
    "auto: bf16 autocast where the hardware multiplies bf16 natively (a CUDA GPU with bf16, a CPU with AMX or "
    "AVX-512 BF16), fp32 elsewhere; fp32; bf16 (autocast: weights and saved models stay fp32)."
)

SCORING_PRECISION_HELP = (
    PRECISION_HELP + " On a GPU auto scores in fp32: scoring is cheap there, and fp32 gives the rewards TRL's "
    "trainers compute from the same directory."
)


def native_bf16(device: str) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    # torch.cpu's probes of the CPU's instruction sets (private, checked by test_dependencies)
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


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
