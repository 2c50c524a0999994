"""Devices and dtypes by name, as the command line gives them (``--device auto``, ``--dtype bfloat16``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU) or any name torch accepts."""
    import torch  # imported on call: available_cpus() and the names serve the command line, which loads no torch

    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r} (accepted: auto, cpu, cuda, cuda:N, mps)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA GPU is available (use --device cpu)")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 elsewhere."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} (accepted: auto, {', '.join(DTYPES)})")
    return getattr(torch, dtype)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity masks
        return max(1, os.cpu_count() or 1)
