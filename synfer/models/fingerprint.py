"""Content fingerprints of model components, recorded in dataset manifests."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def module_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), independent of device."""
    import torch  # imported on call: the hashing helpers below serve light modules too

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # Flattened first: a 0-dim tensor (BatchNorm's step counter) cannot be viewed as bytes; the bytes are the same.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def json_sha256(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def pipeline_fingerprint(pipe) -> dict:
    """Class, parameter count and content hash of every component of a diffusers pipeline."""
    import torch

    components = {}
    for name, component in pipe.components.items():
        if component is None:
            continue
        entry = {"class": type(component).__name__}
        if isinstance(component, torch.nn.Module):
            entry["parameters"] = sum(p.numel() for p in component.parameters())
            entry["dtype"] = str(next(component.parameters()).dtype).removeprefix("torch.")
            entry["sha256"] = module_sha256(component)
        elif hasattr(component, "get_vocab"):
            entry["sha256"] = json_sha256(component.get_vocab())
        elif hasattr(component, "config"):
            # Private keys such as `_use_default_values` are bookkeeping, in no stable order.
            entry["sha256"] = json_sha256({k: v for k, v in component.config.items() if not k.startswith("_")})
        components[name] = entry
    return components
