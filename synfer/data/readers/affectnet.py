"""AffectNet, in the two layouts it is found on disk.

CSV layout (the original release)::

    Manually_Annotated_file_lists/training.csv     subDirectory_filePath, face_x, face_y, face_width,
    Manually_Annotated_file_lists/validation.csv   face_height, facial_landmarks, expression, valence, arousal
    Manually_Annotated_Images/<subDirectory_filePath>

NPY layout (the later cropped 8-class release)::

    train_set/images/<id>.jpg    train_set/annotations/<id>_exp.npy
    val_set/images/<id>.jpg      val_set/annotations/<id>_exp.npy

Expression codes are AffectNet's own ids, synfer's canonical labels; codes 8-10 (none, uncertain,
no face) are not expressions and are left out. AffectNet has no public test set: its validation
split is what papers report on, so ``val`` and ``test`` both name it.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ...expressions import Expression, LabelSet
from .base import ReadStats, split_alias
from .files import ImageFiles
from .layouts import Layout, register_layout

LISTS_DIR = "Manually_Annotated_file_lists"
IMAGES_DIR = "Manually_Annotated_Images"
CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
CSV_COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
    "facial_landmarks", "expression", "valence", "arousal",
)
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
NPY_SETS = {"train": "train_set", "val": "val_set"}
# AffectNet codes that are not expressions.
NON_EXPRESSIONS = {8: "none", 9: "uncertain", 10: "no-face"}
SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "val"}
_EXCLUDED = "AffectNet codes 8-10 (none, uncertain, no-face)"


def _expression(code: int, where: str, stats: ReadStats) -> Expression | None:
    if code in NON_EXPRESSIONS:
        stats.excluded[_EXCLUDED] += 1
        return None
    if code not in Expression._value2member_map_:
        raise DatasetError(f"{where}: expression code {code} is not an AffectNet code (0-7 expressions, 8-10 excluded)")
    return Expression(code)


def _csv_rows(path: Path):
    """The header and the data rows; the header row is optional (copies of validation.csv lack it)."""
    handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 (closed by the generator that reads it)
    reader = csv.reader(handle)
    first = next(reader, None)
    if first is None:
        handle.close()
        raise DatasetError(f"{path} is empty")
    if first and first[0].strip().lstrip("\ufeff") == CSV_COLUMNS[0]:
        return handle, [c.strip().lstrip("\ufeff") for c in first], reader, 2
    return handle, list(CSV_COLUMNS), itertools.chain([first], reader), 1


def open_affectnet_csv(root: Path, split: str, label_set: LabelSet, strict: bool, crop_face: bool = False) -> ImageFiles:
    name = split_alias(split, SPLITS, "AffectNet")
    csv_path = root / LISTS_DIR / CSV_FILES[name]
    images = root / IMAGES_DIR
    for needed in (csv_path, images):
        if not needed.exists():
            raise DatasetError(
                f"AffectNet CSV layout: {needed} is missing (expected {LISTS_DIR}/training.csv, "
                f"{LISTS_DIR}/validation.csv and the images under {IMAGES_DIR}/)"
            )
    stats = ReadStats()
    records = []
    handle, header, rows, first_line = _csv_rows(csv_path)
    with handle:
        needed_columns = ("subDirectory_filePath", "expression", *(BOX_COLUMNS if crop_face else ()))
        absent = [c for c in needed_columns if c not in header]
        if absent:
            raise DatasetError(f"{csv_path} has no column {absent[0]!r} (expected columns: {', '.join(CSV_COLUMNS)})")
        column = {c: header.index(c) for c in needed_columns}
        for line, row in enumerate(rows, start=first_line):
            if not row:
                continue
            where = f"{csv_path}:{line}"
            try:
                code = int(row[column["expression"]])
                box = tuple(float(row[column[c]]) for c in BOX_COLUMNS) if crop_face else None
            except (ValueError, IndexError):
                raise DatasetError(f"{where}: cannot read the expression or face box from {row[:9]}") from None
            expression = _expression(code, where, stats)
            if expression is not None:
                records.append((row[column["subDirectory_filePath"]].strip(), expression, box))
    return ImageFiles("affectnet-csv", root, images, name, label_set, records, stats, strict, listed_in=str(csv_path))


def _read_code(path: Path) -> int:
    # The annotation is a 0-d array holding the code, as a string in the official files.
    value = np.load(path, allow_pickle=False)
    return int(np.asarray(value).reshape(-1)[0])


def open_affectnet_npy(root: Path, split: str, label_set: LabelSet, strict: bool) -> ImageFiles:
    name = split_alias(split, SPLITS, "AffectNet")
    folder = root / NPY_SETS[name]
    for needed in (folder / "annotations", folder / "images"):
        if not needed.is_dir():
            raise DatasetError(
                f"AffectNet NPY layout: {needed} is missing (expected train_set/ and val_set/, each with "
                "images/<id>.jpg and annotations/<id>_exp.npy)"
            )
    stats = ReadStats()
    records = []
    for annotation in sorted((folder / "annotations").glob("*_exp.npy")):
        sample_id = annotation.name[: -len("_exp.npy")]
        try:
            code = _read_code(annotation)
        except (OSError, ValueError, IndexError) as error:
            if strict:
                raise DatasetError(f"cannot read the expression in {annotation}: {error}") from None
            stats.note_unreadable(f"{annotation}: {error}")
            continue
        expression = _expression(code, str(annotation), stats)
        if expression is not None:
            records.append((f"{sample_id}.jpg", expression, None))
    if not records and not stats.excluded and not stats.unreadable:
        raise DatasetError(f"AffectNet NPY layout: no annotations/<id>_exp.npy files in {folder}")
    return ImageFiles("affectnet-npy", root, folder / "images", name, label_set, records, stats, strict)


register_layout(
    Layout(
        "affectnet-csv",
        f"{LISTS_DIR}/training.csv and validation.csv with images under {IMAGES_DIR}/",
        lambda root: (root / LISTS_DIR).is_dir(),
        open_affectnet_csv,
        ("crop_face",),
    )
)
register_layout(
    Layout(
        "affectnet-npy",
        "train_set/ and val_set/ with images/<id>.jpg and annotations/<id>_exp.npy",
        lambda root: any((root / s / "annotations").is_dir() for s in NPY_SETS.values()),
        open_affectnet_npy,
    )
)
