"""What every image-caption reader shares: the captioned image, the dataset base class, id checks.

A caption dataset lists its ids and captions when it is opened and decodes an image only when it is
asked for one (``dataset[i]``), so nothing holds a whole dataset in memory. Each reader says where
the encoded bytes of image ``i`` are (:meth:`CaptionedDataset.image_bytes`); decoding and the
fingerprint are the same for every layout.
"""

from __future__ import annotations

import collections.abc
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from ...errors import DatasetError
from ..readers.base import ReadStats, UnreadableImage, decode_image_bytes

FINGERPRINT_VERSION = 1


@dataclass(frozen=True)
class CaptionedImage:
    """One image and its caption; ``id`` is its unique relative path inside the dataset."""

    id: str
    image: Image.Image  # RGB
    caption: str


def check_relative_id(image_id: str, where: str) -> str:
    """``image_id`` as a clean relative POSIX path; an error for absolute paths, ``..`` or empty ids."""
    text = str(image_id).replace("\\", "/").strip()
    while text.startswith("./"):
        text = text[2:]
    parts = PurePosixPath(text).parts if text else ()
    if not parts or text.startswith("/") or ".." in parts:
        raise DatasetError(f"{where}: image id {image_id!r} must be a relative path inside the dataset")
    return str(PurePosixPath(*parts))


def check_unique(ids: Iterable[str], sources: Iterable[str]) -> None:
    """Refuse a repeated id, naming where both copies came from."""
    seen: dict[str, str] = {}
    for image_id, source in zip(ids, sources):
        if image_id in seen:
            raise DatasetError(
                f"image id {image_id!r} appears twice: in {seen[image_id]} and in {source}; ids must be unique "
                "(give an id column that is, or keep each image once)"
            )
        seen[image_id] = source


class CaptionedDataset(collections.abc.Sequence):
    """Images with captions, random access, decoded lazily: ``dataset[i]`` is a :class:`CaptionedImage`.

    Subclasses set ``ids`` and ``captions`` (one per image, in the dataset's own order) and implement
    :meth:`image_bytes` (the encoded image) and :meth:`image_source` (where it is, for messages).
    ``stats`` counts what was left out when the dataset was opened (missing files, uncaptioned images).
    """

    layout: str = "?"

    def __init__(self, name: str, root: Path, ids: list[str], captions: list[str], stats: ReadStats | None = None):
        if len(ids) != len(captions):
            raise DatasetError(f"{root}: {len(ids)} ids for {len(captions)} captions")
        self.name = name
        self.root = Path(root)
        self.ids = list(ids)
        self.captions = [str(c) for c in captions]
        self.stats = stats or ReadStats()
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _position(self, i: int) -> int:
        if not isinstance(i, int):
            raise TypeError(f"{type(self).__name__} indices are integers, not {type(i).__name__}")
        position = i + len(self) if i < 0 else i
        if not 0 <= position < len(self):
            raise IndexError(f"image {i} of a dataset of {len(self)}")
        return position

    def image_bytes(self, i: int) -> bytes:
        """The encoded bytes (PNG, JPEG, ...) of image ``i``; raises ``UnreadableImage`` when they cannot be read."""
        raise NotImplementedError

    def image_source(self, i: int) -> str:
        """Where image ``i`` lies (file, tar member, parquet row), for messages."""
        return f"{self.root}: {self.ids[i]}"

    def __getitem__(self, i: int) -> CaptionedImage:
        position = self._position(i)
        data = self.image_bytes(position)
        return CaptionedImage(self.ids[position], decode_image_bytes(data, self.image_source(position)), self.captions[position])

    def index_of(self) -> dict[str, int]:
        """Position of every id."""
        return {image_id: i for i, image_id in enumerate(self.ids)}

    def fingerprint(self, advance: Callable[[int], None] | None = None) -> str:
        """SHA-256 over the ids, the captions and the SHA-256 of each image's encoded bytes, in dataset order.

        Only content counts (no file times, sizes or paths beyond the ids), so the same images and
        captions give the same fingerprint in any layout and in any folder. It reads every image's
        bytes once (no decoding); the result is kept for the life of the object. ``advance(k)`` is
        told of each ``k`` images hashed.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(f"synfer-captioned-v{FINGERPRINT_VERSION}\0{len(self)}\0".encode())
            for i, (image_id, caption) in enumerate(zip(self.ids, self.captions)):
                try:
                    image = hashlib.sha256(self.image_bytes(i)).hexdigest()
                except UnreadableImage:  # gone since the dataset was opened: counted when it is read
                    image = "unreadable"
                digest.update(f"{image_id}\0{caption}\0{image}\n".encode())
                if advance is not None:
                    advance(1)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> str:
        left_out = self.stats.summary()
        return f"{self.layout} dataset {self.name} at {self.root}: {len(self)} captioned images" + (
            f" (left out: {left_out})" if left_out else ""
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, n={len(self)})"
