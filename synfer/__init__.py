"""synfer: synthetic facial-expression-recognition data from AU- and text-conditioned diffusion models.

One library function per stage, each taking one frozen config and returning a result::

    annotate_aus(AnnotateConfig(...))          -> AnnotateResult       (synfer annotate-aus)
    generate(GenerateConfig(...))              -> GenerateResult       (synfer generate)
    relabel(RelabelConfig(...))                -> RelabelOutput        (synfer relabel)
    train_downstream(DownstreamConfig(...))    -> DownstreamOutput     (synfer train-downstream)
    train_annotator(AnnotatorConfig(...))      -> AnnotatorOutput      (synfer train-annotator)
    evaluate(EvaluateConfig(...))              -> EvaluateResult       (synfer evaluate)
    init_model(InitModelConfig(...))           -> InitResult           (synfer init-model)
    train_vae(VaeConfig(...))                  -> VaeResult            (synfer train-vae)
    train_lora(LoraConfig(...))                -> LoraResult           (synfer train-lora)
    train_adapter(AdapterConfig(...))          -> AdapterResult        (synfer train-adapter)
    build_model(BuildModelConfig(...))         -> BuildResult          (synfer build-model)
    make_world(WorldConfig(...), out)          -> WorldResult          (synfer world)

The command line is a thin shell over these; the models and pipelines they use are importable too.
"""

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
    "PromptBuilder": "synfer.prompts",
    "load_pipeline": "synfer.pipelines.loading",
    "SemanticGuidance": "synfer.pipelines.guidance",
    "LayoutInit": "synfer.pipelines.inversion",
    "LayoutReferences": "synfer.pipelines.inversion",
    "GenerateConfig": "synfer.synth.generate",
    "GenerateResult": "synfer.synth.generate",
    "generate": "synfer.synth.generate",
    "RelabelConfig": "synfer.labelers.relabel",
    "RelabelOutput": "synfer.labelers.relabel",
    "relabel": "synfer.labelers.relabel",
    "DownstreamConfig": "synfer.train.downstream",
    "DownstreamOutput": "synfer.train.downstream",
    "train_downstream": "synfer.train.downstream",
    "AnnotateConfig": "synfer.labelers.annotate_aus",
    "AnnotateResult": "synfer.labelers.annotate_aus",
    "annotate_aus": "synfer.labelers.annotate_aus",
    "EvaluateConfig": "synfer.eval.evaluate",
    "EvaluateResult": "synfer.eval.evaluate",
    "evaluate": "synfer.eval.evaluate",
    "AnnotatorConfig": "synfer.train.annotator",
    "AnnotatorOutput": "synfer.train.annotator",
    "train_annotator": "synfer.train.annotator",
    # The defining modules, so that each name resolves without a detour through its package's own lazy table.
    "InitModelConfig": "synfer.train.diffusion.config",
    "InitResult": "synfer.train.diffusion.new_base",
    "init_model": "synfer.train.diffusion.new_base",
    "VaeConfig": "synfer.train.diffusion.config",
    "VaeResult": "synfer.train.diffusion.vae",
    "train_vae": "synfer.train.diffusion.vae",
    "LoraConfig": "synfer.train.diffusion.config",
    "LoraResult": "synfer.train.diffusion.lora",
    "train_lora": "synfer.train.diffusion.lora",
    "AdapterConfig": "synfer.train.diffusion.config",
    "AdapterResult": "synfer.train.diffusion.adapter",
    "train_adapter": "synfer.train.diffusion.adapter",
    "BuildModelConfig": "synfer.train.diffusion.config",
    "BuildResult": "synfer.train.diffusion.build",
    "build_model": "synfer.train.diffusion.build",
    "WorldConfig": "synfer.world.make",
    "WorldResult": "synfer.world.make",
    "make_world": "synfer.world.make",
}

if TYPE_CHECKING:
    from .eval.evaluate import EvaluateConfig, EvaluateResult, evaluate
    from .labelers.annotate_aus import AnnotateConfig, AnnotateResult, annotate_aus
    from .labelers.relabel import RelabelConfig, RelabelOutput, relabel
    from .models.au_adapter import AUAdapter
    from .pipelines.guidance import SemanticGuidance
    from .pipelines.inversion import LayoutInit, LayoutReferences
    from .pipelines.loading import load_pipeline
    from .pipelines.pipeline_synfer import SynFEROutput, SynFERPipeline
    from .prompts import PromptBuilder
    from .synth.generate import GenerateConfig, GenerateResult, generate
    from .train.annotator import AnnotatorConfig, AnnotatorOutput, train_annotator
    from .train.diffusion.adapter import AdapterResult, train_adapter
    from .train.diffusion.build import BuildResult, build_model
    from .train.diffusion.config import AdapterConfig, BuildModelConfig, InitModelConfig, LoraConfig, VaeConfig
    from .train.diffusion.lora import LoraResult, train_lora
    from .train.diffusion.new_base import InitResult, init_model
    from .train.diffusion.vae import VaeResult, train_vae
    from .train.downstream import DownstreamConfig, DownstreamOutput, train_downstream
    from .world.make import WorldConfig, WorldResult, make_world


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synfer' has no attribute {name!r}")


__all__ = [
    "__version__",
    "AdapterConfig",
    "AdapterResult",
    "AFFECTNET7",
    "AFFECTNET8",
    "annotate_aus",
    "AnnotateConfig",
    "AnnotateResult",
    "AnnotatorConfig",
    "AnnotatorOutput",
    "AU_NAMES",
    "AUAdapter",
    "AUVector",
    "build_model",
    "BuildModelConfig",
    "BuildResult",
    "DownstreamConfig",
    "DownstreamOutput",
    "evaluate",
    "EvaluateConfig",
    "EvaluateResult",
    "Expression",
    "generate",
    "GenerateConfig",
    "GenerateResult",
    "init_model",
    "InitModelConfig",
    "InitResult",
    "LabelSet",
    "LayoutInit",
    "LayoutReferences",
    "load_pipeline",
    "LoraConfig",
    "LoraResult",
    "make_world",
    "nearest_expression",
    "PromptBuilder",
    "prototype",
    "relabel",
    "RelabelConfig",
    "RelabelOutput",
    "SemanticGuidance",
    "SynferError",
    "SynFEROutput",
    "SynFERPipeline",
    "train_adapter",
    "train_annotator",
    "train_downstream",
    "train_lora",
    "train_vae",
    "VaeConfig",
    "VaeResult",
    "WorldConfig",
    "WorldResult",
]
