"""The registered image backbones for FER / AU classifiers: names, transformers configs, ImageNet hub ids.

A spec is plain data, so that listing the backbones (``--help``) needs no torch; the modules are built
by :func:`synfer.models.backbones.create_backbone`. The ``tiny-*`` entries exist for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    config: dict  # keyword arguments of the family's transformers config, for random init
    hub_id: str | None = None  # ImageNet weights
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


BACKBONES: Registry[BackboneSpec] = Registry("backbone")

for _spec in (
    BackboneSpec("resnet18", "resnet", {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512], "layer_type": "basic"},
                 "microsoft/resnet-18"),
    BackboneSpec("resnet50", "resnet", {"depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048], "layer_type": "bottleneck"},
                 "microsoft/resnet-50"),
    BackboneSpec("convnext-tiny", "convnext", {"depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768]}, "facebook/convnext-tiny-224"),
    BackboneSpec("vit-base", "vit", {"image_size": 224, "patch_size": 16}, "google/vit-base-patch16-224-in21k",
                 mean=(0.5,) * 3, std=(0.5,) * 3),
    # Small images on a CPU (the procedural world): a ResNet a tenth of ResNet-18's width, random init.
    BackboneSpec("resnet-small", "resnet", {"embedding_size": 32, "depths": [1, 1, 1, 1], "hidden_sizes": [32, 64, 128, 256],
                                           "layer_type": "basic"}, input_size=64),
    # Tiny configs: random weights, milliseconds per batch on a CPU, for tests and smoke runs.
    BackboneSpec("tiny-resnet", "resnet", {"embedding_size": 8, "depths": [1, 1], "hidden_sizes": [8, 16], "layer_type": "basic"},
                 input_size=32),
    BackboneSpec("tiny-convnext", "convnext", {"depths": [1, 1], "hidden_sizes": [8, 16], "num_stages": 2}, input_size=32),
    BackboneSpec("tiny-vit", "vit", {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "intermediate_size": 32},
                 input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3),
):
    BACKBONES.register(_spec.name, _spec)
