"""FER2013: one CSV, ``fer2013.csv``, with columns emotion, pixels (48x48 grey, space separated), Usage.

The file is about 300 MB, so it is scanned once for the byte offset and label of each row of the
split; images are parsed from their row on demand (``os.pread``, so forked workers share nothing).
Usage ``Training`` is the train split, ``PublicTest`` is val and ``PrivateTest`` is test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DatasetError, LabelError
from ...expressions import Expression, LabelSet, from_fer2013
from .base import LabelledDataset, LabelledImage, ReadStats, UnreadableImage, restrict_to_label_set, split_alias
from .layouts import Layout, register_layout

CSV_NAME = "fer2013.csv"
USAGE = {"train": "Training", "training": "Training", "val": "PublicTest", "validation": "PublicTest", "test": "PrivateTest"}


def _field(raw: bytes) -> bytes:
    return raw.strip().strip(b'"').strip()


class Fer2013(LabelledDataset):
    layout = "fer2013"

    def __init__(self, csv_path: Path, split: str, label_set: LabelSet, strict: bool):
        usage = split_alias(split, USAGE, "FER2013")
        self.csv_path = csv_path
        stats = ReadStats()
        offsets, lengths, expressions = [], [], []
        with open(csv_path, "rb") as handle:
            header = [_field(f).decode().lower() for f in handle.readline().split(b",")]
            missing = [c for c in ("emotion", "pixels", "usage") if c not in header]
            if missing:
                raise DatasetError(f"{csv_path} has no column {missing[0]!r} (expected columns: emotion, pixels, Usage)")
            self._columns = len(header)
            column = {c: header.index(c) for c in ("emotion", "pixels", "usage")}
            self._pixels = column["pixels"]
            offset = handle.tell()
            for line_number, line in enumerate(iter(handle.readline, b""), start=2):
                fields = line.split(b",")
                if len(fields) == self._columns and _field(fields[column["usage"]]).decode() == usage:
                    try:
                        expressions.append(from_fer2013(int(_field(fields[column["emotion"]]))))
                    except (ValueError, LabelError) as error:
                        raise DatasetError(f"{csv_path}:{line_number}: {error}") from None
                    offsets.append(offset)
                    lengths.append(len(line))
                elif line.strip() and len(fields) != self._columns:
                    stats.note_unreadable(f"{csv_path}:{line_number}: {len(fields)} fields, expected {self._columns}")
                offset += len(line)
        keep = restrict_to_label_set(expressions, label_set, stats)
        if stats.unreadable and strict:
            raise DatasetError(f"{stats.unreadable} malformed rows in {csv_path} (first: {stats.unreadable_examples[0]})")
        if not keep.any():
            raise DatasetError(f"{csv_path} has no {label_set.name} rows with Usage {usage!r}")
        super().__init__(csv_path.parent, usage, label_set, np.asarray([int(e) for e in expressions])[keep], stats, strict)
        self._offsets = np.asarray(offsets, dtype=np.int64)[keep]
        self._lengths = np.asarray(lengths, dtype=np.int32)[keep]
        self._fd: int | None = None
        self._fd_pid: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_fd_pid": None}

    def _read(self, position: int) -> bytes:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.csv_path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, int(self._lengths[position]), int(self._offsets[position]))

    def raw(self, positions: Sequence[int]) -> Iterator[int]:
        return iter(positions)

    def decode(self, raw: int) -> LabelledImage:
        source = f"{self.csv_path} row at byte {int(self._offsets[raw])}"
        fields = self._read(raw).split(b",")
        try:
            pixels = np.array(_field(fields[self._pixels]).split(), dtype=np.int32)
        except (ValueError, IndexError) as error:
            raise UnreadableImage(f"{source}: {error}") from None
        side = math.isqrt(pixels.size)
        if pixels.size == 0 or side * side != pixels.size or pixels.min() < 0 or pixels.max() > 255:
            raise UnreadableImage(f"{source}: {pixels.size} pixel values do not make a square 8-bit image")
        image = Image.fromarray(pixels.astype(np.uint8).reshape(side, side)).convert("RGB")
        return LabelledImage(image, Expression(int(self.labels[raw])), source)


def _csv_path(root: Path) -> Path:
    return root if root.is_file() else root / CSV_NAME


def open_fer2013(root: Path, split: str, label_set: LabelSet, strict: bool) -> Fer2013:
    path = _csv_path(root)
    if not path.is_file():
        raise DatasetError(f"FER2013 layout: {path} is missing (expected {CSV_NAME} with columns emotion, pixels, Usage)")
    return Fer2013(path, split, label_set, strict)


register_layout(
    Layout(
        "fer2013",
        f"{CSV_NAME} (columns emotion, pixels, Usage), or the path of that file",
        lambda root: _csv_path(root).is_file() and _csv_path(root).name == CSV_NAME,
        open_fer2013,
    )
)
