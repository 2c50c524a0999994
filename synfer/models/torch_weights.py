"""Read published torch checkpoints (``.pth``) and load them strictly, with one-line errors.

Ported reference models (OpenGraphAU, the FID Inception) ship their weights as pickled torch files.
They are read with ``torch.load(weights_only=True)`` only, so a file that holds anything but tensors
and plain containers is refused rather than executed. Loading is strict: every key present, none
extra, every shape equal; a mismatch says how many keys differ and names the first few.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, first_line

_SHOWN = 3  # how many offending keys an error names


def _first(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def read_checkpoint(path: str | os.PathLike, what: str) -> Any:
    """The object stored in the torch file at ``path`` (on the CPU), read with ``weights_only=True``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelLoadError(f"{what} checkpoint {str(path)!r} does not exist (give the path of its .pth file)")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" in str(error).lower():
            raise ModelLoadError(
                f"{str(path)!r} holds Python objects other than tensors and plain containers; "
                f"synfer reads {what} weights with torch.load(weights_only=True) only"
            ) from error
        raise ModelLoadError(f"{str(path)!r} is not a torch checkpoint: {first_line(error)}") from error
    except Exception as error:  # a damaged or foreign file fails in many ways inside the unpickler
        raise ModelLoadError(f"{str(path)!r} is not a torch checkpoint: {first_line(error)}") from error


def unwrap_state_dict(
    obj: Any, source: str, *, wrapper_keys: tuple[str, ...] = ("state_dict",), strip_prefix: str = "module."
) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint, with the ``DataParallel`` prefix removed.

    ``obj`` is either a state dict (every value a tensor) or a dict holding one under a key of
    ``wrapper_keys`` (training scripts save ``{"epoch", "state_dict", "optimizer"}``).
    """
    if isinstance(obj, Mapping):
        for key in wrapper_keys:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        kind = "an empty dict" if isinstance(obj, Mapping) else type(obj).__name__
        raise ModelLoadError(f"{source} holds {kind}, not a state dict (name -> tensor)")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelLoadError(
            f"{source} is not a state dict: {len(not_tensors)} entries are not tensors (first: {_first(not_tensors)}); "
            f"a wrapped checkpoint keeps its weights under {', '.join(repr(k) for k in wrapper_keys)}"
        )
    return {(k[len(strip_prefix) :] if strip_prefix and k.startswith(strip_prefix) else k): v for k, v in obj.items()}


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module``: every key, no extra ones, equal shapes; else one clear line.

    A BatchNorm ``num_batches_tracked`` missing from an old checkpoint is filled in by torch itself
    (as ``load_state_dict(strict=True)`` allows); it plays no part at inference.
    """
    name = type(module).__name__
    expected = module.state_dict()
    wrong = [
        f"{k} {list(v.shape)} (model {list(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise ModelLoadError(f"{source} does not fit {name}: {len(wrong)} tensors have other shapes ({_first(wrong)})")
    result = module.load_state_dict(dict(state_dict), strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} keys missing (first: {_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {_first(unexpected)})")
        raise ModelLoadError(f"{source} does not fit {name}: {'; '.join(parts)}")
