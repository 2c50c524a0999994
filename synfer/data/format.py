"""The synfer dataset format (docs/formats.md, "Dataset"): names, the index schema, and crash-safe file writing.

```
DATASET/
  manifest.json         what was asked for: config, model fingerprints, n, shard size, base seed
  shards/00000.tar      webdataset shard: <key>.<png|jpg|webp> and <key>.json per sample
  shards/00000.parquet  the shard's index; written last, so its presence means "shard done"
  labels/<name>.parquet added by relabel
```
Every file is written under a temporary name, flushed to disk and renamed into place, so a file
with its final name is always complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from ..aus import NUM_AUS
from ..errors import ConfigError, DatasetError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
LABELS_DIR = "labels"
CARD = "README.md"
PREVIEW = "preview.png"
KEY_WIDTH = 9  # up to 10^9 samples; 5x AffectNet is about 1.4M
SHARD_WIDTH = 5
IMAGE_FORMATS = ("png", "jpg", "webp")
TMP_SUFFIX = ".tmp"
# Fixed tar member times: the same samples always make the same shard bytes.
TAR_MTIME = 1_700_000_000

INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("index", pa.int64(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("label_name", pa.string(), nullable=False),
        pa.field("aus", pa.list_(pa.float32(), NUM_AUS), nullable=False),
        pa.field("au_known", pa.list_(pa.bool_(), NUM_AUS), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("image", pa.string(), nullable=False),  # tar member name of the image
        pa.field("attributes", pa.string(), nullable=False),  # JSON object of subject attributes
    ]
)


def check_image_format(image_format: str) -> str:
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"unknown image format {image_format!r} (accepted: {', '.join(IMAGE_FORMATS)})")
    return image_format


def sample_key(index: int) -> str:
    """The key of global sample ``index``: zero-padded, no dots (webdataset splits keys at dots)."""
    return f"{index:0{KEY_WIDTH}d}"


def shard_stem(shard: int) -> str:
    return f"{shard:0{SHARD_WIDTH}d}"


def tar_path(root: Path, shard: int) -> Path:
    return Path(root) / SHARDS_DIR / f"{shard_stem(shard)}.tar"


def index_path(root: Path, shard: int) -> Path:
    return Path(root) / SHARDS_DIR / f"{shard_stem(shard)}.parquet"


def num_shards(n: int, shard_size: int) -> int:
    return (n + shard_size - 1) // shard_size


def shard_range(shard: int, n: int, shard_size: int) -> range:
    """The global sample indices of ``shard``."""
    return range(shard * shard_size, min((shard + 1) * shard_size, n))


def done_shards(root: Path) -> set[int]:
    """Shards whose index exists: finished and never to be rewritten."""
    folder = Path(root) / SHARDS_DIR
    if not folder.is_dir():
        return set()
    return {int(p.stem) for p in folder.glob("*.parquet") if p.stem.isdigit()}


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete (never matched by ``*.tar`` or ``*.parquet``)."""
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


def commit_file(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``path`` in one atomic step."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(Path(path).parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success commit it to ``path``.

    On failure the temporary file is removed and ``path`` is left as it was.
    """
    tmp = temporary_path(path)
    try:
        yield tmp
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{str(root)!r} is not a synfer dataset (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{path} has schema version {manifest.get('schema_version') if isinstance(manifest, dict) else '?'}; "
            f"this synfer reads version {SCHEMA_VERSION}"
        )
    return manifest


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing paths (from metadata) that would leave ``root``."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise DatasetError(f"path {relative!r} in the dataset metadata points outside the dataset folder")
    return candidate
