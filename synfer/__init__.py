"""synfer: synthetic facial-expression-recognition data from AU- and text-conditioned diffusion models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .aus import AU_NAMES, AUVector, nearest_expression, prototype
from .errors import SynferError
from .expressions import AFFECTNET7, AFFECTNET8, Expression, LabelSet

# Heavy components (torch, diffusers) load on first use, so `synfer --help` and the schemas stay fast.
_LAZY = {
    "SynFERPipeline": "synfer.pipelines.pipeline_synfer",
    "SynFEROutput": "synfer.pipelines.pipeline_synfer",
    "AUAdapter": "synfer.models.au_adapter",
    "PromptBuilder": "synfer.pipelines.prompts",
    "load_pipeline": "synfer.models.loading",
    "SemanticGuidance": "synfer.pipelines.guidance",
    "LayoutReferences": "synfer.pipelines.inversion",
}

if TYPE_CHECKING:
    from .models.au_adapter import AUAdapter
    from .models.loading import load_pipeline
    from .pipelines.pipeline_synfer import SynFEROutput, SynFERPipeline
    from .pipelines.guidance import SemanticGuidance
    from .pipelines.inversion import LayoutReferences
    from .pipelines.prompts import PromptBuilder


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synfer' has no attribute {name!r}")


__all__ = [
    "AFFECTNET7",
    "AFFECTNET8",
    "AU_NAMES",
    "AUAdapter",
    "AUVector",
    "Expression",
    "LabelSet",
    "LayoutReferences",
    "PromptBuilder",
    "SemanticGuidance",
    "SynFEROutput",
    "SynFERPipeline",
    "SynferError",
    "load_pipeline",
    "nearest_expression",
    "prototype",
    "__version__",
]
