"""Measures shared by training, evaluation and the benchmarks, with light imports (numpy only) so the
training child process and the benchmarks load them cheaply.

Ties. A pair whose two rewards are within ``TIE_TOLERANCE`` of each other is a *tie*: the model expressed
no preference, and it counts half right (the expected accuracy if the tie were broken by a coin flip).
"""

from __future__ import annotations

import resource
import sys

import numpy as np

TIE_TOLERANCE = 1e-6


def pair_credit(margin: np.ndarray, tie_tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """1 where the chosen answer scores higher, 0 where lower, 0.5 for a tie (|margin| <= tolerance)."""
    margin = np.asarray(margin, dtype=float)
    return np.where(np.abs(margin) <= tie_tolerance, 0.5, (margin > 0).astype(float))


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process in MiB: allocated GPU memory on ``"cuda"``, else the peak resident set.

    The resident peak is VmHWM from /proc/self/status where there is one (Linux): ru_maxrss would carry
    over the parent's peak into a child started with fork + exec. Elsewhere ru_maxrss, which is bytes on
    macOS and KiB on the other systems.
    """
    if device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / 2**20 if sys.platform == "darwin" else rss / 1024, 1)
