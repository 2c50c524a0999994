"""Where each sample's AUs come from: its expression's prototype, a table of real AU vectors, or fixed.

Every source is a pure function of (config, sample index, label): its randomness comes from
``derive_seed(base_seed, index, stream=AU_STREAM)``, so a sample's AUs do not depend on the batch, the
process or the resume state.

An AU table (``--au-table``, parquet or CSV) has one row per real face and these columns:

* ``label``: the expression, as a name (``happy``, ``anger``, ...) or an AffectNet id (0-7);
* the AUs, in one of three layouts (the first that matches is used):

  1. ``aus``: a list of 41 intensities in synfer's slot order (a synfer shard index has this column),
     with an optional ``au_known`` list of 41 booleans; or an AU string per row such as
     ``AU6:2.5,AU12:4`` (see :meth:`synfer.aus.AUVector.parse`);
  2. OpenFace 2 columns ``AU06_r`` (intensity 0-5) and/or ``AU06_c`` (presence), read with
     :func:`synfer.aus.from_openface`;
  3. one column per AU, named as synfer names them (``AU1`` ... ``AU39``, ``L1`` ... ``R14``) with
     intensities 0-5; an empty cell or an absent column means *unknown*.

Rows whose label is outside the label set are never drawn.

:func:`au_columns` reads these layouts (and, for ``synfer annotate-aus``, py-feat's ``AU06``
probabilities and OpenGraphAU's ``AU1`` ... ``AUR14`` probabilities) from any table, so that every
command that reads AU columns reads them the same way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..aus import (
    AU_INDEX,
    AU_TABLE,
    DEFAULT_PRESENT_INTENSITY,
    MAX_INTENSITY,
    NUM_AUS,
    PROTOTYPE_AUS,
    AUVector,
    from_openface,
    from_pyfeat,
)
from ..errors import AUError, ConfigError, LabelError, first_line
from ..expressions import Expression, parse_expression
from ..registry import Registry
from .seeds import AU_STREAM, derive_seed

if TYPE_CHECKING:
    from .plan import PlanConfig

# AUs that often accompany each expression's prototype in the EMFACS variants (Ekman & Friesen):
# open-mouth smiles and Duchenne squints, the chin raiser of sadness, the open jaw of surprise and fear,
# the upper-lip raiser of anger and disgust.
COOCCURRING_AUS: dict[Expression, tuple[str, ...]] = {
    Expression.NEUTRAL: (),
    Expression.HAPPY: ("AU7", "AU25", "AU26"),
    Expression.SAD: ("AU6", "AU11", "AU17"),
    Expression.SURPRISE: ("AU25", "AU27"),
    Expression.FEAR: ("AU25", "AU27"),
    Expression.DISGUST: ("AU4", "AU10", "AU17", "AU25"),
    Expression.ANGER: ("AU10", "AU17", "AU24", "AU25", "AU26"),
    Expression.CONTEMPT: (),
}


class AUSource(Protocol):
    """Gives sample ``index`` with expression ``label`` its AUs."""

    def __call__(self, index: int, label: Expression) -> AUVector: ...

    def supports(self, label: Expression) -> bool: ...


def _round(value: float) -> float:
    return float(np.round(value, 1))


@dataclass(frozen=True)
class PrototypeAUs:
    """The expression's prototype AUs with jittered intensities, occasionally one dropped or one added.

    Each prototype AU gets an intensity from N(``mean``, ``spread``) clipped to [1, 5]; each is dropped
    with probability ``drop`` while at least half of the prototype is left; each co-occurring AU of
    :data:`COOCCURRING_AUS` is added with probability ``add`` at a weak intensity (1-2.5). Contempt
    is one-sided, so its side is chosen at random.
    """

    base_seed: int
    mean: float = DEFAULT_PRESENT_INTENSITY
    spread: float = 0.75
    drop: float = 0.1
    add: float = 0.15

    def supports(self, label: Expression) -> bool:
        return True

    def __call__(self, index: int, label: Expression) -> AUVector:
        rng = np.random.default_rng(derive_seed(self.base_seed, index, stream=AU_STREAM))
        names = list(PROTOTYPE_AUS[label])
        if label is Expression.CONTEMPT and rng.random() < 0.5:
            names = [name.replace("R", "L", 1) for name in names]
        intensities = {name: _round(np.clip(rng.normal(self.mean, self.spread), 1.0, MAX_INTENSITY)) for name in names}
        keep_at_least = (len(names) + 1) // 2
        for name in rng.permutation(names) if names else []:
            if len(intensities) > keep_at_least and rng.random() < self.drop:
                del intensities[name]
        for name in COOCCURRING_AUS[label]:
            if rng.random() < self.add:
                intensities.setdefault(name, _round(rng.uniform(1.0, 2.5)))
        return AUVector.from_dict(intensities)


@dataclass(frozen=True)
class FixedAUs:
    """The same AUs for every sample."""

    aus: AUVector

    def supports(self, label: Expression) -> bool:
        return True

    def __call__(self, index: int, label: Expression) -> AUVector:
        return self.aus


@dataclass(frozen=True)
class AUTable:
    """Real AU vectors with their expression labels (see the module docstring for the file layout)."""

    path: Path
    sha256: str
    labels: np.ndarray  # [m] AffectNet ids
    values: np.ndarray  # [m, 41] float32
    known: np.ndarray  # [m, 41] bool

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def _rows_by_label(self) -> dict[int, np.ndarray]:
        return {int(label): np.flatnonzero(self.labels == label) for label in np.unique(self.labels)}

    def rows(self, label: Expression) -> np.ndarray:
        """Row numbers of the table's vectors for ``label``."""
        return self._rows_by_label.get(int(label), np.zeros(0, np.int64))

    def vector(self, row: int) -> AUVector:
        return AUVector(self.values[row], self.known[row])


