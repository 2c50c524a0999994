"""Image backbones for FER / AU classifiers: one factory over the registered specs, transformers models only.

``create_backbone("resnet18")`` gives a module mapping normalised pixels [B, 3, S, S] to pooled
features [B, D]. Weights are random unless asked for: ``weights="imagenet"`` loads the registered hub
checkpoint, any other string is a hub id or a local folder. The specs live in
:mod:`synfer.models.backbone_specs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError, first_line
from .backbone_specs import BACKBONES, BackboneSpec


@dataclass(frozen=True)
class Family:
    """How to build one kind of transformers vision model and read pooled features from it."""

    config_class: Callable
    model_class: Callable
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    feature_dim: Callable[[object], int]
    model_kwargs: dict = field(default_factory=dict)


def _families() -> dict[str, Family]:
    from transformers import ConvNextConfig, ConvNextModel, ResNetConfig, ResNetModel, ViTConfig, ViTModel

    return {
        "resnet": Family(
            ResNetConfig, ResNetModel, lambda m, x: m(pixel_values=x).pooler_output.flatten(1), lambda c: c.hidden_sizes[-1]
        ),
        "convnext": Family(
            ConvNextConfig, ConvNextModel, lambda m, x: m(pixel_values=x).pooler_output, lambda c: c.hidden_sizes[-1]
        ),
        "vit": Family(
            ViTConfig,
            ViTModel,
            lambda m, x: m(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state[:, 0],
            lambda c: c.hidden_size,
            {"add_pooling_layer": False},
        ),
    }


class PooledBackbone(nn.Module):
    """A transformers vision model that returns one feature vector per image."""

    def __init__(self, family: str, model: nn.Module):
        super().__init__()
        self.family = family
        self.model = model
        self._features = _families()[family].features

    @property
    def feature_dim(self) -> int:
        return _families()[self.family].feature_dim(self.model.config)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(self.model, pixels)


def create_backbone(name: str, weights: str | None = None, config: dict | None = None) -> PooledBackbone:
    """Backbone ``name`` with random weights, ImageNet weights (``"imagenet"``), or weights from a hub id / folder.

    ``config`` (a full transformers config dict, as saved with a checkpoint) overrides the registered one.
    """
    spec: BackboneSpec = BACKBONES[name]
    family = _families()[spec.family]
    if weights is None:
        built = family.config_class.from_dict(config) if config is not None else family.config_class(**spec.config)
        return PooledBackbone(spec.family, family.model_class(built, **family.model_kwargs))
    source = spec.hub_id if weights == "imagenet" else weights
    if source is None:
        raise ConfigError(f"backbone {name!r} has no registered ImageNet weights; give a hub id or folder")
    try:
        model = family.model_class.from_pretrained(source, use_safetensors=True, **family.model_kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load {name} weights from {source!r}: {first_line(error)}") from error
    return PooledBackbone(spec.family, model)
