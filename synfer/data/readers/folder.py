"""Image folders with one subfolder per expression::

    ROOT/happy/*.jpg  ROOT/sad/*.png ...              one split: every requested split reads it
    ROOT/train/happy/*.jpg  ROOT/val/happy/*.jpg ...  split folders (train, val or validation, test)

Folder names are expression names or their aliases (``angry``, ``happiness``, ...). Numeric names
are ambiguous (RAF-DB's 1-7 and FER2013's 0-6 count differently from AffectNet's 0-7), so they are
read only when ``numbering`` says whose codes they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import ConfigError, DatasetError, LabelError
from ...expressions import Expression, LabelSet, from_fer2013, from_rafdb, parse_expression
from .base import IMAGE_SUFFIXES, ReadStats
from .files import ImageFiles
from .layouts import Layout, register_layout

NUMBERINGS: dict[str, Callable[[int], Expression]] = {
    "affectnet": parse_expression,
    "rafdb": from_rafdb,
    "fer2013": from_fer2013,
}
SPLIT_FOLDERS = {
    "train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test"
}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_expression_name(name: str) -> bool:
    if name.isdigit():
        return True
    try:
        parse_expression(name)
    except LabelError:
        return False
    return True


def _expression(folder: Path, numbering: str | None) -> Expression:
    name = folder.name
    if name.isdigit():
        if numbering is None:
            raise DatasetError(
                f"folder {str(folder)!r} has a numeric name, which is ambiguous; say whose codes the numbers are "
                f"with numbering ({', '.join(NUMBERINGS)}) or rename the folders to expression names"
            )
        try:
            return NUMBERINGS[numbering](int(name))
        except LabelError as error:
            raise DatasetError(f"folder {str(folder)!r}: {error}") from None
    try:
        return parse_expression(name)
    except LabelError:
        accepted = ", ".join(e.label for e in Expression)
        raise DatasetError(f"folder {str(folder)!r} is not named after an expression (accepted: {accepted}, or aliases)") from None


def _split_folders(root: Path) -> dict[str, Path]:
    return {SPLIT_FOLDERS[p.name.lower()]: p for p in _subfolders(root) if p.name.lower() in SPLIT_FOLDERS}


def detect_folder(root: Path) -> bool:
    if not root.is_dir():
        return False
    children = _subfolders(root)
    if any(_is_expression_name(p.name) for p in children):
        return True
    return any(_is_expression_name(q.name) for p in _split_folders(root).values() for q in _subfolders(p))


def open_folder(root: Path, split: str, label_set: LabelSet, strict: bool, numbering: str | None = None) -> ImageFiles:
    if numbering is not None and numbering not in NUMBERINGS:
        raise ConfigError(f"unknown numbering {numbering!r} (accepted: {', '.join(NUMBERINGS)})")
    splits = _split_folders(root)
    if splits:
        wanted = SPLIT_FOLDERS.get(split.strip().lower())
        if wanted not in splits:
            raise DatasetError(f"image folder {root} has no {split!r} split folder (found: {', '.join(p.name for p in splits.values())})")
        base, split_name = splits[wanted], wanted
    else:
        base, split_name = root, "all"
    records = []
    for folder in _subfolders(base):
        expression = _expression(folder, numbering)
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        records += [(f"{folder.name}/{name}", expression, None) for name in files]
    if not records:
        raise DatasetError(
            f"image folder {base} has no images (expected one subfolder per expression, e.g. happy/, sad/, "
            f"with {', '.join(sorted(IMAGE_SUFFIXES))} files)"
        )
    return ImageFiles("folder", root, base, split_name, label_set, records, ReadStats(), strict)


register_layout(
    Layout(
        "folder",
        "one subfolder per expression (neutral/, happy/, ...), optionally under train/, val/ and test/",
        detect_folder,
        open_folder,
        ("numbering",),
    )
)
