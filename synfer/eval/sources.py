"""The two image sets evaluate compares: the generated dataset and the real reference, read chunk by chunk.

Both sides yield raw items (bytes of a shard member, a position in a real dataset) that are decoded to
RGB PIL images and then go through one ``Preprocess`` per model, the same code for both sides.

- :class:`GeneratedImages`: the finished shards of a synfer dataset (docs/formats.md, "Dataset"), one
  chunk per shard, read sequentially. Labels are the planned ones, or a label file's (``labels``:
  ``labels/NAME.parquet``, whose ``keep=false`` rows are left out). ``max_n`` keeps the first n samples in
  key order: the plan's label sequence keeps every prefix within quota, and seeds depend on the index
  alone, so a prefix is a fair sample of the whole.
- :class:`RealImages`: one split of a labelled FER dataset (``synfer.data.readers.open_labelled``), in
  blocks of ``REAL_CHUNK`` images. Each image's content hash is the SHA-256 of its file (or, for a
  dataset without one file per image, such as FER2013's CSV, of its decoded pixels); ``max_n`` draws a
  seeded random subset, since real datasets are often stored class by class.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..aus import NUM_AUS
from ..data.dataset import SynferDataset
from ..data.format import IMAGE_FORMATS, LABELS_DIR, MANIFEST, index_path, resolve_inside
from ..errors import ConfigError, DatasetError
from ..expressions import LabelSet
from ..models.fingerprint import json_sha256
from .arrays import rng_for
from .feature_cache import Chunk
from .model_files import file_sha256

REAL_CHUNK = 1024
# What decides a generated image (docs/formats.md, "Resumable folders"), less n: a grown dataset keeps its cache.
_MANIFEST_CONTENT = ("shard_size", "base_seed", "label_set", "image_format", "render")


def pixel_sha256(image) -> str:
    """SHA-256 of a decoded image's RGB pixels and size: the same picture re-encoded losslessly hashes the same."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _fixed_lists(column, dtype) -> np.ndarray:
    """A list<...>[41] index column as an [N, 41] array, without a Python object per value."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=dtype).reshape(-1, NUM_AUS)


def generated_identity(manifest: dict) -> dict:
    """The settings that decide a dataset's images, without its size."""
    plan = {k: v for k, v in (manifest.get("plan") or {}).items() if k not in ("n", "au_table")}
    components = {name: entry.get("sha256") for name, entry in ((manifest.get("model") or {}).get("components") or {}).items()}
    content = {key: manifest.get(key) for key in _MANIFEST_CONTENT}
    return {"kind": "generated", "content_sha256": json_sha256({**content, "plan": plan, "components": components})}


