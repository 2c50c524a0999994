"""The FER classifier interface: images in [0, 1] -> logits over a declared label set.

Semantic guidance, the relabelling ensemble and the downstream trainer all speak this interface. A
classifier declares its label set, input size, mean and std, and does its own resizing and
normalisation (differentiably), so callers hand it plain [B, 3, H, W] images in [0, 1].

On disk a classifier is a folder with ``config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelLoadError
from ..expressions import LabelSet, get_label_set, parse_expression
from .backbone_specs import BACKBONES
from .backbones import PooledBackbone, create_backbone

CLASSIFIER_FORMAT = "synfer-fer-classifier"
CLASSIFIER_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class FERClassifier(nn.Module):
    """A backbone plus a linear head over ``label_set``; input [B, 3, H, W] in [0, 1], any H and W."""

    def __init__(
        self,
        backbone: PooledBackbone,
        backbone_name: str,
        label_set: LabelSet,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.label_set = label_set
        self.input_size = int(input_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.feature_dim, label_set.num_classes)
        self._dropout_p = dropout

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to the declared input size and normalise with the declared mean and std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.preprocess(images))
        return self.head(self.dropout(features))

    def target_indices(self, labels) -> torch.Tensor:
        """Class indices for AffectNet ``labels``; a label outside the label set is an error."""
        values = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
        return torch.tensor([self.label_set.index(parse_expression(int(v))) for v in values], dtype=torch.long)

    # -- persistence ----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "format": CLASSIFIER_FORMAT,
            "version": CLASSIFIER_VERSION,
            "backbone": self.backbone_name,
            "backbone_config": self.backbone.model.config.to_dict(),
            "label_set": self.label_set.name,
            "labels": self.label_set.names,
            "input_size": self.input_size,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "dropout": self._dropout_p,
        }

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` into the folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        config = {**self.config_dict(), **(extra or {})}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


def create_classifier(
    backbone: str,
    label_set: LabelSet | str | int = "affectnet8",
    weights: str | None = None,
    input_size: int | None = None,
    dropout: float = 0.0,
) -> FERClassifier:
    """A new FER classifier: registered ``backbone``, random or pretrained ``weights``, a fresh head."""
    spec = BACKBONES[backbone]
    label_set = label_set if isinstance(label_set, LabelSet) else get_label_set(label_set)
    return FERClassifier(
        create_backbone(backbone, weights), backbone, label_set, input_size or spec.input_size, spec.mean, spec.std, dropout
    )


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> FERClassifier:
    """Load a classifier folder written by :meth:`FERClassifier.save_pretrained` (safetensors only)."""
    folder = Path(path)
    if folder.is_file() and folder.name == CONFIG_NAME:
        folder = folder.parent
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise ModelLoadError(f"{str(path)!r} is not a synfer classifier (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as error:
        raise ModelLoadError(f"cannot read {config_file}: {error}") from None
    if config.get("format") != CLASSIFIER_FORMAT:
        raise ModelLoadError(f"{config_file} is not a synfer classifier config (format {config.get('format')!r})")
    classifier = FERClassifier(
        create_backbone(config["backbone"], config=config["backbone_config"]),
        config["backbone"],
        get_label_set(config["label_set"]),
        config["input_size"],
        tuple(config["mean"]),
        tuple(config["std"]),
        config.get("dropout", 0.0),
    )
    state = load_file(str(weights_file))
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{weights_file} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return classifier.to(device).eval()
