"""Labelers: anything that gives class probabilities for a batch of images, and the registry of kinds.

A labeler is named on the command line as ``KIND:PATH`` (``classifier:runs/resnet``,
``feranno:runs/annotator``); :func:`load_labeler` looks the kind up in :data:`LABELERS`. A new kind is
one ``LABELERS.register`` call, not another branch in the commands that use labelers. Factories import
their models on call, so listing the kinds loads no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..expressions import LabelSet
from ..registry import Registry

if TYPE_CHECKING:
    import torch


@dataclass
class LabelBatch:
    """What a labeler sees: images [B, 3, H, W] in [0, 1] and, when known, their AUs.

    ``aus`` holds intensities [B, 41] (0-5) and ``au_known`` [B, 41] says which slots are known; both are
    None when the images come without AUs (real photos).
    """

    images: torch.Tensor
    aus: torch.Tensor | None = None
    au_known: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]


@runtime_checkable
class Labeler(Protocol):
    """Probabilities over :attr:`label_set` for a :class:`LabelBatch`."""

    kind: str  # the registry name, e.g. "classifier"
    source: str  # where it was loaded from
    label_set: LabelSet

    @property
    def fingerprint(self) -> str:
        """A content hash of everything that decides the predictions (weights, settings)."""
        ...

    def predict(self, batch: LabelBatch) -> torch.Tensor:
        """[B, label_set.num_classes] probabilities (rows sum to 1), float32 on the CPU."""
        ...


LabelerFactory = Callable[[str, "torch.device"], Labeler]
LABELERS: Registry[LabelerFactory] = Registry("labeler kind")


def load_labeler(spec: str, device: str | torch.device = "cpu") -> Labeler:
    """The labeler named by ``KIND:PATH`` (e.g. ``classifier:runs/resnet``) on ``device``."""
    from ..devices import resolve_device

    kind, path = LABELERS.parse(spec)
    return LABELERS[kind](path, resolve_device(device))


# -- built-in kinds ----------------------------------------------------------------------------------


class ClassifierLabeler:
    """A FER classifier (``synfer.models.classifier``) as a labeler: softmax over its logits."""

    kind = "classifier"

    def __init__(self, classifier, source: str = ""):
        from ..models.fingerprint import module_sha256

        self.classifier = classifier.eval()
        self.source = source
        self._fingerprint = module_sha256(classifier)

    @property
    def label_set(self) -> LabelSet:
        return self.classifier.label_set

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def predict(self, batch: LabelBatch) -> torch.Tensor:
        import torch

        parameter = next(self.classifier.parameters())
        with torch.no_grad():
            logits = self.classifier(batch.images.to(device=parameter.device, dtype=parameter.dtype))
        return logits.float().softmax(dim=-1).cpu()


@LABELERS.register("classifier")
def _load_classifier(path: str, device: torch.device) -> ClassifierLabeler:
    from ..models.classifier import load_classifier

    return ClassifierLabeler(load_classifier(path, device=device), source=path)


@LABELERS.register("feranno")
def _load_feranno(path: str, device: torch.device) -> Labeler:
    from .feranno import FERAnno  # diffusers and the diffusion model load only when asked for

    return FERAnno.from_pretrained(path, device=device)
