"""Parquet image-caption datasets (FEText as published): one file, or a folder of ``*.parquet`` files.

Each row is one image: an image column (``image``), a caption column (``caption``) and, when
present, an ``image_path`` column that gives the id. The image cell is one of

* bytes (a binary column): the encoded image;
* a ``{bytes, path}`` struct (Hugging Face's ``Image`` feature): the bytes, or where they are null
  the file at ``path``;
* a path string: the file at that path.

Paths are resolved inside the dataset folder (the folder given, or the file's folder) and never
outside it. Ids are the ``image_path`` (or ``id_column``) values, else ``<file>/<row>`` where
``<file>`` is the parquet file's path inside the folder without ``.parquet`` (its stem for a file at
the top). Only ids, captions and paths are read when the dataset is opened; image bytes are read one
row group at a time when an image is asked for.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import DatasetError, first_line
from ..format import resolve_inside
from ..readers.base import ReadStats, UnreadableImage
from .base import CaptionedDataset, check_relative_id, check_unique
from .layouts import CaptionLayout, CaptionOptions, register_caption_layout

DEFAULT_ID_COLUMN = "image_path"
CELL_KINDS = ("bytes", "struct", "path")
_CACHED_ROW_GROUPS = 2  # row groups kept decoded per process: consecutive reads mostly hit the same one


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = (p for p in root.rglob("*.parquet") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _cell_kind(field: pa.Field, path: Path) -> str:
    kind = field.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytes"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "path"
    if pa.types.is_struct(kind) and {kind.field(i).name for i in range(kind.num_fields)} >= {"bytes", "path"}:
        return "struct"
    raise DatasetError(
        f"{path}: image column {field.name!r} holds {kind}; accepted: bytes, a {{bytes, path}} struct "
        "(Hugging Face Image) or a path string"
    )


def _strings(table: pa.Table, column: str) -> list:
    return table.column(column).to_pylist()


class ParquetCaptions(CaptionedDataset):
    """Rows of one or more parquet files; images read by row group on demand."""

    layout = "parquet"

    def __init__(self, root: Path, options: CaptionOptions):
        self.folder = root.parent if root.is_file() else root
        files = _parquet_files(root)
        if not files:
            raise DatasetError(f"{root} holds no .parquet files")
        stats = ReadStats()
        ids: list[str] = []
        captions: list[str] = []
        sources: list[str] = []
        locations: list[tuple[int, int, int]] = []  # (file, row group, row in group)
        self._paths: dict[int, Path] = {}  # position -> resolved file, for path cells
        self._files = [str(f) for f in files]
        self._kinds: list[str] = []
        self.image_column = options.image_column
        for number, path in enumerate(files):
            relative = path.relative_to(self.folder).as_posix()
            try:
                handle = pq.ParquetFile(path)
            except (OSError, ValueError) as error:
                raise DatasetError(f"cannot read {path}: {first_line(error)}") from None
            schema = handle.schema_arrow
            for column, option in ((options.image_column, "image column"), (options.caption_column, "caption column")):
                if column not in schema.names:
                    flag = "--" + option.replace(" ", "-")
                    raise DatasetError(f"{path} has no {option} {column!r} (columns: {', '.join(schema.names)}); name it with {flag}")
            if options.id_column is not None and options.id_column not in schema.names:
                raise DatasetError(f"{path} has no id column {options.id_column!r} (columns: {', '.join(schema.names)})")
            id_column = options.id_column or (DEFAULT_ID_COLUMN if DEFAULT_ID_COLUMN in schema.names else None)
            kind = _cell_kind(schema.field(options.image_column), path)
            self._kinds.append(kind)
            wanted = [options.caption_column] + ([id_column] if id_column else []) + ([options.image_column] if kind == "path" else [])
            table = handle.read(columns=list(dict.fromkeys(wanted)))
            file_captions = _strings(table, options.caption_column)
            stem = relative.removesuffix(".parquet")
            file_ids = _strings(table, id_column) if id_column else [f"{stem}/{row}" for row in range(table.num_rows)]
            file_paths = _strings(table, options.image_column) if kind == "path" else None
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
            groups = np.repeat(np.arange(handle.num_row_groups), sizes)
            starts = np.concatenate([[0], np.cumsum(sizes)])
            for row in range(table.num_rows):
                where = f"{relative} row {row}"
                if file_ids[row] is None:
                    raise DatasetError(f"{where}: the id column {id_column!r} is empty")
                image_id = check_relative_id(file_ids[row], where)
                caption = file_captions[row]
                if caption is None:
                    if options.strict:
                        raise DatasetError(f"{where} ({image_id}) has no caption")
                    stats.excluded["no caption"] += 1
                    continue
                if file_paths is not None:
                    if file_paths[row] is None:
                        if options.strict:
                            raise DatasetError(f"{where} ({image_id}) has no image")
                        stats.note_missing(image_id)
                        continue
                    resolved = resolve_inside(self.folder, file_paths[row])
                    if not resolved.is_file():
                        if options.strict:
                            raise DatasetError(f"{where}: image {file_paths[row]!r} is missing under {self.folder}")
                        stats.note_missing(file_paths[row])
                        continue
                    self._paths[len(ids)] = resolved
                group = int(groups[row])
                ids.append(image_id)
                captions.append(str(caption))
                sources.append(f"{relative} row {row}")
                locations.append((number, group, row - int(starts[group])))
        if not ids:
            raise DatasetError(f"{root} has no captioned images ({stats.summary() or 'its files have no rows'})")
        check_unique(ids, sources)
        super().__init__(root.name, root, ids, captions, stats)
        self._locations = np.asarray(locations, dtype=np.int64)
        self._sources = sources
        self._cache: OrderedDict = OrderedDict()
        self._cache_pid: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": OrderedDict(), "_cache_pid": None}

    def image_source(self, i: int) -> str:
        return f"{self.folder / self._sources[i]} ({self.ids[i]})"

    def _column(self, number: int, group: int) -> pa.Array:
        if self._cache_pid != os.getpid():  # a forked worker starts with its own cache
            self._cache, self._cache_pid = OrderedDict(), os.getpid()
        key = (number, group)
        if key not in self._cache:
            try:
                table = pq.ParquetFile(self._files[number]).read_row_group(group, columns=[self.image_column])
            except (OSError, ValueError) as error:
                raise UnreadableImage(f"{self._files[number]} row group {group}: {first_line(error)}") from None
            self._cache[key] = table.column(self.image_column).combine_chunks()
            while len(self._cache) > _CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return self._cache[key]

    def _read_file(self, path: Path, i: int) -> bytes:
        try:
            return path.read_bytes()
        except OSError as error:
            raise UnreadableImage(f"{self.image_source(i)}: {error.strerror or error}") from None

    def image_bytes(self, i: int) -> bytes:
        if i in self._paths:
            return self._read_file(self._paths[i], i)
        number, group, row = (int(v) for v in self._locations[i])
        cell = self._column(number, group)[row].as_py()
        if cell is None:
            raise UnreadableImage(f"{self.image_source(i)}: the image cell is empty")
        if self._kinds[number] == "bytes":
            return cell
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if not cell.get("path"):
            raise UnreadableImage(f"{self.image_source(i)}: the image struct has neither bytes nor a path")
        return self._read_file(resolve_inside(self.folder, cell["path"]), i)


def detect_parquet(root: Path) -> bool:
    if root.is_file():
        return root.suffix.lower() == ".parquet"
    return root.is_dir() and (any(root.glob("*.parquet")) or any(root.glob("*/*.parquet")))


register_caption_layout(
    CaptionLayout(
        "parquet",
        "a .parquet file or a folder of them, with image, caption and optionally image_path columns (FEText)",
        detect_parquet,
        lambda root, options: ParquetCaptions(root, options),
    )
)
