"""FERAnno as an ensemble member: the diffusion components (inside the extractor) plus a trained head."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import ModelLoadError
from ...expressions import LabelSet
from ...models.fingerprint import json_sha256, module_sha256
from ..base import LabelBatch
from .config import FeatureConfig
from .features import FERAnnoFeatureExtractor
from .head import FERAnnoHead, load_head

logger = logging.getLogger(__name__)


@dataclass
class FERAnno:
    """A FERAnno labeler: the diffusion components (inside ``extractor``) plus a trained head.

    It follows the :class:`~synfer.labelers.base.Labeler` protocol, so it can be an ensemble member.
    """

    extractor: FERAnnoFeatureExtractor
    head: FERAnnoHead
    source: str = ""
    kind: str = field(default="feranno", init=False)

    def __post_init__(self):
        self.head.check_compatible(self.extractor)
        self.head.to(self.extractor.device).eval()

    @property
    def label_set(self) -> LabelSet:
        return self.head.label_set

    @property
    def fingerprint(self) -> str:
        return json_sha256({"head": module_sha256(self.head), "extractor": self.extractor.spec()})

    @torch.no_grad()
    def predict_proba(
        self, images: torch.Tensor, aus: torch.Tensor | None = None, au_known: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Probabilities [B, classes] over :attr:`label_set` for images [B, 3, H, W] in [0, 1] (float32, CPU)."""
        features = self.extractor(images, aus, au_known).to(device=self.extractor.device, dtype=torch.float32)
        logits = self.head(features.features, features.attention)
        return logits.float().softmax(dim=-1).cpu()

    def predict(self, batch: LabelBatch) -> torch.Tensor:
        return self.predict_proba(batch.images, batch.aus, batch.au_known)

    def save_pretrained(self, path: str | Path) -> None:
        self.head.save_pretrained(path, safe_serialization=True)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        pipe=None,
        device: str | torch.device | None = "auto",
        dtype: str | None = None,
    ) -> FERAnno:
        """Load a head folder and the diffusion model it names (or ``pipe``), checking the weight hashes.

        ``dtype`` defaults to the one the head was trained with, so that the hashes can be checked.
        """
        head = load_head(path)
        spec = head.config.extractor or {}
        if pipe is None:
            from ...pipelines.loading import load_pipeline

            model = spec.get("model") or {}
            if not model.get("name"):
                raise ModelLoadError(f"FERAnno head {str(path)!r} does not name its diffusion model; pass pipe=")
            pipe = load_pipeline(
                model["name"], model.get("adapter"), device=device, dtype=dtype or spec.get("dtype"), seed=model.get("seed", 0)
            )
        extractor = FERAnnoFeatureExtractor(pipe, FeatureConfig.from_dict(spec["config"]), model=spec.get("model"))
        _check_weights(path, spec, extractor)
        return cls(extractor, head, source=str(path))


def _check_weights(path, spec: dict, extractor: FERAnnoFeatureExtractor) -> None:
    """The head is only meaningful on the UNet (and adapter) it was trained on: compare weight hashes."""
    if spec.get("dtype") != str(extractor.dtype).removeprefix("torch."):
        logger.warning(
            "FERAnno head %s was trained with a %s UNet and runs with %s: weight hashes are not compared",
            path, spec.get("dtype"), extractor.dtype,
        )
        return
    actual = extractor.spec()
    for key in ("unet_sha256", "au_adapter_sha256", "text_encoder_sha256", "vae_sha256"):
        if spec.get(key) != actual[key]:
            component = key.removesuffix("_sha256")
            raise ModelLoadError(
                f"FERAnno head {str(path)!r} was trained on a different {component} "
                f"(sha256 {str(spec.get(key))[:12]}…, this model's is {str(actual[key])[:12]}…)"
            )
