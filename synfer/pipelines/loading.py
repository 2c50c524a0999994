"""Resolve ``--model`` / ``--adapter`` into a ready :class:`SynFERPipeline`.

A model is ``tiny`` (the random-weight smoke-test preset), ``world`` (the trained procedural-world model
that ships with synfer, :mod:`synfer.assets`), a local diffusers folder (a full synfer model, or a
Stable Diffusion 1.5 folder used with a separate adapter folder), or a hub id. Weights are
read as safetensors only, and no remote code runs.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ..assets import resolve_model
from ..devices import resolve_device, resolve_dtype
from ..errors import ModelLoadError, first_line
from ..models.tiny import TINY_NAME, tiny_components

logger = logging.getLogger(__name__)

MODEL_ENV = "SYNFER_MODEL"
TINY_WARNING = "model 'tiny' is a smoke-test model with random weights: its images are not faces"
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

NO_MODEL_MESSAGE = (
    "no model given: pass --model PATH (a synfer model folder, or a Stable Diffusion 1.5 folder with "
    f"--adapter DIR, or a hub id) or set {MODEL_ENV}; --model world is the trained procedural-world model, "
    "--model tiny a random-weight smoke test"
)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a model hub id (``org/name``) rather than a local path."""
    return bool(_HUB_ID_PATTERN.match(name)) and not name.startswith((".", "~"))


def tiny_pipeline(seed: int = 0):
    """The tiny SynFER pipeline (random weights, CPU, float32) for smoke tests."""
    from .pipeline_synfer import SynFERPipeline

    logger.warning(TINY_WARNING)
    pipe = SynFERPipeline(**tiny_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def resolve_model_name(model: str | None) -> str:
    """The ``--model`` value, falling back to ``$SYNFER_MODEL``; an error when neither is set."""
    model = model or os.environ.get(MODEL_ENV)
    if not model:
        raise ModelLoadError(NO_MODEL_MESSAGE)
    return model


def adapter_folder(path: str | os.PathLike) -> Path:
    """``path`` as an AU adapter folder; an error, before anything is read, when it is not one."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelLoadError(f"AU adapter folder {str(path)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{str(path)!r} is not an AU adapter folder (no config.json)")
    return folder


def load_au_adapter(path: str | os.PathLike):
    """An :class:`AUAdapter` from a folder with ``config.json`` and safetensors weights."""
    from ..models.au_adapter import AUAdapter

    folder = adapter_folder(path)
    try:
        return AUAdapter.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the AU adapter from {str(path)!r}: {first_line(error)}") from error


def model_source(name: str) -> tuple[str, bool]:
    """Where the pipeline folder or hub id ``name`` loads from, and whether only local files may be read.

    Reads no weights, so commands call it before anything slow to refuse a mistyped ``--model`` at once.
    """
    local = Path(resolve_model(name)).expanduser()
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise ModelLoadError(
                f"{name!r} is not a diffusers pipeline folder (no model_index.json); "
                "give a synfer model or a Stable Diffusion 1.5 folder"
            )
        return str(local), True
    if is_hub_id(name):
        return name, bool(os.environ.get("HF_HUB_OFFLINE"))
    raise ModelLoadError(f"model folder {name!r} does not exist (and it is not a hub id such as org/name)")


def load_pipeline(
    model: str | None,
    adapter: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | None = "auto",
    seed: int = 0,
):
    """A :class:`SynFERPipeline` on ``device``, from ``tiny``, a local folder or a hub id.

    ``adapter`` (a folder) replaces the model's own adapter, or adds one to a plain SD1.5 folder.
    """
    from .pipeline_synfer import SynFERPipeline

    name = resolve_model_name(model)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    extra = {} if adapter is None else {"au_adapter": load_au_adapter(adapter)}

    if name == TINY_NAME:
        pipe = tiny_pipeline(seed)
        if "au_adapter" in extra:
            pipe.load_au_adapter(extra["au_adapter"])
        if torch_dtype != torch.float32:
            pipe.to(dtype=torch_dtype)
    else:
        source, local_only = model_source(name)
        try:
            pipe = SynFERPipeline.from_pretrained(
                source, dtype=torch_dtype, use_safetensors=True, local_files_only=local_only, **extra
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelLoadError(f"could not load model {name!r}: {first_line(error)}") from error
        pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
