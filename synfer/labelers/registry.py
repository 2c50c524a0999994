"""Labelers: anything that gives class probabilities for a batch of images, and a registry of kinds.

A labeler is named on the command line as ``KIND:PATH`` (``classifier:runs/resnet``,
``feranno:runs/annotator``); :func:`load_labeler` looks the kind up in :data:`LABELER_KINDS`. A new kind
is one :func:`register_labeler` call, not another branch in the commands that use labelers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..errors import ConfigError
from ..expressions import LabelSet


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


LabelerFactory = Callable[[str, torch.device], Labeler]
LABELER_KINDS: dict[str, LabelerFactory] = {}


def register_labeler(kind: str) -> Callable[[LabelerFactory], LabelerFactory]:
    """Decorator: ``factory(path, device)`` builds a labeler of ``kind``."""

    def decorate(factory: LabelerFactory) -> LabelerFactory:
        if kind in LABELER_KINDS:
            raise ConfigError(f"labeler kind {kind!r} is already registered")
        LABELER_KINDS[kind] = factory
        return factory

    return decorate


def parse_labeler_spec(spec: str) -> tuple[str, str]:
    """``"KIND:PATH"`` -> (kind, path), checking that the kind is registered."""
    kind, sep, path = spec.partition(":")
    if not sep or not path or not kind:
        raise ConfigError(f"a labeler is KIND:PATH, got {spec!r} (kinds: {', '.join(sorted(LABELER_KINDS))})")
    if kind not in LABELER_KINDS:
        raise ConfigError(f"unknown labeler kind {kind!r} in {spec!r} (accepted: {', '.join(sorted(LABELER_KINDS))})")
    return kind, path


def load_labeler(spec: str, device: str | torch.device = "cpu") -> Labeler:
    kind, path = parse_labeler_spec(spec)
    return LABELER_KINDS[kind](path, torch.device(device) if isinstance(device, str) else device)


# -- built-in kinds ----------------------------------------------------------------------------------


class ClassifierLabeler:
    """A FER classifier (``synfer.labelers.classifier``) as a labeler: softmax over its logits."""

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

    @torch.no_grad()
    def predict(self, batch: LabelBatch) -> torch.Tensor:
        parameter = next(self.classifier.parameters())
        logits = self.classifier(batch.images.to(device=parameter.device, dtype=parameter.dtype))
        return logits.float().softmax(dim=-1).cpu()


@register_labeler("classifier")
def _load_classifier(path: str, device: torch.device) -> ClassifierLabeler:
    from .classifier import load_classifier

    return ClassifierLabeler(load_classifier(path, device=device), source=path)


@register_labeler("feranno")
def _load_feranno(path: str, device: torch.device) -> Labeler:
    from .feranno import FERAnno  # diffusers and the diffusion model load only when asked for

    return FERAnno.from_pretrained(path, device=device)
