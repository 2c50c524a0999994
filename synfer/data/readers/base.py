"""What every reader shares: the labelled sample, the dataset base class, read statistics.

A reader lists its samples (and their labels) when it is opened and decodes an image only when it
is asked for one, so nothing holds a whole dataset in memory. Decoding is split in two steps,
``raw`` (cheap: which bytes or file) and ``decode`` (the image), so that a training loader can skip
or shuffle raw samples without paying for decoding them.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DatasetError
from ...expressions import Expression, LabelSet

# Messages name this many example files; the rest are counted.
EXAMPLES = 3
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# PIL refuses larger images as possible decompression bombs; they count as unreadable.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class LabelledImage:
    """One real or synthetic face with its expression."""

    image: Image.Image  # RGB
    label: Expression
    source: str  # file path or sample key, for messages
    id: str | None = None  # the sample's id (see LabelledDataset.sample_ids), where the layout gives one


class UnreadableImage(DatasetError):
    """An image that cannot be decoded; skipped and counted, or fatal with ``strict``."""


@dataclass
class ReadStats:
    """What a reader left out, and why: missing and unreadable images, excluded labels."""

    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    unreadable: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)

    def note_missing(self, name: str) -> None:
        self.missing += 1
        if len(self.missing_examples) < EXAMPLES:
            self.missing_examples.append(name)

    def note_unreadable(self, message: str) -> None:
        self.unreadable += 1
        if len(self.unreadable_examples) < EXAMPLES:
            self.unreadable_examples.append(message)

    def summary(self) -> str | None:
        """One line on what was left out, or None when nothing was."""
        parts = []
        if self.missing:
            parts.append(f"{self.missing} missing images (first: {', '.join(self.missing_examples)})")
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable images (first: {'; '.join(self.unreadable_examples)})")
        parts += [f"{count} samples excluded: {reason}" for reason, count in sorted(self.excluded.items())]
        return "; ".join(parts) or None

    def to_dict(self) -> dict:
        return {
            "missing": self.missing,
            "missing_examples": list(self.missing_examples),
            "unreadable": self.unreadable,
            "unreadable_examples": list(self.unreadable_examples),
            "excluded": dict(self.excluded),
        }


class LabelledDataset:
    """Labelled face images of one split of one dataset, with labels as AffectNet expressions.

    Subclasses set ``labels`` (AffectNet ids, one per sample, already restricted to ``label_set``)
    and implement ``raw`` and ``decode``. Iterating yields :class:`LabelledImage` in the dataset's
    own order; unreadable images are skipped and counted in ``stats`` (or raise with ``strict``).
    """

    layout: str = "?"
    # Sequential datasets read best in their own order (tar shards); random access is slow.
    sequential: bool = False

    def __init__(self, root: Path, split: str, label_set: LabelSet, labels: np.ndarray, stats: ReadStats, strict: bool):
        self.root = Path(root)
        self.split = split
        self.label_set = label_set
        self.labels = np.asarray(labels, dtype=np.int64)
        self.stats = stats
        self.strict = strict

    @property
    def name(self) -> str:
        return f"{self.layout}/{self.split}"

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, n={len(self)}, label_set={self.label_set.name!r})"

    def groups(self) -> np.ndarray | None:
        """For sequential datasets: the group (shard) of each sample, to be read together."""
        return None

    def sample_ids(self) -> list[str]:
        """Each sample's id, unique in the dataset: its image path relative to the image folder, or its key.

        AU tables (``synfer.data.au_table``) name images by these ids; :class:`LabelledImage` carries it.
        """
        raise DatasetError(f"{self.layout} datasets give their images no ids (an AU table cannot be joined to them)")

    def raw(self, positions: Sequence[int]) -> Iterator:
        """One undecoded item per entry of ``positions`` (repeats allowed).

        Random-access datasets keep the given order; sequential ones yield in reading order.
        """
        raise NotImplementedError

    def decode(self, raw) -> LabelledImage:
        """The image and label of a raw item; raises :class:`UnreadableImage`."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[LabelledImage]:
        for raw in self.raw(range(len(self))):
            try:
                yield self.decode(raw)
            except UnreadableImage as error:
                if self.strict:
                    raise
                self.stats.note_unreadable(str(error))

    def class_counts(self) -> dict[str, int]:
        """Samples per expression of the label set (zeros included)."""
        counts = np.bincount(self.labels, minlength=len(Expression))
        return {e.label: int(counts[int(e)]) for e in self.label_set.expressions}

    def describe(self) -> str:
        counts = ", ".join(f"{name} {count}" for name, count in self.class_counts().items())
        return f"{self.name} at {self.root}: {len(self)} images ({counts})"


def restrict_to_label_set(expressions: Iterable[Expression], label_set: LabelSet, stats: ReadStats) -> np.ndarray:
    """A keep-mask: True where the expression is in ``label_set``; the others are counted as excluded."""
    keep = []
    for expression in expressions:
        inside = expression in label_set
        if not inside:
            stats.excluded[f"{expression.label} (not in {label_set.name})"] += 1
        keep.append(inside)
    return np.asarray(keep, dtype=bool)


def open_image(path: Path, box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """An RGB image from ``path``, cropped to ``box`` (x, y, width, height) when given."""
    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except FileNotFoundError:
        raise UnreadableImage(f"{path}: file not found") from None
    except _PIL_ERRORS as error:
        raise UnreadableImage(f"{path}: {error}") from None
    if box is not None:
        x, y, w, h = box
        left, top = max(0, int(round(x))), max(0, int(round(y)))
        right, bottom = min(image.width, int(round(x + w))), min(image.height, int(round(y + h)))
        if right - left < 2 or bottom - top < 2:
            raise UnreadableImage(f"{path}: face box {box} lies outside the {image.width}x{image.height} image")
        image = image.crop((left, top, right, bottom))
    return image


def decode_image_bytes(data: bytes, source: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as handle:
            return handle.convert("RGB")
    except _PIL_ERRORS as error:
        raise UnreadableImage(f"{source}: {error}") from None


def split_alias(split: str, accepted: dict[str, str], dataset: str) -> str:
    """Map a requested split ("train", "val", "test", ...) onto a dataset's own split name."""
    key = split.strip().lower()
    if key not in accepted:
        raise DatasetError(f"{dataset} has no split {split!r} (accepted: {', '.join(accepted)})")
    return accepted[key]
