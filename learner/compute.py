"""Where and how CLIP's forward pass runs: the precision on a device, and CPU threads."""

from __future__ import annotations

import os
from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # torch's
ClipPrecision = Literal["auto", "fp32", "bf16", "fp16", "int8"]  # CLIP_PRECISION: + int8 (OpenVINO)
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def resolve_precision(precision: str, device: torch.device) -> str:
    """Resolve "auto" to the fastest full-quality precision on ``device``; check the others.

    CUDA: bf16 where supported, else fp16. CPU: bf16 when the CPU has native bf16 dot products
    (AVX-512 BF16 or AMX; ~2x faster than fp32 on ViT-B/32), else fp32 (emulated bf16 is slower
    than fp32). fp16 on a CPU is allowed when asked for, never chosen.
    """
    if precision not in get_args(Precision):
        raise ValueError(f"precision must be one of {get_args(Precision)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity on Linux), at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_torch_threads() -> int:
    """CPU threads for the forward pass when not set: every usable core but one, at least one.

    The spare core keeps the event loop, downloads and decoding of the next images going
    while a forward pass runs; on a busy 2-core machine one torch thread is also the faster
    one (OpenMP threads that wait for each other lose more than the second core gives).
    """
    return max(1, usable_cores() - 1)
