"""FERAnno: label a face from the diffusion model's own features.

SynFER's annotator reads the frozen UNet instead of training a new backbone. An image is encoded to a
latent, noised to a small timestep (t=1 by default: nearly clean, so the features describe *this*
image) and passed once through the UNet with a neutral prompt and the image's AUs (the adapter's null
AU when they are unknown). Forward hooks collect

- the output of chosen decoder (``up_blocks``) blocks, average-pooled to a small grid, and
- the cross-attention maps of the same blocks (text tokens and AU tokens), averaged over heads and
  layers and pooled to a fixed size (:mod:`.recorder`, the one part that mirrors diffusers'
  attention internals).

:class:`FERAnnoHead` fuses the two branches with a bidirectional cross-attention block and classifies
the result over a label set. Only the head is trained (``synfer train-annotator``); on disk it is a
diffusers-style folder (``config.json`` + safetensors) whose config names the UNet, its weight hash,
the timestep, the blocks and the label set, so it can only be paired with the UNet it was trained on.

Modules: :mod:`.config` (the feature settings, no torch), :mod:`.recorder`, :mod:`.features` (the
extractor), :mod:`.head`, :mod:`.labeler` (the ensemble member).
"""

import importlib

# The command line reads FeatureConfig at start-up; the model parts (torch, diffusers) load on first use.
from .config import DEFAULT_PROMPT, FEATURES_FORMAT, FeatureConfig, parse_blocks

_LAZY = {
    "AttentionRecorder": ".recorder",
    "FERAnnoFeatures": ".recorder",
    "cross_attention_blocks": ".recorder",
    "FERAnnoFeatureExtractor": ".features",
    "BidirectionalCrossAttention": ".head",
    "FERAnnoHead": ".head",
    "load_head": ".head",
    "FERAnno": ".labeler",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PROMPT",
    "FEATURES_FORMAT",
    "AttentionRecorder",
    "BidirectionalCrossAttention",
    "FERAnno",
    "FERAnnoFeatureExtractor",
    "FERAnnoFeatures",
    "FERAnnoHead",
    "FeatureConfig",
    "cross_attention_blocks",
    "load_head",
    "parse_blocks",
]
