"""synfer datasets (docs/formats.md, "Dataset"): finished shards read with webdataset, labels from the index.

With ``labels=NAME`` the labels come from ``labels/NAME.parquet`` written by ``synfer relabel``
(columns ``key``, ``label`` = the rectified AffectNet id, ``keep``): rows with ``keep`` false are
left out and ``label`` replaces the generated label. A synthetic dataset has no splits; every
requested split reads all of it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import DatasetError
from ...expressions import Expression, LabelSet
from ..dataset import SynferDataset
from ..format import IMAGE_FORMATS, LABELS_DIR, MANIFEST, resolve_inside
from ..verify import check_tar
from .base import LabelledDataset, LabelledImage, ReadStats, UnreadableImage, decode_image_bytes, restrict_to_label_set
from .layouts import Layout, register_layout

RELABEL_COLUMNS = ("key", "label", "keep")


def _expressions(codes, where: str) -> list[Expression]:
    try:
        return [Expression(int(code)) for code in codes]
    except ValueError as error:
        raise DatasetError(f"{where}: {error}") from None


def _relabel(root: Path, name: str, keys: list[str], stats: ReadStats) -> tuple[np.ndarray, list[Expression]]:
    """A keep-mask over ``keys`` and their rectified labels from ``labels/<name>.parquet``."""
    path = resolve_inside(root, f"{LABELS_DIR}/{name}.parquet")
    if not path.is_file():
        found = sorted(p.stem for p in (root / LABELS_DIR).glob("*.parquet")) if (root / LABELS_DIR).is_dir() else []
        raise DatasetError(f"{root} has no {LABELS_DIR}/{name}.parquet (found: {', '.join(found) or 'none'}); make it with synfer relabel")
    schema = pq.read_schema(path)
    absent = [c for c in RELABEL_COLUMNS if c not in schema.names]
    if absent:
        raise DatasetError(f"{path} has no column {absent[0]!r} (expected {', '.join(RELABEL_COLUMNS)})")
    table = pq.read_table(path, columns=list(RELABEL_COLUMNS))
    rectified = dict(zip(table.column("key").to_pylist(), zip(table.column("label").to_pylist(), table.column("keep").to_pylist())))
    keep, labels = np.zeros(len(keys), dtype=bool), []
    for i, key in enumerate(keys):
        if key not in rectified:
            stats.excluded[f"not in {LABELS_DIR}/{name}.parquet"] += 1
        elif not rectified[key][1]:
            stats.excluded[f"keep is false in {LABELS_DIR}/{name}.parquet"] += 1
        else:
            keep[i] = True
            labels.append(rectified[key][0])
    return keep, _expressions(labels, str(path))


def _damaged_shards(dataset: SynferDataset, shards: np.ndarray, skip: bool, stats: ReadStats) -> list[int]:
    """Shards whose tar fails a fast structural check: an error before any training, or (``skip``) left out and counted."""
    counts = Counter(int(s) for s in shards)
    damaged = []
    for shard in dataset.shards:
        problem = check_tar(dataset.tar_path(shard), 2 * counts.get(shard, 0))
        if problem is None:
            continue
        if not skip:
            raise DatasetError(
                f"shard {dataset.tar_path(shard)} is damaged: {problem}; run synfer inspect --verify {dataset.root}, "
                "regenerate it (delete its .parquet and rerun synfer generate), or pass --skip-damaged"
            )
        stats.excluded[f"in damaged shards ({problem})"] += counts.get(shard, 0)
        damaged.append(shard)
    return damaged


class SynferShards(LabelledDataset):
    """The finished shards of a synfer dataset; reading is sequential, one tar at a time."""

    layout = "synfer"
    sequential = True

    def __init__(self, root: Path, label_set: LabelSet, strict: bool, labels: str | None = None, skip_damaged: bool = False):
        dataset = SynferDataset(root)
        index = dataset.index(["key", "shard", "label"])
        keys = index.column("key").to_pylist()
        shards = np.asarray(index.column("shard").to_pylist(), dtype=np.int32)
        stats = ReadStats()
        damaged = _damaged_shards(dataset, shards, skip_damaged, stats)
        if damaged:
            intact = ~np.isin(shards, damaged)
            index = index.filter(pa.array(intact))
            keys, shards = [k for k, ok in zip(keys, intact) if ok], shards[intact]
        if labels is not None:
            keep, expressions = _relabel(dataset.root, labels, keys, stats)
        else:
            keep, expressions = np.ones(len(keys), dtype=bool), _expressions(index.column("label").to_pylist(), str(root))
        keys, shards = [k for k, k_ in zip(keys, keep) if k_], shards[keep]
        inside = restrict_to_label_set(expressions, label_set, stats)
        if not inside.any():
            raise DatasetError(f"synfer dataset {root} has no {label_set.name} samples left ({stats.summary()})")
        super().__init__(dataset.root, "all", label_set, np.asarray([int(e) for e in expressions])[inside], stats, strict)
        self.labels_name = labels
        self._keys = np.asarray([k.encode() for k, i in zip(keys, inside) if i])
        self._shards = shards[inside]
        self._urls = {shard: str(dataset.tar_path(shard)) for shard in dataset.shards}

    def groups(self) -> np.ndarray:
        return self._shards

    def sample_ids(self) -> list[str]:
        return [key.decode() for key in self._keys]

    def raw(self, positions: Sequence[int]) -> Iterator[tuple]:
        positions = np.asarray(positions, dtype=np.int64)
        start = 0
        while start < len(positions):
            shard = self._shards[positions[start]]
            stop = start + 1
            while stop < len(positions) and self._shards[positions[stop]] == shard:
                stop += 1
            yield from self._read_shard(int(shard), positions[start:stop])
            start = stop

    def _read_shard(self, shard: int, positions: np.ndarray) -> Iterator[tuple]:
        """(position, key, extension, bytes) for each wanted position, in tar order, repeats included."""
        wanted = Counter(int(p) for p in positions)
        by_key = {self._keys[p].decode(): p for p in wanted}
        url = self._urls[shard]
        import webdataset as wds  # it loads torch

        samples = iter(wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()))
        try:
            for sample in samples:
                position = by_key.pop(sample["__key__"], None)
                if position is None:
                    continue
                ext = next((e for e in IMAGE_FORMATS if e in sample), None)
                for _ in range(wanted[position]):
                    yield position, sample["__key__"], ext, sample.get(ext) if ext else None
                if not by_key:
                    break
        finally:
            samples.close()
        for key, position in by_key.items():  # listed in the index, absent from the tar
            for _ in range(wanted[position]):
                yield position, key, None, None

    def decode(self, raw: tuple) -> LabelledImage:
        position, key, ext, data = raw
        source = f"{key} in {self._urls[int(self._shards[position])]}"
        if data is None:
            raise UnreadableImage(f"{source}: no image for this sample in its shard")
        return LabelledImage(decode_image_bytes(data, source), Expression(int(self.labels[position])), key, key)


def open_synfer(
    root: Path, split: str, label_set: LabelSet, strict: bool, labels: str | None = None, skip_damaged: bool = False
) -> SynferShards:
    return SynferShards(root, label_set, strict, labels, skip_damaged)


register_layout(
    Layout(
        "synfer",
        f"{MANIFEST} and shards/ (a dataset written by synfer generate)",
        lambda root: (root / MANIFEST).is_file(),
        open_synfer,
        ("labels", "skip_damaged"),
    )
)
