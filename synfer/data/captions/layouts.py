"""The registry of on-disk layouts of image-caption datasets, auto-detection, and ``open_captioned``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import DatasetError
from ...registry import Registry
from .base import CaptionedDataset


@dataclass(frozen=True)
class CaptionLayout:
    """One way an image-caption dataset lies on disk.

    ``detect(root)`` says whether ``root`` looks like this layout (cheap: a few directory listings);
    ``open(root, options)`` reads it. ``options`` is a :class:`CaptionOptions`.
    """

    name: str
    expects: str
    detect: Callable[[Path], bool]
    open: Callable[..., CaptionedDataset]


@dataclass(frozen=True)
class CaptionOptions:
    """What ``open_captioned`` passes every layout; each uses the columns that apply to it."""

    image_column: str = "image"
    caption_column: str = "caption"
    id_column: str | None = None
    strict: bool = False


# Detection tries the layouts in registration order (see the package's __init__).
CAPTION_LAYOUTS: Registry[CaptionLayout] = Registry("caption dataset layout")


def register_caption_layout(layout: CaptionLayout) -> CaptionLayout:
    return CAPTION_LAYOUTS.register(layout.name, layout)


def _expected() -> str:
    return "; ".join(f"{layout.name}: {layout.expects}" for _, layout in CAPTION_LAYOUTS.items())


def detect_caption_layout(path: str | Path) -> CaptionLayout:
    """The first registered layout ``path`` matches; an error naming every expected layout otherwise."""
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"caption dataset {str(path)!r} does not exist")
    for _, layout in CAPTION_LAYOUTS.items():
        if layout.detect(root):
            return layout
    raise DatasetError(f"{str(path)!r} matches no image-caption layout; expected one of: {_expected()}")


def open_captioned(
    path: str | Path,
    *,
    layout: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = None,
    strict: bool = False,
) -> CaptionedDataset:
    """Open an image-caption dataset, auto-detecting its layout unless ``layout`` is given.

    Layouts (``CAPTION_LAYOUTS``): ``synfer`` (a dataset from synfer generate; the prompt is the
    caption), ``imagefolder`` (Hugging Face ``metadata.jsonl`` or per-image ``.txt``), ``webdataset``
    (``*.tar`` shards) and ``parquet`` (FEText as published). ``image_column``, ``caption_column``
    and ``id_column`` name parquet columns (and the caption field of metadata and ``.json`` members).
    ``strict`` turns missing images and images without a caption into errors instead of counting
    them in ``dataset.stats``.
    """
    root = Path(path)
    if layout is None:
        chosen = detect_caption_layout(root)
    else:
        chosen = CAPTION_LAYOUTS[layout]
        if not root.exists():
            raise DatasetError(f"caption dataset {str(path)!r} does not exist")
    options = CaptionOptions(image_column, caption_column, id_column, strict)
    return chosen.open(root, options)
