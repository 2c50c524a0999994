"""Image backbones for FER / AU classifiers: one registry, one factory, transformers models only.

``create_backbone("resnet18")`` gives a module mapping normalised pixels [B, 3, S, S] to pooled
features [B, D]. Weights are random unless asked for: ``weights="imagenet"`` loads the registered hub
checkpoint, any other string is a hub id or a local folder. The ``tiny-*`` entries exist for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    config: dict  # keyword arguments of the family's transformers config, for random init
    hub_id: str | None = None  # ImageNet weights
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise ConfigError(f"backbone {spec.name!r} is already registered")
    BACKBONES[spec.name] = spec
    return spec


for _spec in (
    BackboneSpec("resnet18", "resnet", {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512], "layer_type": "basic"}, "microsoft/resnet-18"),
    BackboneSpec("resnet50", "resnet", {"depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048], "layer_type": "bottleneck"}, "microsoft/resnet-50"),
    BackboneSpec("convnext-tiny", "convnext", {"depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768]}, "facebook/convnext-tiny-224"),
    BackboneSpec("vit-base", "vit", {"image_size": 224, "patch_size": 16}, "google/vit-base-patch16-224-in21k", mean=(0.5,) * 3, std=(0.5,) * 3),
    # Tiny configs: random weights, milliseconds per batch on a CPU, for tests and smoke runs.
    BackboneSpec("tiny-resnet", "resnet", {"embedding_size": 8, "depths": [1, 1], "hidden_sizes": [8, 16], "layer_type": "basic"}, input_size=32),
    BackboneSpec("tiny-convnext", "convnext", {"depths": [1, 1], "hidden_sizes": [8, 16], "num_stages": 2}, input_size=32),
    BackboneSpec("tiny-vit", "vit", {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3),
):
    register_backbone(_spec)


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


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r} (accepted: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def create_backbone(name: str, weights: str | None = None, config: dict | None = None) -> PooledBackbone:
    """Backbone ``name`` with random weights, ImageNet weights (``"imagenet"``), or weights from a hub id / folder.

    ``config`` (a full transformers config dict, as saved with a checkpoint) overrides the registered one.
    """
    spec = backbone_spec(name)
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
