"""What the machine this process runs on can do, and what it used: device, native bf16, peak memory.

torch's private probes of the CPU's instruction sets are reached only through ``cpu_multiplies_bf16``,
which test_dependencies checks against the installed torch. Knows nothing of Dagster.
"""

from __future__ import annotations

import resource
import sys


def cpu_multiplies_bf16() -> bool:
    """Whether the CPU has Intel AMX or AVX-512 BF16: torch.cpu's private probes, wrapped here alone."""
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


# Minutes the main job takes on the bundled data with the default settings, by what multiplies bf16 (2 cores,
# quiet; BENCHMARKS.md "Quickstart"): printed before a run, so a user knows what to expect.
MAIN_JOB_MINUTES = {"cuda": (1, 3), "amx": (2, 4), "avx512_bf16": (4, 6), "fp32": (6, 9)}
MAIN_JOB_MACHINES = {
    "cuda": "a CUDA GPU",
    "amx": "a CPU with Intel AMX",
    "avx512_bf16": "a CPU with AVX-512 BF16",
    "fp32": "a CPU without native bf16",
}


def main_job_machine() -> str:
    """Which row of MAIN_JOB_MINUTES this machine is."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    return "avx512_bf16" if cpu_multiplies_bf16() else "fp32"


def native_bf16(device: str) -> bool:
    """Whether `device` ("cuda" or "cpu") multiplies bf16 in hardware."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_multiplies_bf16()


def hardware() -> dict:
    import torch

    if torch.cuda.is_available():
        return {
            "device": "cuda",
            "device_name": torch.cuda.get_device_name(0),
            "gpus": torch.cuda.device_count(),
            "bf16": native_bf16("cuda"),
        }
    return {
        "device": "cpu",
        "device_name": "cpu",
        "gpus": 0,
        "bf16": native_bf16("cpu"),
        "threads": torch.get_num_threads(),
    }


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
