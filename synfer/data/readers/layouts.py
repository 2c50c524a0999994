"""The registry of on-disk layouts of labelled FER datasets, auto-detection, and ``open_labelled``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, DatasetError
from ...expressions import LabelSet, get_label_set
from ...registry import Registry
from .base import LabelledDataset


@dataclass(frozen=True)
class Layout:
    """One way a FER dataset lies on disk.

    ``detect(root)`` says whether ``root`` looks like this layout (cheap: a few stat calls);
    ``open(root, split, label_set, strict, **options)`` reads it and names any file it expected
    but did not find. ``options`` are the extra keyword options it understands.
    """

    name: str
    expects: str
    detect: Callable[[Path], bool]
    open: Callable[..., LabelledDataset]
    options: tuple[str, ...] = ()


# Detection tries the layouts in registration order (see the package's __init__).
LAYOUTS: Registry[Layout] = Registry("dataset layout")


def register_layout(layout: Layout) -> Layout:
    return LAYOUTS.register(layout.name, layout)


def _expected() -> str:
    return "; ".join(f"{layout.name}: {layout.expects}" for _, layout in LAYOUTS.items())


def detect_layout(path: str | Path) -> Layout:
    """The first registered layout that ``path`` matches; an error naming every expected layout otherwise."""
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset {str(path)!r} does not exist")
    for _, layout in LAYOUTS.items():
        if layout.detect(root):
            return layout
    raise DatasetError(f"{str(path)!r} matches no known dataset layout; expected one of: {_expected()}")


def open_labelled(
    path: str | Path,
    split: str = "train",
    classes: int | str | LabelSet = 8,
    layout: str | None = None,
    strict: bool = False,
    **options,
) -> LabelledDataset:
    """Open one split of a labelled FER dataset, auto-detecting its layout unless ``layout`` is given.

    Labels come out as AffectNet expressions restricted to the label set (``classes=7`` drops
    contempt). Options a layout understands: ``crop_face`` (affectnet-csv), ``labels``
    (synfer: a ``labels/<name>.parquet`` written by relabel), ``numbering`` (folder: how numeric
    folder names count). ``strict`` turns missing and unreadable images into errors.
    """
    label_set = classes if isinstance(classes, LabelSet) else get_label_set(classes)
    if layout is None:
        chosen = detect_layout(path)
    else:
        chosen = LAYOUTS[layout]
        if not Path(path).exists():
            raise DatasetError(f"dataset {str(path)!r} does not exist")
    given = {key: value for key, value in options.items() if value not in (None, False)}
    foreign = sorted(set(given) - set(chosen.options))
    if foreign:
        accepted = ", ".join(chosen.options) or "none"
        raise ConfigError(f"option {foreign[0]!r} does not apply to {chosen.name} datasets (its options: {accepted})")
    return chosen.open(Path(path), split, label_set, strict, **given)
