"""Image folders with captions, as Hugging Face's ``imagefolder`` reads them::

    ROOT/metadata.jsonl               {"file_name": "happy/0001.png", "text": "a photo of ..."} per line
    ROOT/train/metadata.jsonl         or one per split folder (paths relative to the metadata's folder)
    ROOT/.../0001.png + 0001.txt      or a caption file beside each image

``metadata.csv`` with the same columns works as ``metadata.jsonl`` does. The caption is the given
caption column, else ``text``, else ``caption``. A metadata entry wins over a ``.txt`` beside the
image. Ids are image paths relative to ROOT, so ``synfer world make``'s ``DIR/train`` gives ids such
as ``happy/000000012.png``, the ids of its ``DIR/train/aus.parquet``.
"""

from __future__ import annotations

import csv
import json
import posixpath
from pathlib import Path

from ...errors import DatasetError
from ..format import resolve_inside
from ..readers.base import IMAGE_SUFFIXES, ReadStats, UnreadableImage
from .base import CaptionedDataset, check_relative_id, check_unique
from .layouts import CaptionLayout, CaptionOptions, register_caption_layout

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
CAPTION_FIELDS = ("text", "caption")
FILE_FIELD = "file_name"


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _metadata_files(root: Path) -> list[Path]:
    found = [p for name in METADATA_FILES for p in root.rglob(name) if p.is_file() and _visible(p, root)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a metadata file."""
    try:
        if path.suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as error:
                        raise DatasetError(f"{path}:{number} is not a JSON object: {error}") from None
                    if not isinstance(row, dict):
                        raise DatasetError(f"{path}:{number} is not a JSON object")
                    rows.append((number, row))
            return rows
        with open(path, newline="", encoding="utf-8") as handle:
            return [(number, row) for number, row in enumerate(csv.DictReader(handle), start=2)]
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None


def _caption_field(path: Path, rows: list[tuple[int, dict]], wanted: str) -> str:
    names = set().union(*(row.keys() for _, row in rows)) if rows else set()
    if FILE_FIELD not in names and rows:
        raise DatasetError(f"{path} has no {FILE_FIELD!r} field (found: {', '.join(sorted(names))})")
    for field in (wanted, *CAPTION_FIELDS):
        if field in names:
            return field
    raise DatasetError(
        f"{path} has no caption field (looked for {', '.join(dict.fromkeys((wanted, *CAPTION_FIELDS)))}; "
        f"found: {', '.join(sorted(names))}); name it with --caption-column"
    )


class ImageFolderCaptions(CaptionedDataset):
    """Image files under ROOT, captioned by metadata files or ``.txt`` files beside them."""

    layout = "imagefolder"

    def __init__(self, root: Path, options: CaptionOptions):
        if not root.is_dir():
            raise DatasetError(f"image folder {root} is not a folder")
        stats = ReadStats()
        on_disk = {
            p.relative_to(root).as_posix(): p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _visible(p, root)
        }
        entries: list[tuple[str, str, str]] = []  # (id, caption, source)
        metadata = _metadata_files(root)
        for path in metadata:
            rows = _rows(path)
            if not rows:
                continue
            field = _caption_field(path, rows, options.caption_column)
            folder = path.parent
            for number, row in rows:
                where = f"{path.relative_to(root).as_posix()}:{number}"
                name = row.get(FILE_FIELD)
                if not isinstance(name, str) or not name.strip():
                    raise DatasetError(f"{root / where}: {FILE_FIELD!r} must be a relative image path")
                relative = f"{folder.relative_to(root).as_posix()}/{name.strip()}"
                resolve_inside(root, relative)  # refuses paths that leave the folder
                image_id = check_relative_id(posixpath.normpath(relative), str(root / where))
                caption = row.get(field)
                if caption is None or (isinstance(caption, float) and caption != caption):
                    if options.strict:
                        raise DatasetError(f"{root / where}: {image_id} has no {field!r}")
                    stats.excluded["no caption"] += 1
                    continue
                entries.append((image_id, str(caption), where))
        check_unique((e[0] for e in entries), (e[2] for e in entries))
        listed = {e[0] for e in entries}
        kept = []
        for image_id, caption, where in entries:
            if image_id in on_disk:
                kept.append((image_id, caption, where))
            elif options.strict:
                raise DatasetError(f"{root / where}: image {image_id} is missing under {root}")
            else:
                stats.note_missing(image_id)
        texts = 0
        for image_id, path in on_disk.items():
            if image_id in listed:
                continue
            caption_file = path.with_suffix(".txt")
            if caption_file.is_file():
                texts += 1
                try:
                    caption = caption_file.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as error:
                    raise DatasetError(f"cannot read caption {caption_file}: {error}") from None
                kept.append((image_id, caption, caption_file.relative_to(root).as_posix()))
            elif options.strict:
                raise DatasetError(f"image {root / image_id} has no caption (no metadata entry, no {caption_file.name})")
            else:
                stats.excluded["no caption"] += 1
        if not metadata and not texts and on_disk:
            fields = "/".join(dict.fromkeys((options.caption_column, *CAPTION_FIELDS)))
            raise DatasetError(
                f"image folder {root} has {len(on_disk)} images but no captions: looked for "
                f"{' or '.join(METADATA_FILES)} (a {FILE_FIELD!r} and a {fields} "
                "field) at the root or in a split folder, and a .txt file beside each image"
            )
        if not kept:
            raise DatasetError(f"image folder {root} has no captioned images ({stats.summary() or 'no image files'})")
        kept.sort(key=lambda e: e[0])
        super().__init__(root.name, root, [e[0] for e in kept], [e[1] for e in kept], stats)
        self._sources = [e[2] for e in kept]

    def image_source(self, i: int) -> str:
        return str(self.root / self.ids[i])

    def image_bytes(self, i: int) -> bytes:
        try:
            return (self.root / self.ids[i]).read_bytes()
        except OSError as error:
            raise UnreadableImage(f"{self.root / self.ids[i]}: {error.strerror or error}") from None


def detect_imagefolder(root: Path) -> bool:
    """Metadata at the root or one folder down, or image files with no tar or parquet beside them."""
    if not root.is_dir():
        return False
    if any((root / name).is_file() for name in METADATA_FILES) or any(
        (child / name).is_file() for child in root.iterdir() if child.is_dir() for name in METADATA_FILES
    ):
        return True
    if any(root.glob("*.tar")) or any(root.glob("*.parquet")):
        return False
    levels = (root.glob("*"), root.glob("*/*"))
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for level in levels for p in level)


register_caption_layout(
    CaptionLayout(
        "imagefolder",
        f"images with {' or '.join(METADATA_FILES)} (file_name + text or caption) or a .txt caption beside each",
        detect_imagefolder,
        lambda root, options: ImageFolderCaptions(root, options),
    )
)
