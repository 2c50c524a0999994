"""Writing one shard: a webdataset tar of images + JSON, then its parquet index."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from .format import INDEX_SCHEMA, TAR_MTIME, atomic_path, check_image_format, commit_file, index_path, tar_path, temporary_path

_PIL_FORMATS = {"png": ("PNG", {"compress_level": 6}), "jpg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}


def encode_image(image: Image.Image, image_format: str) -> bytes:
    name, options = _PIL_FORMATS[check_image_format(image_format)]
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=name, **options)
    return buffer.getvalue()


class ShardWriter:
    """Collects one shard's samples and commits them: the tar first, the index last, each renamed into place.

    Use it as a context manager: leaving the block normally commits, leaving it with an exception
    removes the temporary files, so an unfinished shard never looks finished.
    """

    def __init__(self, root: Path, shard: int, image_format: str = "png"):
        self.root = Path(root)
        self.shard = shard
        self.image_format = check_image_format(image_format)
        self.rows: list[dict] = []
        self._tar_path = tar_path(self.root, shard)
        self._tmp = temporary_path(self._tar_path)
        self._stream = open(self._tmp, "wb")  # noqa: SIM115 (kept open until commit or abort)
        self._tar = wds.TarWriter(self._stream, user="synfer", group="synfer", mtime=TAR_MTIME, encoder=False)
        self._open = True

    def write(self, row: dict, image: Image.Image, meta: dict) -> None:
        """Add one sample; ``row`` follows ``INDEX_SCHEMA`` except ``image``; ``meta`` becomes <key>.json."""
        key = row["key"]
        self._tar.write(
            {
                "__key__": key,
                self.image_format: encode_image(image, self.image_format),
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
        )
        self.rows.append({**row, "image": f"{key}.{self.image_format}"})

    def commit(self) -> None:
        self._tar.close()
        self._stream.close()
        self._open = False
        commit_file(self._tmp, self._tar_path)
        table = pa.Table.from_pylist(sorted(self.rows, key=lambda r: r["index"]), schema=INDEX_SCHEMA)
        with atomic_path(index_path(self.root, self.shard)) as tmp:
            pq.write_table(table, tmp)

    def abort(self) -> None:
        if self._open:
            self._open = False
            try:
                self._tar.close()  # closes tarfile's own stream too; the bytes are discarded anyway
            finally:
                self._stream.close()
                self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort()
        elif self._open:
            self.commit()