@dataclass(frozen=True)
class EmpiricalAUs:
    """A uniformly drawn real AU vector of the sample's expression from an :class:`AUTable`."""

    table: AUTable
    base_seed: int

    def supports(self, label: Expression) -> bool:
        return len(self.table.rows(label)) > 0

    def __call__(self, index: int, label: Expression) -> AUVector:
        rows = self.table.rows(label)
        rng = np.random.default_rng(derive_seed(self.base_seed, index, stream=AU_STREAM))
        return self.table.vector(int(rows[rng.integers(len(rows))]))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    return digest.hexdigest()


_ACCEPTED_COLUMNS = (
    "accepted: a 'label' column plus 'aus' (41 intensities or an AU string per row), OpenFace "
    "'AU06_r'/'AU06_c' columns, or one column per AU named AU1 ... AU39, L1 ... R14"
)
_OPENFACE = re.compile(r"^AU\d\d_[rc]$")


def read_table_file(path: Path):
    """A parquet, CSV or TSV file as a pyarrow table, column names stripped; one-line errors."""
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            table = pq.read_table(path)
        elif suffix in (".csv", ".tsv"):
            options = pv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
            table = pv.read_csv(path, parse_options=options)
        else:
            raise ConfigError(f"AU table {path}: unknown file type {suffix!r} (accepted: .parquet, .csv, .tsv)")
    except (OSError, ValueError) as error:  # pyarrow's parse errors are ArrowInvalid, a ValueError
        raise ConfigError(f"cannot read AU table {path}: {first_line(error)}") from None
    return table.rename_columns([c.strip() for c in table.column_names])


def _labels(column, path: Path) -> np.ndarray:
    values = column.to_pylist()
    if any(v is None for v in values):
        raise LabelError(f"AU table {path}: the 'label' column has empty cells (row {values.index(None)})")
    parsed = {v: int(parse_expression(v)) for v in set(values)}
    return np.array([parsed[v] for v in values], dtype=np.int8)


