"""An AVX2-only CPU, emulated (`bench/main_job.py --avx2-only` puts this folder on PYTHONPATH, so every Python
process of the job imports it): torch's probes answer that the CPU has neither AMX nor AVX-512 BF16, so
`precision: auto` resolves to fp32, and the job sets ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and
MKL_ENABLE_INSTRUCTIONS so that PyTorch's, oneDNN's and MKL's kernels use AVX2 at most."""

import torch.cpu

torch.cpu._is_amx_tile_supported = lambda: False
torch.cpu._is_avx512_bf16_supported = lambda: False
