"""The AU detector synfer trains: a registered backbone plus a linear head over the 41 AU slots.

Images in [0, 1] -> one score per slot, either intensities (FACS 0-5, regressed) or occurrence
probabilities (0-1, a sigmoid), as the AU table it was trained on held. Like the FER classifier
(:mod:`synfer.models.classifier`), it resizes and normalises its input itself, so callers hand it
plain [B, 3, H, W] images in [0, 1].

On disk it is a folder (docs/formats.md, "AU detector folder"): ``config.json`` (format
``synfer-au-detector``: backbone and its transformers config, the slot order, the known mask, the
score kind, input size, mean, std, the suggested occurrence threshold) and ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..aus import AU_NAMES, MAX_INTENSITY, NUM_AUS
from ..errors import ConfigError, ModelLoadError
from .backbone_specs import BACKBONES
from .backbones import PooledBackbone, create_backbone

AU_DETECTOR_FORMAT = "synfer-au-detector"
AU_DETECTOR_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SCORE_KINDS = ("intensity", "probability")
# Occurrence: an intensity of at least FACS "A" (1), or a probability of at least one half.
DEFAULT_THRESHOLDS = {"intensity": 1.0, "probability": 0.5}


class AUDetectorModel(nn.Module):
    """A backbone and a linear head over the 41 slots; input [B, 3, H, W] in [0, 1], any H and W.

    ``forward`` gives raw head outputs (intensities before clamping, or logits); :meth:`scores` gives
    what the detector reports: intensities clamped to 0-5, or probabilities.
    """

    def __init__(
        self,
        backbone: PooledBackbone,
        backbone_name: str,
        input_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        scores: str = "intensity",
        known: np.ndarray | None = None,
        threshold: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if scores not in SCORE_KINDS:
            raise ConfigError(f"unknown AU score kind {scores!r} (accepted: {', '.join(SCORE_KINDS)})")
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.input_size = int(input_size)
        self.score_kind = scores
        self.known = np.ones(NUM_AUS, bool) if known is None else np.asarray(known, dtype=bool).reshape(NUM_AUS).copy()
        self.threshold = float(DEFAULT_THRESHOLDS[scores] if threshold is None else threshold)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.feature_dim, NUM_AUS)
        self._dropout_p = dropout

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to the declared input size and normalise with the declared mean and std."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(self.preprocess(images))))

    def to_scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw head outputs -> reported scores (intensities in 0-5, or probabilities)."""
        return outputs.clamp(0.0, MAX_INTENSITY) if self.score_kind == "intensity" else outputs.sigmoid()

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.to_scores(self(images))

    @property
    def preprocessing(self) -> dict:
        return {
            "resize": [self.input_size, self.input_size],
            "interpolation": "bilinear, antialiased",
            "crop": None,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "input": "RGB in [0, 1]",
        }

    # -- persistence ----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "format": AU_DETECTOR_FORMAT,
            "version": AU_DETECTOR_VERSION,
            "backbone": self.backbone_name,
            "backbone_config": self.backbone.model.config.to_dict(),
            "slots": list(AU_NAMES),
            "known": self.known.tolist(),
            "scores": self.score_kind,
            "threshold": self.threshold,
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


def create_au_detector(
    backbone: str,
    scores: str = "intensity",
    known: np.ndarray | None = None,
    weights: str | None = None,
    input_size: int | None = None,
    threshold: float | None = None,
    dropout: float = 0.0,
) -> AUDetectorModel:
    """A new AU detector: registered ``backbone``, random or pretrained ``weights``, a fresh head."""
    spec = BACKBONES[backbone]
    return AUDetectorModel(
        create_backbone(backbone, weights), backbone, input_size or spec.input_size, spec.mean, spec.std, scores, known, threshold, dropout
    )


def load_au_detector_model(path: str | Path, device: str | torch.device = "cpu") -> AUDetectorModel:
    """Load a folder written by :meth:`AUDetectorModel.save_pretrained` (safetensors only), in eval mode."""
    folder = Path(path)
    if folder.is_file() and folder.name == CONFIG_NAME:
        folder = folder.parent
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise ModelLoadError(f"{str(path)!r} is not a synfer AU detector (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as error:
        raise ModelLoadError(f"cannot read {config_file}: {error}") from None
    if config.get("format") != AU_DETECTOR_FORMAT:
        raise ModelLoadError(f"{config_file} is not a synfer AU detector config (format {config.get('format')!r})")
    if config.get("version") != AU_DETECTOR_VERSION:
        raise ModelLoadError(f"{config_file} is AU detector version {config.get('version')}; this synfer reads {AU_DETECTOR_VERSION}")
    if list(config.get("slots", [])) != list(AU_NAMES):
        raise ModelLoadError(f"{config_file} orders its AU slots differently from this synfer's 41 slots")
    model = AUDetectorModel(
        create_backbone(config["backbone"], config=config["backbone_config"]),
        config["backbone"],
        config["input_size"],
        tuple(config["mean"]),
        tuple(config["std"]),
        config["scores"],
        np.asarray(config["known"], dtype=bool),
        config.get("threshold"),
        config.get("dropout", 0.0),
    )
    state = load_file(str(weights_file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{weights_file} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()