def _from_aus_column(table, path: Path) -> tuple[np.ndarray, np.ndarray]:
    column = table.column("aus").to_pylist()
    if column and isinstance(column[0], str):
        vectors = []
        for row, text in enumerate(column):
            try:
                vectors.append(AUVector.parse(text))
            except AUError as error:
                raise AUError(f"AU table {path}, row {row}: {error}") from None
        return np.stack([v.values for v in vectors]), np.stack([v.known for v in vectors])
    try:
        values = np.asarray(column, dtype=np.float32)
        known = (
            np.asarray(table.column("au_known").to_pylist(), dtype=bool)
            if "au_known" in table.column_names
            else np.ones_like(values, dtype=bool)
        )
    except (TypeError, ValueError):
        raise AUError(f"AU table {path}: every 'aus' cell must hold {NUM_AUS} numbers") from None
    if values.ndim != 2 or values.shape[1] != NUM_AUS or known.shape != values.shape:
        raise AUError(f"AU table {path}: every 'aus' (and 'au_known') cell must hold {NUM_AUS} values")
    return values, known


def _from_openface(table, path: Path) -> tuple[np.ndarray, np.ndarray]:
    columns = [c for c in table.column_names if _OPENFACE.match(c)]
    rows = table.select(columns).to_pylist()
    vectors = [from_openface({k: v for k, v in row.items() if v is not None}) for row in rows]
    return np.stack([v.values for v in vectors]), np.stack([v.known for v in vectors])


