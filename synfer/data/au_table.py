"""The AU table: per-image AU scores in synfer's 41 slots, as written by ``synfer annotate-aus``.

One parquet file, one row per image (see ``docs/formats.md``):

```
id         string            unique relative path of the image inside its dataset (never a bare file name)
aus        list<float32>[41] scores in slot order (intensities 0-5, or detector probabilities 0-1)
au_known   list<bool>[41]    which slots the source measured; an unknown slot's score is 0 and means nothing
...                          optional extra columns (label, split, ...), carried through untouched
```

The file's schema metadata (key ``synfer``) says what the scores are: ``scores`` is ``intensity``
(FACS 0-5) or ``probability`` (0-1, a detector's sigmoid), the source (detector name, weights
SHA-256, preprocessing), the slot order, and the threshold the source suggests for turning
probabilities into occurrences. The threshold is advice: nothing in this file has it applied.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..aus import AU_NAMES, MAX_INTENSITY, NUM_AUS
from ..errors import DatasetError
from .format import atomic_path

AU_TABLE_FORMAT = "synfer-au-table"
AU_TABLE_VERSION = 1
METADATA_KEY = b"synfer"
SCORE_KINDS = ("intensity", "probability")
_SCORE_RANGE = {"intensity": MAX_INTENSITY, "probability": 1.0}


@dataclass
class AUScores:
    """An AU table in memory: ``ids`` [N], ``scores`` [N, 41] float32, ``known`` [N, 41] bool.

    ``kind`` is ``intensity`` or ``probability``; ``source`` is what made the scores (detector,
    weights hash, preprocessing); ``extra`` holds any further columns by name.
    """

    ids: list[str]
    scores: np.ndarray
    known: np.ndarray
    kind: str = "intensity"
    source: dict = field(default_factory=dict)
    suggested_threshold: float | None = None
    extra: dict[str, list] = field(default_factory=dict)

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1, NUM_AUS)
        self.known = np.asarray(self.known, dtype=bool).reshape(-1, NUM_AUS)
        check_scores(self.ids, self.scores, self.known, self.kind)
        for name, column in self.extra.items():
            if len(column) != len(self.ids):
                raise DatasetError(f"AU table column {name!r} has {len(column)} values for {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.ids)

    def metadata(self) -> dict:
        return {
            "format": AU_TABLE_FORMAT,
            "version": AU_TABLE_VERSION,
            "scores": self.kind,
            "slots": list(AU_NAMES),
            "source": self.source,
            "suggested_threshold": self.suggested_threshold,
        }

    def row(self, image_id: str) -> int:
        """The row of ``image_id`` (an error naming it when the table lacks it)."""
        try:
            return self._positions[image_id]
        except KeyError:
            raise DatasetError(f"the AU table has no row for {image_id!r}") from None

    @property
    def _positions(self) -> dict[str, int]:
        if not hasattr(self, "_cached_positions"):
            self._cached_positions = {image_id: i for i, image_id in enumerate(self.ids)}
        return self._cached_positions


def check_scores(ids: Sequence[str], scores: np.ndarray, known: np.ndarray, kind: str) -> None:
    """Ids unique and relative, shapes [N, 41], scores finite and in the kind's range where known."""
    if kind not in SCORE_KINDS:
        raise DatasetError(f"unknown AU score kind {kind!r} (accepted: {', '.join(SCORE_KINDS)})")
    if scores.shape != (len(ids), NUM_AUS) or known.shape != scores.shape:
        raise DatasetError(f"an AU table needs [N, {NUM_AUS}] scores and known-mask for N ids, got {scores.shape} for {len(ids)}")
    seen: dict[str, int] = {}
    for i, image_id in enumerate(ids):
        if not image_id or image_id.startswith("/") or ".." in Path(image_id).parts:
            raise DatasetError(f"AU table id {image_id!r} must be a relative path inside its dataset")
        if image_id in seen:
            raise DatasetError(f"AU table id {image_id!r} appears twice (rows {seen[image_id]} and {i})")
        seen[image_id] = i
    if not np.all(np.isfinite(scores)):
        raise DatasetError("AU table scores must be finite numbers")
    high = _SCORE_RANGE[kind]
    bad = known & ((scores < 0) | (scores > high))
    if bad.any():
        row, slot = (int(v[0]) for v in np.nonzero(bad))
        raise DatasetError(f"AU table {ids[row]!r}: {AU_NAMES[slot]} = {scores[row, slot]:g} is outside 0-{high:g} ({kind})")


def au_table_schema(extra: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("aus", pa.list_(pa.float32(), NUM_AUS), nullable=False),
        pa.field("au_known", pa.list_(pa.bool_(), NUM_AUS), nullable=False),
    ]
    return pa.schema(fields + [pa.field(name, dtype) for name, dtype in (extra or {}).items()])


def au_table_to_arrow(table: AUScores) -> pa.Table:
    columns = {
        "id": pa.array(table.ids, pa.string()),
        "aus": pa.FixedSizeListArray.from_arrays(pa.array(table.scores.reshape(-1), pa.float32()), NUM_AUS),
        "au_known": pa.FixedSizeListArray.from_arrays(pa.array(table.known.reshape(-1), pa.bool_()), NUM_AUS),
    }
    columns.update({name: pa.array(values) for name, values in table.extra.items()})
    arrow = pa.table(columns)
    return arrow.replace_schema_metadata({METADATA_KEY: json.dumps(table.metadata(), sort_keys=True).encode()})


def write_au_table(path: str | Path, table: AUScores) -> Path:
    """Write ``table`` to ``path`` (parquet) atomically: the file appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(au_table_to_arrow(table), tmp)
    return path


def read_au_table_metadata(path: str | Path) -> dict:
    """The ``synfer`` metadata of an AU table file; an error when the file is not one."""
    path = Path(path)
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read AU table {path}: {error}") from None
    try:
        metadata = json.loads(raw) if raw else {}
    except ValueError:
        metadata = {}
    if metadata.get("format") != AU_TABLE_FORMAT:
        raise DatasetError(f"{path} is not a synfer AU table (made by synfer annotate-aus or synfer world make)")
    if metadata.get("version") != AU_TABLE_VERSION:
        raise DatasetError(f"{path} is AU table version {metadata.get('version')}; this synfer reads {AU_TABLE_VERSION}")
    if list(metadata.get("slots", [])) != list(AU_NAMES):
        raise DatasetError(f"{path} orders its AU slots differently from this synfer's 41 slots")
    return metadata


def read_au_table(path: str | Path) -> AUScores:
    """Read an AU table written by :func:`write_au_table`, checking every row."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"AU table {str(path)!r} does not exist")
    metadata = read_au_table_metadata(path)
    table = pq.read_table(path)
    ids = table.column("id").to_pylist()
    scores = np.asarray(table.column("aus").to_pylist(), dtype=np.float32).reshape(len(ids), NUM_AUS)
    known = np.asarray(table.column("au_known").to_pylist(), dtype=bool).reshape(len(ids), NUM_AUS)
    extra = {name: table.column(name).to_pylist() for name in table.column_names if name not in ("id", "aus", "au_known")}
    return AUScores(
        ids,
        scores,
        known,
        kind=metadata["scores"],
        source=metadata.get("source") or {},
        suggested_threshold=metadata.get("suggested_threshold"),
        extra=extra,
    )
