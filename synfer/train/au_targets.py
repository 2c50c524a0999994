"""AU targets for labelled images: an AU table joined to a dataset by image id, as a dataset itself.

:class:`AUJoined` holds the samples of a labelled dataset that have a row in the AU table, and gives
each decoded sample its 41 scores and known-mask (``item_targets``), which the training streams of
:mod:`synfer.train.data` add to the items they yield. Where the AUs come from (first that applies):

1. the table given (``--au-table``): a synfer AU table (annotate-aus, world make) or any file the
   ``table:`` importers read (OpenFace, py-feat, OpenGraphAU, one column per AU), joined by id;
2. ``aus.parquet`` beside the split's images: ``synfer world make`` writes one per split;
3. a synfer dataset's index: the AUs each sample was generated with.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..aus import NUM_AUS
from ..data.au_table import SCORE_KINDS
from ..data.readers import LabelledDataset, LabelledImage
from ..errors import ConfigError, DatasetError

BESIDE_NAME = "aus.parquet"


class AUTargets:
    """Scores [N, 41] and known-mask per id; ``kind`` is "intensity" or "probability"."""

    def __init__(self, ids: Sequence[str], scores: np.ndarray, known: np.ndarray, kind: str, source: str):
        if kind not in SCORE_KINDS:
            raise ConfigError(f"unknown AU score kind {kind!r} (accepted: {', '.join(SCORE_KINDS)})")
        self.ids = list(ids)
        self.scores = np.asarray(scores, np.float32).reshape(-1, NUM_AUS)
        self.known = np.asarray(known, bool).reshape(-1, NUM_AUS)
        self.kind = kind
        self.source = source


def read_targets(path: str | Path, dataset: LabelledDataset, id_column: str | None = None) -> AUTargets:
    """The AU file at ``path`` with its ids read relative to the dataset's image folder."""
    from ..labelers.annotate_aus import read_au_file

    root = Path(getattr(dataset, "image_root", dataset.root))
    au_file = read_au_file(path, root, id_column)
    rows = au_file.rows
    ids = list(rows)
    picked = np.asarray([rows[i] for i in ids], dtype=np.int64)
    return AUTargets(ids, au_file.values[picked], au_file.known[picked], au_file.kind, str(path))


def default_targets(dataset: LabelledDataset, role: str) -> AUTargets:
    """The AU table beside the split's images, or a synfer dataset's generated AUs; an error naming the option otherwise."""
    image_root = getattr(dataset, "image_root", None)
    if image_root is not None and (Path(image_root) / BESIDE_NAME).is_file():
        return read_targets(Path(image_root) / BESIDE_NAME, dataset)
    if dataset.layout == "synfer":
        from ..data.dataset import SynferDataset

        index = SynferDataset(dataset.root).index(["key", "aus", "au_known"])
        scores = np.asarray(index.column("aus").to_pylist(), np.float32)
        known = np.asarray(index.column("au_known").to_pylist(), bool)
        return AUTargets(index.column("key").to_pylist(), scores, known, "intensity", f"{dataset.root} (the AUs it was generated with)")
    option = "--eval-au-table" if role == "eval" else "--au-table"
    raise ConfigError(
        f"the {role} data {dataset.name} at {dataset.root} has no AU targets: give {option} FILE (an AU table from "
        f"synfer annotate-aus or world make, or a CSV/parquet of AUs with an id column), or put {BESIDE_NAME} beside its images"
    )


class AUJoined(LabelledDataset):
    """The samples of ``inner`` that have AU targets, each decoded sample with its scores and known-mask."""

    def __init__(self, inner: LabelledDataset, targets: AUTargets):
        from ..labelers.annotate_aus import AUFile, match_ids

        ids = inner.sample_ids()
        lookup = AUFile(Path(targets.source), list(targets.ids), targets.scores, targets.known, targets.kind, "targets")
        positions, rows = match_ids(ids, lookup, f"{inner.name} at {inner.root}")
        stats = copy.deepcopy(inner.stats)
        missing = len(ids) - len(positions)
        if missing:
            stats.excluded["no row in the AU table"] += missing
        super().__init__(inner.root, inner.split, inner.label_set, inner.labels[positions], stats, inner.strict)
        self.inner = inner
        self.layout = inner.layout
        self.sequential = inner.sequential
        self.kind = targets.kind
        self.source = targets.source
        self._positions = np.asarray(positions, dtype=np.int64)
        self.scores = targets.scores[rows]
        self.known = targets.known[rows]
        # Ids sorted once, as one numpy array: a forked worker finds a sample's row without copying a dict.
        joined = np.asarray([ids[p].encode() for p in positions])
        self._order = np.argsort(joined, kind="stable")
        self._sorted = joined[self._order]

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def known_slots(self) -> np.ndarray:
        """[41] bool: slots known for at least one sample."""
        return self.known.any(axis=0)

    def sample_ids(self) -> list[str]:
        return [self._sorted[i].decode() for i in np.argsort(self._order, kind="stable")]

    def groups(self) -> np.ndarray | None:
        groups = self.inner.groups()
        return None if groups is None else groups[self._positions]

    def raw(self, positions: Sequence[int]) -> Iterator:
        return self.inner.raw(self._positions[np.asarray(positions, dtype=np.int64)])

    def decode(self, raw) -> LabelledImage:
        return self.inner.decode(raw)

    def row(self, image_id: str | None) -> int:
        key = (image_id or "").encode()
        at = int(np.searchsorted(self._sorted, key))
        if at >= len(self._sorted) or self._sorted[at] != key:
            raise DatasetError(f"sample {image_id!r} of {self.name} has no AU targets")
        return int(self._order[at])

    def item_targets(self, sample: LabelledImage | None) -> dict:
        """The fields a training item gets besides its label: ``aus`` [41] and ``au_known`` [41] (none known when unreadable)."""
        if sample is None:
            return {"aus": np.zeros(NUM_AUS, np.float32), "au_known": np.zeros(NUM_AUS, bool)}
        row = self.row(sample.id)
        return {"aus": self.scores[row], "au_known": self.known[row]}

    def describe(self) -> str:
        return f"{self.inner.describe()}; AU targets ({self.kind}) for {len(self)} from {self.source}"
