"""One image path for every model evaluate runs: decode to RGB, crop, resize with PIL bicubic, scale to [0, 1].

Real and generated images, and every model that sees them (feature backbones, the judge, the AU
detector), go through :class:`Preprocess`. The resize is clean-fid's (``synfer.models.inception.clean_resize``:
each channel resized on its own as a float image with PIL's bicubic filter, never quantised back to
8 bits), for every backbone, not only Inception. synfer does not use transformers' image processors
here: they switch to torchvision's resizing when torchvision is installed, so the same weights would
see different pixels on different machines, and a resize that differs between the two sides of a
comparison is itself a measurable distance (Parmar et al. 2022, "On Aliased Resizing and Surprising
Subtleties in GAN Evaluation").

Normalisation (mean and std) is the model's own and is applied to the [0, 1] tensor by the model's
wrapper, also one code path for both sides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

RESIZE_MODES = ("squash", "center-crop")
"""``squash``: the whole image resized to size x size (clean-fid's and dgm-eval's choice);
``center-crop``: the largest centred square cut out first, so that a non-square image keeps its aspect."""


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {mode!r} (accepted: {', '.join(RESIZE_MODES)})")
    return mode


@dataclass(frozen=True)
class Preprocess:
    """Decoded image -> float32 [size, size, 3] in [0, 255] (``array``) -> [B, 3, size, size] in [0, 1] (``batch``)."""

    size: int
    mode: str = "squash"
    resize: str = "pil-bicubic-float"  # the only resize: recorded so that a cache made otherwise never matches

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 8:
            raise ConfigError(f"a model input size must be an integer >= 8, got {self.size!r}")
        check_resize_mode(self.mode)

    def array(self, image: Image.Image) -> np.ndarray:
        from ..models.inception import clean_resize

        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if self.mode == "center-crop" and rgb.width != rgb.height:
            side = min(rgb.width, rgb.height)
            left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
            rgb = rgb.crop((left, top, left + side, top + side))
        return clean_resize(rgb, self.size)

    @staticmethod
    def batch(arrays: list[np.ndarray]) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().div_(255.0)

    def to_dict(self) -> dict:
        return asdict(self)
