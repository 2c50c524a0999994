"""Reading a synfer dataset: its manifest, its finished shards, their indexes and samples."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..errors import DatasetError
from ..expressions import LabelSet, get_label_set
from .format import MANIFEST, done_shards, index_path, num_shards, read_manifest, tar_path


@dataclass
class Sample:
    key: str
    image: Image.Image
    meta: dict


class SynferDataset:
    """A dataset folder written by ``synfer generate``; only finished shards (with an index) are read."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {str(root)!r} does not exist")
        if not (self.root / MANIFEST).is_file():
            raise DatasetError(f"{str(root)!r} is not a synfer dataset (no {MANIFEST}); make one with synfer generate")
        self.manifest = read_manifest(self.root)

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def label_set(self) -> LabelSet:
        return get_label_set(self.manifest["label_set"])

    @property
    def num_shards(self) -> int:
        return num_shards(self.n, int(self.manifest["shard_size"]))

    @property
    def shards(self) -> list[int]:
        """Finished shards, in order."""
        return sorted(s for s in done_shards(self.root) if s < self.num_shards)

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.num_shards

    def tar_path(self, shard: int) -> Path:
        return tar_path(self.root, shard)

    def shard_index(self, shard: int) -> pa.Table:
        return pq.read_table(index_path(self.root, shard))

    def index(self, columns: list[str] | None = None) -> pa.Table:
        """All finished shards' index rows, in key order."""
        tables = [pq.read_table(index_path(self.root, s), columns=columns) for s in self.shards]
        if not tables:
            raise DatasetError(f"{self.root} has no finished shards yet")
        return pa.concat_tables(tables)

    def iter_shard(self, shard: int) -> Iterator[Sample]:
        """Samples of one shard in tar order, decoded (image as RGB PIL, metadata as dict)."""
        pending: dict[str, dict] = {}
        with tarfile.open(self.tar_path(shard)) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                data = tar.extractfile(member).read()
                entry = pending.setdefault(key, {})
                entry[ext] = data
                if "json" in entry and any(e in entry for e in ("png", "jpg", "webp")):
                    blob = next(entry[e] for e in ("png", "jpg", "webp") if e in entry)
                    image = Image.open(io.BytesIO(blob))
                    image.load()
                    yield Sample(key, image.convert("RGB"), json.loads(entry["json"]))
                    del pending[key]
        if pending:
            raise DatasetError(f"shard {shard} of {self.root} has samples without image or metadata: {sorted(pending)[:3]}")

    def __iter__(self) -> Iterator[Sample]:
        for shard in self.shards:
            yield from self.iter_shard(shard)

    def shard_urls(self) -> list[str]:
        """Paths of the finished shards' tars, for ``webdataset.WebDataset``."""
        return [str(self.tar_path(s)) for s in self.shards]