def _from_probability_columns(table, path: Path, slots: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Occurrence probabilities 0-1 from the columns ``slots`` names; an empty cell means unknown."""
    values = np.zeros((table.num_rows, NUM_AUS), np.float32)
    known = np.zeros((table.num_rows, NUM_AUS), bool)
    for name, slot in slots.items():
        try:
            column = table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
        except (TypeError, ValueError):
            raise AUError(f"AU table {path}: column {name!r} must hold numbers (probabilities 0-1)") from None
        present = ~np.isnan(column)
        bad = present & ((column < 0) | (column > 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AUError(f"AU table {path}, row {row}: {name} = {column[row]:g} is outside 0-1 (a probability)")
        values[:, slot] = np.where(present, column, 0.0)
        known[:, slot] = present
    return values, known


def _pyfeat_slots(names: list[str]) -> dict[str, int]:
    """py-feat's ``AU06`` columns -> synfer slots (the columns :func:`synfer.aus.from_pyfeat` reads)."""
    measured = from_pyfeat(dict.fromkeys(names, 0.0)).known
    return {f"AU{AU_TABLE[slot].number:02d}": int(slot) for slot in np.flatnonzero(measured)}


def _opengraphau_slots(names: list[str]) -> dict[str, int]:
    """OpenGraphAU's output names (``AU1`` ... ``AU39``, ``AUL1`` ... ``AUR14``) -> synfer slots."""
    from ..models.opengraphau import OPENGRAPHAU_TO_SYNFER  # its names; torch loads only for such a table

    return {name: AU_INDEX[OPENGRAPHAU_TO_SYNFER[name]] for name in names if name in OPENGRAPHAU_TO_SYNFER}


@dataclass(frozen=True)
class AUColumns:
    """AU scores read from a table's columns: ``values`` [N, 41] (0 where unknown), ``known`` [N, 41]."""

    values: np.ndarray
    known: np.ndarray
    layout: str  # one of AU_COLUMN_LAYOUTS
    scores: str  # "intensity" (0-5) or "probability" (0-1)


# The column layouts au_columns knows, in the order it tries them, and the scores each holds.
AU_COLUMN_LAYOUTS = {"aus": "intensity", "openface": "intensity", "pyfeat": "probability", "opengraphau": "probability",
                     "named": "intensity"}
INTENSITY_LAYOUTS = ("aus", "openface", "named")  # what an AU table of synfer generate holds
_PYFEAT = re.compile(r"^AU0\d$")  # py-feat pads AU numbers to two digits: AU01 ... AU09 only it writes
_OPENGRAPHAU = re.compile(r"^AU[LR]\d+$")  # OpenGraphAU's one-sided outputs: AUL1, AUR14


def au_columns(table, path: Path, layouts: tuple[str, ...] = INTENSITY_LAYOUTS) -> AUColumns | None:
    """The AU scores of ``table`` (pyarrow) in the first of ``layouts`` its columns match; None when none does.

    Layouts: ``aus`` (41 values per cell, or an AU string), ``openface`` (``AU06_r``/``AU06_c``, through
    :func:`synfer.aus.from_openface`), ``pyfeat`` (``AU01`` ... probabilities, the columns
    :func:`synfer.aus.from_pyfeat` reads), ``opengraphau`` (``AU1`` ... ``AUL1`` ... probabilities) and
    ``named`` (synfer's names ``AU1`` ... ``R14``, intensities). Unknown slots hold 0.
    """
    names = table.column_names
    for layout in layouts:
        if layout not in AU_COLUMN_LAYOUTS:
            raise ConfigError(f"unknown AU column layout {layout!r} (accepted: {', '.join(AU_COLUMN_LAYOUTS)})")
        if layout == "aus" and "aus" in names:
            values, known = _from_aus_column(table, path)
        elif layout == "openface" and any(_OPENFACE.match(c) for c in names):
            values, known = _from_openface(table, path)
        elif layout == "pyfeat" and any(_PYFEAT.match(c) for c in names):
            values, known = _from_probability_columns(table, path, _pyfeat_slots(names))
        elif layout == "opengraphau" and any(_OPENGRAPHAU.match(c) for c in names):
            values, known = _from_probability_columns(table, path, _opengraphau_slots(names))
        elif layout == "named" and any(c in AU_INDEX for c in names):
            values, known = _from_named_columns(table, path, [c for c in names if c in AU_INDEX])
        else:
            continue
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > MAX_INTENSITY:
            raise AUError(f"AU table {path}: AU intensities must lie in 0-{MAX_INTENSITY:g}")
        return AUColumns(np.where(known, values, 0.0).astype(np.float32), known, layout, AU_COLUMN_LAYOUTS[layout])
    return None


def _from_named_columns(table, path: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    values = np.zeros((table.num_rows, NUM_AUS), np.float32)
    known = np.zeros((table.num_rows, NUM_AUS), bool)
    for name in names:
        try:
            column = table.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
        except (TypeError, ValueError):
            raise AUError(f"AU table {path}: column {name!r} must hold numbers (intensities 0-5)") from None
        present = ~np.isnan(column)
        bad = present & ((column < 0) | (column > MAX_INTENSITY))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise AUError(f"AU table {path}, row {row}: {name} = {column[row]:g} is outside 0-{MAX_INTENSITY:g}")
        slot = AU_INDEX[name]
        values[:, slot] = np.where(present, column, 0.0)
        known[:, slot] = present
    return values, known


def load_au_table(path: str | Path) -> AUTable:
    """Read an AU table (parquet or CSV) into memory, checking every row."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"AU table {str(path)!r} does not exist")
    sha256 = file_sha256(path)
    table = read_table_file(path)
    if "label" not in table.column_names:
        raise ConfigError(f"AU table {path} has no 'label' column; {_ACCEPTED_COLUMNS}")
    if table.num_rows == 0:
        raise ConfigError(f"AU table {path} has no rows")
    labels = _labels(table.column("label"), path)
    columns = au_columns(table, path)
    if columns is None:
        raise ConfigError(f"AU table {path} has no AU columns; {_ACCEPTED_COLUMNS}")
    return AUTable(path, sha256, labels, columns.values, columns.known)


def _prototype(config: PlanConfig) -> AUSource:
    return PrototypeAUs(config.base_seed)


def _fixed(config: PlanConfig) -> AUSource:
    return FixedAUs(AUVector.parse(config.aus))


def _empirical(config: PlanConfig) -> AUSource:
    table = load_au_table(config.au_table)
    if table.sha256 != config.au_table_sha256:
        raise ConfigError(
            f"AU table {config.au_table} has changed since this plan was made (sha256 {table.sha256[:12]}..., "
            f"expected {str(config.au_table_sha256)[:12]}...)"
        )
    return EmpiricalAUs(table, config.base_seed)


# --au-source NAME -> a factory from the plan config.
AU_SOURCES: Registry[Callable[[PlanConfig], AUSource]] = Registry("AU source")
AU_SOURCES.register("prototype", _prototype)
AU_SOURCES.register("empirical", _empirical)
AU_SOURCES.register("fixed", _fixed)
