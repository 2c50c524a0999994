"""RAF-DB basic emotions::

    EmoLabel/list_patition_label.txt    "train_00001.jpg 5" per line (RAF-DB's own 1-7 codes)
    Image/aligned/train_00001_aligned.jpg

The split is the file name's prefix (train_ or test_); RAF-DB has no validation split, so ``val``
names its test split, as FER papers use it.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DatasetError, LabelError
from ...expressions import LabelSet, from_rafdb
from .base import ReadStats, split_alias
from .files import ImageFiles
from .layouts import Layout, register_layout

LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: RAF-DB's own spelling
ALIGNED_DIR = "Image/aligned"
SPLITS = {"train": "train", "training": "train", "test": "test", "val": "test", "validation": "test"}


def open_rafdb(root: Path, split: str, label_set: LabelSet, strict: bool) -> ImageFiles:
    prefix = split_alias(split, SPLITS, "RAF-DB")
    label_file, images = root / LABEL_FILE, root / ALIGNED_DIR
    for needed in (label_file, images):
        if not needed.exists():
            raise DatasetError(f"RAF-DB layout: {needed} is missing (expected {LABEL_FILE} and {ALIGNED_DIR}/*_aligned.jpg)")
    stats = ReadStats()
    records = []
    with open(label_file, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DatasetError(f"{label_file}:{line}: expected '<name>.jpg <label>', got {text.strip()!r}")
            name, code = fields
            if not name.startswith(f"{prefix}_"):
                continue
            try:
                expression = from_rafdb(int(code))
            except (ValueError, LabelError) as error:
                raise DatasetError(f"{label_file}:{line}: {error}") from None
            stem = name.rsplit(".", 1)[0]
            records.append((f"{stem}_aligned.jpg", expression, None))
    return ImageFiles("rafdb", root, images, prefix, label_set, records, stats, strict, listed_in=str(label_file))


register_layout(
    Layout(
        "rafdb",
        f"{LABEL_FILE} and {ALIGNED_DIR}/<name>_aligned.jpg",
        lambda root: (root / LABEL_FILE).is_file(),
        open_rafdb,
    )
)