class GeneratedImages:
    """The samples of a synfer dataset that evaluate uses, with their labels and requested AUs."""

    side = "generated"

    def __init__(self, root: str | Path, labels: str | None = None, max_n: int | None = None):
        self.dataset = SynferDataset(root)
        self.root = self.dataset.root
        self.label_set: LabelSet = self.dataset.label_set
        self.labels_name = labels
        if not self.dataset.shards:
            raise DatasetError(f"{self.root} has no finished shards yet; run synfer generate to make them")
        index = self.dataset.index(["key", "shard", "label", "aus", "au_known", "seed"])
        keys = np.asarray(index.column("key").to_pylist())
        order = np.argsort(keys, kind="stable")
        self.excluded: Counter = Counter()
        self.notes: list[str] = []
        if not self.dataset.complete:
            self.notes.append(f"{len(self.dataset.shards)} of {self.dataset.num_shards} shards are finished; "
                              "only finished shards are evaluated")
        if max_n is not None and max_n < len(order):
            self.excluded[f"beyond --max-generated {max_n}"] += len(order) - max_n
            order = order[:max_n]
        self.all_seeds = np.asarray(index.column("seed").to_pylist(), dtype=np.int64)  # for layout references
        keys = keys[order]
        shards = np.asarray(index.column("shard").to_pylist(), dtype=np.int64)[order]
        planned = np.asarray(index.column("label").to_pylist(), dtype=np.int64)[order]
        aus = _fixed_lists(index.column("aus"), np.float32)[order]
        known = _fixed_lists(index.column("au_known"), bool)[order]
        keep = np.ones(len(keys), dtype=bool)
        labels_arr = planned
        if labels is not None:
            keep, labels_arr = self._relabelled(keys, planned)
        self.keys, self.shards, self.labels = keys[keep], shards[keep], labels_arr[keep]
        self.planned, self.aus, self.au_known = planned[keep], aus[keep], known[keep]
        if not len(self.keys):
            raise DatasetError(f"no samples of {self.root} are left to evaluate ({self.describe_excluded()})")
        self._index_hashes = {s: file_sha256(index_path(self.root, s)) for s in sorted(set(self.shards.tolist()))}

    def _relabelled(self, keys: np.ndarray, planned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import pyarrow.parquet as pq

        path = resolve_inside(self.root, f"{LABELS_DIR}/{self.labels_name}.parquet")
        if not path.is_file():
            found = sorted(p.stem for p in (self.root / LABELS_DIR).glob("*.parquet")) if (self.root / LABELS_DIR).is_dir() else []
            raise DatasetError(f"{self.root} has no {LABELS_DIR}/{self.labels_name}.parquet (found: {', '.join(found) or 'none'}); "
                               "make it with synfer relabel")
        try:
            table = pq.read_table(path, columns=["key", "label", "keep"])
        except (OSError, ValueError, KeyError) as error:
            raise DatasetError(f"cannot read key, label and keep from {path}: {error}") from None
        rectified = dict(zip(table.column("key").to_pylist(), zip(table.column("label").to_pylist(), table.column("keep").to_pylist())))
        keep, labels = np.zeros(len(keys), dtype=bool), planned.copy()
        for i, key in enumerate(keys.tolist()):
            entry = rectified.get(key)
            if entry is None:
                self.excluded[f"not in {LABELS_DIR}/{self.labels_name}.parquet"] += 1
            elif not entry[1]:
                self.excluded[f"keep is false in {LABELS_DIR}/{self.labels_name}.parquet"] += 1
            else:
                keep[i], labels[i] = True, int(entry[0])
        return keep, labels

    def __len__(self) -> int:
        return len(self.keys)

    def describe_excluded(self) -> str:
        return "; ".join(f"{count} {reason}" for reason, count in self.excluded.items()) or "none"

    def record(self) -> dict:
        return generated_identity(self.dataset.manifest)

    def chunks(self) -> list[Chunk]:
        out = []
        for shard in sorted(set(self.shards.tolist())):
            rows = np.flatnonzero(self.shards == shard)
            identity = json_sha256({"index": self._index_hashes[shard], "keys": self.keys[rows].tolist()})
            out.append(Chunk(f"shard-{shard:05d}", identity, rows))
        return out

    def items(self, chunk: Chunk) -> Iterator[tuple[int, object]]:
        """(row, (bytes or None, source)) for each row of ``chunk``, in tar order."""
        shard = int(self.shards[chunk.rows[0]])
        wanted = {self.keys[row]: int(row) for row in chunk.rows}
        tar_file = self.dataset.tar_path(shard)
        try:
            with tarfile.open(tar_file) as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if ext in IMAGE_FORMATS and key in wanted and member.isfile():
                        yield wanted.pop(key), (tar.extractfile(member).read(), f"{key} in {tar_file}")
                        if not wanted:
                            break
        except (OSError, tarfile.TarError) as error:
            raise DatasetError(f"cannot read shard {tar_file}: {error}; check it with synfer inspect --verify") from None
        for key, row in wanted.items():
            yield row, (None, f"{key} in {tar_file}")

    @staticmethod
    def decode(raw):
        from PIL import Image

        from ..data.readers import UnreadableImage

        data, source = raw
        if data is None:
            raise UnreadableImage(f"{source}: no image for this sample in its shard")
        try:
            with Image.open(io.BytesIO(data)) as handle:
                return handle.convert("RGB")
        except (OSError, ValueError, SyntaxError) as error:
            raise UnreadableImage(f"{source}: {error}") from None

    def describe(self) -> dict:
        manifest_sha = hashlib.sha256((self.root / MANIFEST).read_bytes()).hexdigest()
        return {"path": str(self.root.resolve()), "manifest_sha256": manifest_sha, "n": self.dataset.n,
                "finished_shards": len(self.dataset.shards),
                "num_shards": self.dataset.num_shards, "evaluated": len(self), "label_set": self.label_set.name,
                "labels": f"{LABELS_DIR}/{self.labels_name}.parquet" if self.labels_name else "planned",
                "excluded": dict(self.excluded), "notes": list(self.notes)}


class RealImages:
    """One split of a real labelled FER dataset, restricted to the evaluation's label set."""

    side = "real"

    def __init__(self, path: str | Path, split: str, label_set: LabelSet, *, layout: str | None = None, crop: str = "whole",
                 numbering: str | None = None, max_n: int | None = None, seed: int = 0):
        from ..data.readers import LAYOUTS, detect_layout, open_labelled

        chosen = LAYOUTS[layout] if layout is not None else detect_layout(path)
        if chosen.name == "synfer":
            raise ConfigError(f"--real {path} is a synfer dataset; the reference must be real faces "
                              f"(layouts: {', '.join(n for n in LAYOUTS.names() if n != 'synfer')})")
        if crop == "face" and "crop_face" not in chosen.options:
            raise ConfigError(f"--real-crop face needs face boxes, which {chosen.name} datasets do not have "
                              "(only affectnet-csv); use --real-crop whole")
        options = {"crop_face": crop == "face", "numbering": numbering}
        self.dataset = open_labelled(path, split=split, classes=label_set, layout=chosen.name, **options)
        self.layout, self.split, self.crop, self.label_set = chosen.name, split, crop, label_set
        self.root = Path(path).resolve()
        positions = np.arange(len(self.dataset))
        self.excluded: Counter = Counter()
        if max_n is not None and max_n < len(positions):
            positions = np.sort(rng_for(seed, "real-subset").choice(len(positions), max_n, replace=False))
            self.excluded[f"outside the seeded --max-real {max_n} subset"] += len(self.dataset) - max_n
        self.positions = positions
        self.labels = np.asarray(self.dataset.labels, dtype=np.int64)[positions]
        self.has_files = hasattr(self.dataset, "path")
        self._hashes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def file_of(self, row: int) -> Path | None:
        return Path(self.dataset.path(int(self.positions[row]))) if self.has_files else None

    def content_hashes(self, reporter=None) -> list[str]:
        """Per row: the SHA-256 of its file, or (no file per image) of its decoded pixels."""
        if self._hashes is None:
            from ..progress import SilentReporter

            reporter = reporter or SilentReporter()
            hashes = []
            with reporter.progress("hashing real images", total=len(self)) as advance:
                for row in range(len(self)):
                    if self.has_files:
                        try:
                            hashes.append(file_sha256(self.file_of(row)))
                        except OSError:
                            hashes.append("")
                    else:
                        try:
                            hashes.append(pixel_sha256(self.decode(int(self.positions[row]))))
                        except DatasetError:
                            hashes.append("")
                    advance(1)
            self._hashes = hashes
        return self._hashes

    def drop(self, rows: np.ndarray, reason: str) -> None:
        keep = np.ones(len(self), dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = False
        self.positions, self.labels = self.positions[keep], self.labels[keep]
        if self._hashes is not None:
            self._hashes = [h for h, k in zip(self._hashes, keep) if k]
        self.excluded[reason] += int((~keep).sum())

    def record(self) -> dict:
        return {"kind": "real", "path": str(self.root), "layout": self.layout, "split": self.split, "crop": self.crop,
                "label_set": self.label_set.name}

    def _root_identity(self) -> str:
        files = sorted(p for p in self.root.iterdir() if p.is_file()) if self.root.is_dir() else [self.root]
        return json_sha256({p.name: file_sha256(p) for p in files})

    def chunks(self) -> list[Chunk]:
        hashes = self.content_hashes() if self.has_files else None
        root_identity = None if self.has_files else self._root_identity()
        out = []
        for number, start in enumerate(range(0, len(self), REAL_CHUNK)):
            rows = np.arange(start, min(len(self), start + REAL_CHUNK))
            if hashes is not None:
                content = hashes[start:rows[-1] + 1]
            else:
                content = {"root": root_identity, "positions": self.positions[rows].tolist()}
            identity = json_sha256({"content": content, "labels": self.labels[rows].tolist()})
            # Named by content too: a subset of the same set (--max-real, dropped layout references) keeps its own parts.
            out.append(Chunk(f"rows-{number:06d}-{identity[:12]}", identity, rows))
        return out

    def items(self, chunk: Chunk) -> Iterator[tuple[int, object]]:
        for row in chunk.rows:
            yield int(row), int(self.positions[row])

    def decode(self, raw):
        return self.dataset.decode(raw).image

    def describe(self) -> dict:
        return {"path": str(self.root), "layout": self.layout, "split": self.split, "crop": self.crop, "n": len(self),
                "label_set": self.label_set.name, "read": self.dataset.stats.to_dict(),
                "excluded": dict(self.excluded)}
