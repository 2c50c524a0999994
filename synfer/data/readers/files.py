"""Datasets made of one image file per sample (AffectNet, RAF-DB, image folders): random access."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...expressions import Expression, LabelSet
from ..format import resolve_inside
from .base import LabelledDataset, LabelledImage, ReadStats, open_image, restrict_to_label_set

Record = tuple[str, Expression, "tuple[float, float, float, float] | None"]


class ImageFiles(LabelledDataset):
    """Samples that are image files under ``image_root``, each with a label and optionally a face box.

    ``records`` are (path relative to ``image_root``, expression, box or None). Paths that come from
    metadata files are checked to stay inside ``image_root``; files that do not exist are counted
    as missing and left out (an error with ``strict``).
    """

    def __init__(
        self,
        layout: str,
        root: Path,
        image_root: Path,
        split: str,
        label_set: LabelSet,
        records: Iterable[Record],
        stats: ReadStats,
        strict: bool = False,
        listed_in: str | None = None,
    ):
        records = list(records)
        keep = restrict_to_label_set((r[1] for r in records), label_set, stats)
        records = [r for r, k in zip(records, keep) if k]
        self.image_root = Path(image_root)
        files, labels, boxes = [], [], []
        for relative, expression, box in records:
            # Only paths read from a metadata file can point anywhere; listed files are inside by construction.
            path = resolve_inside(self.image_root, relative) if listed_in else self.image_root / relative
            if not path.is_file():
                stats.note_missing(relative)
                continue
            files.append(os.fsencode(relative))
            labels.append(int(expression))
            boxes.append(box)
        where = f" listed in {listed_in}" if listed_in else ""
        if stats.missing and strict:
            raise DatasetError(
                f"{stats.missing} of {len(records)} images{where} are missing under {self.image_root} "
                f"(first: {', '.join(stats.missing_examples)})"
            )
        if not files:
            detail = f" ({stats.missing} listed images are missing, first: {', '.join(stats.missing_examples)})" if stats.missing else ""
            raise DatasetError(f"no {label_set.name} images found for split {split!r}{where} in {image_root}{detail}")
        super().__init__(root, split, label_set, np.asarray(labels), stats, strict)
        self.layout = layout
        # Byte strings in one numpy array, not a list of str: forked DataLoader workers would
        # otherwise copy every page of the list as they touch its reference counts.
        self._files = np.asarray(files)
        self._boxes = np.asarray(boxes, dtype=np.float32) if boxes and boxes[0] is not None else None

    def path(self, position: int) -> Path:
        return self.image_root / os.fsdecode(self._files[position])

    def sample_ids(self) -> list[str]:
        return [os.fsdecode(name) for name in self._files]

    def raw(self, positions: Sequence[int]) -> Iterator[int]:
        return iter(positions)

    def decode(self, raw: int) -> LabelledImage:
        box = tuple(float(v) for v in self._boxes[raw]) if self._boxes is not None else None
        path = self.path(raw)
        return LabelledImage(open_image(path, box), Expression(int(self.labels[raw])), str(path), os.fsdecode(self._files[raw]))
