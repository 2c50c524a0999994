"""AU detectors: anything that scores the 41 AU slots for a batch of images, and the registry of kinds.

A detector is named on the command line as ``KIND:PATH``:

* ``opengraphau:/models/OpenGraphAU-r50.pth``: the OpenGraphAU port (:mod:`synfer.models.opengraphau`),
  stage and ResNet depth read from the checkpoint's keys; occurrence probabilities;
* ``detector:runs/au/best``: a detector synfer trained (``synfer train-downstream --task aus``,
  :mod:`synfer.models.au_detector`); intensities or probabilities, as it was trained.

``annotate-aus`` writes what a detector says into an AU table, ``evaluate`` measures images with one.
Factories import torch and the model on call, so listing the kinds (``--help``) loads nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..aus import NUM_AUS
from ..registry import Registry

if TYPE_CHECKING:
    import torch


@runtime_checkable
class AUDetector(Protocol):
    """Scores [B, 41] in synfer's slot order (``synfer.aus.AU_NAMES``) for images [B, 3, H, W] in [0, 1]."""

    kind: str  # the registry name, e.g. "opengraphau"
    source: str  # where it was loaded from
    fingerprint: str  # SHA-256 of the weights file (module_sha256 for a detector built in memory)
    scores: str  # "probability" (occurrence, 0-1) or "intensity" (FACS 0-5)
    known: np.ndarray  # [41] bool: the slots it predicts; the others' scores mean nothing
    preprocessing: dict  # what it does to images (resize, crop, normalisation), recorded in AU tables
    suggested_threshold: float | None  # where its scores turn into occurrences; advice, never applied here

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 41] float32 scores on the CPU; slots outside ``known`` are 0."""
        ...


AUDetectorFactory = Callable[[str, "torch.device"], AUDetector]
AU_DETECTORS: Registry[AUDetectorFactory] = Registry("AU detector kind")


def load_au_detector(spec: str, device: str | torch.device = "cpu") -> AUDetector:
    """The detector named by ``KIND:PATH`` (e.g. ``opengraphau:/models/OpenGraphAU-r50.pth``) on ``device``."""
    from ..devices import resolve_device

    kind, path = AU_DETECTORS.parse(spec)
    return AU_DETECTORS[kind](path, resolve_device(device))


def _images_on(images: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    from ..errors import ConfigError

    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"an AU detector takes images [B, 3, H, W] in [0, 1]; got shape {list(images.shape)}")
    parameter = next(module.parameters())
    return images.to(device=parameter.device, dtype=parameter.dtype)


# -- built-in kinds ----------------------------------------------------------------------------------


class OpenGraphAUDetector:
    """OpenGraphAU (stage 1 or 2) with its test-time preprocessing: 41 occurrence probabilities."""

    kind = "opengraphau"
    scores = "probability"

    def __init__(self, model, source: str, fingerprint: str):
        from ..models.opengraphau import CROP, IMAGENET_MEAN, IMAGENET_STD, OCCURRENCE_THRESHOLD, RESIZE

        self.model = model.eval()
        self.source = source
        self.fingerprint = fingerprint
        self.known = np.ones(NUM_AUS, bool)
        self.suggested_threshold = float(OCCURRENCE_THRESHOLD)
        self.preprocessing = {
            "resize": RESIZE,  # the shorter side, as torchvision's Resize(int)
            "crop": CROP,  # centre crop
            "interpolation": "bilinear, antialiased",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "input": "RGB in [0, 1]",
            "stage": int(model.stage),
        }

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        from ..models.opengraphau import preprocess, to_synfer_slots

        parameter = next(self.model.parameters())
        # The port's preprocessing builds its normalisation constants on the CPU, so it runs there.
        pixels = preprocess(_images_on(images, self.model).float().cpu()).to(parameter.device, parameter.dtype)
        with torch.no_grad():
            probabilities = self.model(pixels)
        return torch.from_numpy(to_synfer_slots(probabilities.float().cpu()))


def opengraphau_backbone(state_dict: dict) -> str:
    """The ResNet of an OpenGraphAU state dict, from its keys: bottleneck blocks and the depth of layer 3."""
    from ..models.tv_resnet import ARCHITECTURES

    bottleneck = "backbone.layer1.0.conv3.weight" in state_dict
    blocks = len({key.split(".")[2] for key in state_dict if key.startswith("backbone.layer3.")})
    for name, (block, layers) in ARCHITECTURES.items():
        if (block.__name__ == "Bottleneck") == bottleneck and layers[2] == blocks:
            return name
    return "resnet50"  # let the strict load name what does not fit


@AU_DETECTORS.register("opengraphau")
def _load_opengraphau(path: str, device: torch.device) -> OpenGraphAUDetector:
    from ..errors import ModelLoadError
    from ..models.opengraphau import OpenGraphAU
    from ..models.torch_weights import load_strict, read_checkpoint, unwrap_state_dict
    from ..synth.au_sources import file_sha256

    source = f"OpenGraphAU checkpoint {path!r}"
    state_dict = unwrap_state_dict(read_checkpoint(path, "OpenGraphAU"), source)
    stage = 2 if any(k.startswith("head.edge_extractor.") for k in state_dict) else 1
    backbone = opengraphau_backbone(state_dict)
    model = OpenGraphAU(stage=stage, backbone=backbone)
    try:
        load_strict(model, state_dict, source)
    except ModelLoadError as error:
        raise ModelLoadError(f"{error} [read as stage {stage} with {backbone}]") from None
    return OpenGraphAUDetector(model.to(device), path, file_sha256(path))


class TrainedAUDetector:
    """An AU detector synfer trained (:class:`synfer.models.au_detector.AUDetectorModel`)."""

    kind = "detector"

    def __init__(self, model, source: str = "", fingerprint: str | None = None):
        from ..models.fingerprint import module_sha256

        self.model = model.eval()
        self.source = source
        self.fingerprint = fingerprint or module_sha256(model)
        self.scores = model.score_kind
        self.known = model.known.copy()
        self.suggested_threshold = float(model.threshold)
        self.preprocessing = model.preprocessing

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            scores = self.model.scores(_images_on(images, self.model)).float().cpu()
        return scores * torch.from_numpy(self.known).to(scores.dtype)


@AU_DETECTORS.register("detector")
def _load_trained(path: str, device: torch.device) -> TrainedAUDetector:
    from pathlib import Path

    from ..models.au_detector import WEIGHTS_NAME, load_au_detector_model
    from ..synth.au_sources import file_sha256

    model = load_au_detector_model(path, device=device)
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    return TrainedAUDetector(model, path, file_sha256(folder / WEIGHTS_NAME))
