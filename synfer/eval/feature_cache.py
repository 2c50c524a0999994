"""The feature cache: what a model computed on a set of images, kept so that no image is seen twice.

```
CACHE/                              --cache, default $SYNFER_CACHE/features or ~/.cache/synfer/features
  <entry>/                          one per (image set, model, preprocessing): a RunFolder
    cache.json                      the record: the image set's identity and the model's record (kind,
                                    weight fingerprint, output, dtype, preprocessing), compared field by field
    parts/<chunk>.npz               values [n, D] float32, valid [n] bool, the chunk's content identity
```

An entry's folder name is a hash of its record, so a changed backbone, judge, input size or resize mode
is a new entry and never reads old features. Inside an entry, each chunk of the image set (a shard of
a synfer dataset, a block of real images) is one part, stored with the content identity of its images
(the shard index's SHA-256, the real files' SHA-256): a part is used only when that identity matches,
so a grown dataset computes only its new shards, and a changed file only its block. Parts are written
atomically; an interrupted extraction resumes at the first missing part.

``valid`` is false for an image that could not be decoded; such rows are left out of every figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.format import atomic_path
from ..data.run_folder import ResumeRules, RunFolder
from ..errors import DatasetError
from ..models.fingerprint import json_sha256

CACHE_FORMAT = "synfer-feature-cache"
CACHE_VERSION = 1
RECORD_NAME = "cache.json"
PARTS_DIR = "parts"
CACHE_ENV = "SYNFER_CACHE"
CACHE_RULES = ResumeRules(compare=("format", "version", "images", "model"))


def default_cache_dir() -> Path:
    """``$SYNFER_CACHE/features``, else ``$XDG_CACHE_HOME/synfer/features``, else ``~/.cache/synfer/features``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "features"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "synfer" / "features"


@dataclass(frozen=True)
class Chunk:
    """A block of an image set: a name (unique within the set), the content identity of its images, its rows."""

    name: str
    identity: str
    rows: np.ndarray


class CacheEntry:
    """The parts one model computed on one image set."""

    def __init__(self, folder: Path, record: dict):
        self.folder = Path(folder)
        self.record = record

    def open(self) -> CacheEntry:
        """Create the entry, or reuse it when its stored record matches (a foreign or different one is cleared)."""
        RunFolder(self.folder, RECORD_NAME, "feature cache").open(self.record, CACHE_RULES, overwrite=True)
        (self.folder / PARTS_DIR).mkdir(parents=True, exist_ok=True)
        return self

    def part_path(self, chunk: Chunk) -> Path:
        return self.folder / PARTS_DIR / f"{chunk.name}.npz"

    def load(self, chunk: Chunk) -> tuple[np.ndarray, np.ndarray] | None:
        """(values, valid) of ``chunk`` when a part with its identity and length is stored, else None."""
        path = self.part_path(chunk)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["identity"]) != chunk.identity or data["values"].shape[0] != len(chunk.rows):
                    return None
                return data["values"], data["valid"]
        except (OSError, KeyError, ValueError):
            return None  # a damaged part is computed again

    def save(self, chunk: Chunk, values: np.ndarray, valid: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool)
        if values.shape[0] != len(chunk.rows) or valid.shape != (len(chunk.rows),):
            raise DatasetError(f"feature part {chunk.name}: {values.shape[0]} rows for a chunk of {len(chunk.rows)}")
        with atomic_path(self.part_path(chunk)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, values=values, valid=valid, identity=np.array(chunk.identity))


class FeatureCache:
    """A folder of :class:`CacheEntry` (see the module docstring)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def entry(self, images: dict, model: dict) -> CacheEntry:
        record = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "images": images, "model": model}
        key = json_sha256({k: record[k] for k in ("format", "version", "images", "model")})
        label = f"{images.get('kind', 'images')}-{model.get('role', 'model')}-{model.get('kind', '')}".strip("-")
        return CacheEntry(self.root / f"{label}-{key[:20]}", record)
