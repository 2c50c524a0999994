"""``annotate_aus()``: an AU table for an image-caption dataset, from a detector or from an existing table.

```python
from synfer.labelers.annotate_aus import AnnotateConfig, annotate_aus

annotate_aus(AnnotateConfig(data="FEText/", detector="opengraphau:/models/OpenGraphAU-r50.pth", out="runs/fetext-aus"))
```

```
OUT/run.json          the record: detector (kind, weights SHA-256, scores, preprocessing), data (layout,
                      fingerprint, images), chunk size; written first
OUT/aus.parquet       the AU table (docs/formats.md, "AU table"); ids = the dataset's ids; written last
OUT/.parts/NNNNN.parquet  while a run is under way: one finished chunk of images each
```

The images are read where they are, never copied. A run that stops resumes at the first chunk
without a part; a rerun with another detector (weights), other preprocessing or other data is
refused unless ``overwrite``. The detector's suggested threshold is recorded in the table, never
applied. ``table:PATH`` instead joins an OpenFace, py-feat or OpenGraphAU output file, or a
CSV/parquet with one column per AU, to the dataset's images by id.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ..aus import NUM_AUS
from ..data.au_table import SCORE_KINDS, AUScores, read_au_table, read_au_table_metadata, write_au_table
from ..data.captions import CAPTION_LAYOUTS, CaptionedDataset, open_captioned
from ..data.readers.base import EXAMPLES
from ..data.run_folder import ResumeRules, RunFolder
from ..errors import ConfigError, DatasetError
from ..progress import Reporter, SilentReporter
from .au_detectors import AU_DETECTORS, AUDetector

ANNOTATE_FORMAT = "synfer-annotate-aus"
ANNOTATE_VERSION = 1
RECORD_NAME = "run.json"
TABLE_NAME = "aus.parquet"
PARTS_DIR = ".parts"
TABLE_KIND = "table"  # --detector table:PATH: scores from a file, not a model
ID_COLUMNS = ("id", "file_name")  # how a table names its images when --id-column is not given
OVERWRITE_HINT = "pass --overwrite to replace it, or choose another --out"

# What decides the table's content. Where the detector or data were loaded from is recorded, not compared.
RULES = ResumeRules(
    compare=("format", "version", "detector", "data", "chunk_size"),
    ignore=frozenset({"detector.source", "data.root"}),
)


def detector_kinds() -> str:
    return ", ".join([*AU_DETECTORS.names(), TABLE_KIND])


def parse_detector(spec: str) -> tuple[str, str]:
    """``KIND:PATH`` -> (kind, path), ``KIND`` a registered AU detector kind or ``table``."""
    kind, sep, path = str(spec).partition(":")
    if kind == TABLE_KIND and sep and path:
        return kind, path
    if not sep or not kind or not path:
        raise ConfigError(f"--detector is given as KIND:PATH, got {spec!r} (kinds: {detector_kinds()})")
    if kind not in AU_DETECTORS:
        raise ConfigError(f"unknown AU detector kind {kind!r} in {spec!r} (accepted: {detector_kinds()})")
    return kind, path


@dataclass(frozen=True)
class AnnotateConfig:
    """Everything ``synfer annotate-aus`` takes.

    Args:
        data: an image-caption dataset (``synfer.data.captions``: synfer, imagefolder, webdataset, parquet).
        detector: ``opengraphau:FILE.pth``, ``detector:DIR`` (one synfer trained) or ``table:FILE``.
        out: the output folder (``aus.parquet`` and the run's record).
        layout, image_column, caption_column, data_id_column: how to read ``data`` (default: detected).
        id_column: ``table:`` only: the table's column naming each row's image (default: ``id`` or ``file_name``).
        table_scores: ``table:`` only: what its numbers are (``intensity`` or ``probability``) where the
            columns do not say (default: from the layout: OpenFace and synfer-named columns are
            intensities, py-feat and OpenGraphAU outputs probabilities).
        chunk_size: images per part file (the unit a crash loses at most).
    """

    data: str
    detector: str
    out: str
    layout: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    data_id_column: str | None = None
    id_column: str | None = None
    table_scores: str | None = None
    batch_size: int = 32
    chunk_size: int = 1024
    workers: int = 0
    device: str = "auto"
    strict: bool = False
    overwrite: bool = False

    def __post_init__(self):
        kind, _ = parse_detector(self.detector)
        if self.layout is not None:
            CAPTION_LAYOUTS.check(self.layout)
        for name in ("batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if kind != TABLE_KIND:
            for name in ("id_column", "table_scores"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name.replace('_', '-')} applies to --detector table:FILE only")
        if self.table_scores is not None and self.table_scores not in SCORE_KINDS:
            raise ConfigError(f"unknown --table-scores {self.table_scores!r} (accepted: {', '.join(SCORE_KINDS)})")

    @property
    def kind(self) -> str:
        return parse_detector(self.detector)[0]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AnnotateResult:
    """What :func:`annotate_aus` did.

    Args:
        table: the AU table written (or found complete).
        images: images in the dataset; rows: rows in the table.
        annotated: images this call ran the detector on (0 when the table was already complete).
        reused_chunks: chunks an earlier, interrupted run had finished.
        unreadable: images left out because they could not be decoded (first few in ``unreadable_examples``).
        table_rows: ``table:`` only: rows in the file joined.
    """

    out: Path
    table: Path
    kind: str
    scores: str
    images: int
    rows: int
    annotated: int = 0
    reused_chunks: int = 0
    unreadable: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    table_rows: int | None = None
    already_complete: bool = False
    seconds: float = 0.0


def _open_data(config: AnnotateConfig) -> CaptionedDataset:
    return open_captioned(
        config.data, layout=config.layout, image_column=config.image_column, caption_column=config.caption_column,
        id_column=config.data_id_column, strict=config.strict,
    )


def annotate_aus(config: AnnotateConfig, reporter: Reporter | None = None) -> AnnotateResult:
    """Write ``OUT/aus.parquet`` for ``config.data`` (resumable; see the module docstring)."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    folder = RunFolder(config.out, RECORD_NAME, "run of annotate-aus")
    if folder.path.exists() and not folder.path.is_dir():
        raise ConfigError(f"--out {folder.path} is a file; give a folder")
    dataset = _open_data(config)
    if config.kind == TABLE_KIND:
        result = _annotate_from_table(config, dataset, folder, reporter)
    else:
        result = _annotate_with_detector(config, dataset, folder, reporter)
    result.seconds = time.perf_counter() - started
    return result


# -- detectors ----------------------------------------------------------------------------------------


def detector_record(detector: AUDetector) -> dict:
    return {
        "kind": detector.kind,
        "source": detector.source,
        "fingerprint": detector.fingerprint,
        "scores": detector.scores,
        "known": [bool(v) for v in detector.known],
        "preprocessing": detector.preprocessing,
        "suggested_threshold": detector.suggested_threshold,
    }


def _open_run(folder: RunFolder, record: dict, config: AnnotateConfig, reporter: Reporter):
    status = folder.open(record, RULES, overwrite=config.overwrite, hint=OVERWRITE_HINT)
    if status.state == "replaced":
        reporter.log(f"replaced the AU annotation in {folder.path} (it differed in {', '.join(c.path for c in status.changes)})")
    return status


def _annotate_with_detector(config: AnnotateConfig, dataset: CaptionedDataset, folder: RunFolder, reporter: Reporter) -> AnnotateResult:
    from .au_detectors import load_au_detector

    detector = load_au_detector(config.detector, config.device)
    if detector.scores not in SCORE_KINDS:
        raise ConfigError(f"AU detector {config.detector!r} gives {detector.scores!r} scores (accepted: {', '.join(SCORE_KINDS)})")
    record = {
        "format": ANNOTATE_FORMAT,
        "version": ANNOTATE_VERSION,
        "detector": detector_record(detector),
        "data": {"layout": dataset.layout, "root": str(dataset.root), "images": len(dataset)},
        "chunk_size": config.chunk_size,
    }
    # Cheap checks first: a run with another detector is refused before the data are read to be hashed.
    early = folder.compare(record, replace(RULES, ignore=RULES.ignore | {"data.fingerprint"}))
    if early.state == "changed" and not config.overwrite:
        raise folder.refusal(early.changes, OVERWRITE_HINT)
    with reporter.progress("hashing the data", total=len(dataset)) as advance:
        record["data"]["fingerprint"] = dataset.fingerprint(advance)
    fingerprint = record["data"]["fingerprint"]
    final = folder.path / TABLE_NAME
    status = _open_run(folder, record, config, reporter)
    reporter.log(dataset.describe())
    result = AnnotateResult(folder.path, final, detector.kind, detector.scores, len(dataset), 0)
    if status.state == "same" and final.is_file():
        result.rows, result.already_complete = len(read_au_table(final)), True
        result.unreadable = int(read_au_table_metadata(final).get("source", {}).get("unreadable", 0))
        return result
    parts = folder.path / PARTS_DIR
    parts.mkdir(exist_ok=True)
    chunks = math.ceil(len(dataset) / config.chunk_size)
    done = {c for c in range(chunks) if _part(parts, c).is_file()}
    result.reused_chunks = len(done)
    completed = sum(len(_chunk(c, config.chunk_size, len(dataset))) for c in done)
    if done:
        reporter.log(f"resuming: {len(done)} of {chunks} chunks were finished before")
    with reporter.progress("annotating AUs", total=len(dataset), completed=completed) as advance:
        for chunk in range(chunks):
            if chunk in done:
                continue
            positions = _chunk(chunk, config.chunk_size, len(dataset))
            table = _annotate_chunk(dataset, positions, detector, config, advance)
            write_au_table(_part(parts, chunk), table)  # atomic: a part exists only when complete
            result.annotated += len(positions)
    tables = [read_au_table(_part(parts, c)) for c in range(chunks)]
    unreadable = [image_id for t in tables for image_id in t.source.get("unreadable_ids", [])]
    source = {
        "detector": detector.kind,
        "path": detector.source,
        "weights_sha256": detector.fingerprint,
        "preprocessing": detector.preprocessing,
        "data": {"layout": dataset.layout, "fingerprint": fingerprint, "images": len(dataset)},
        "unreadable": len(unreadable),
        "unreadable_examples": unreadable[:EXAMPLES],
    }
    merged = AUScores(
        ids=[i for t in tables for i in t.ids],
        scores=np.concatenate([t.scores for t in tables]),
        known=np.concatenate([t.known for t in tables]),
        kind=detector.scores,
        source=source,
        suggested_threshold=detector.suggested_threshold,
    )
    write_au_table(final, merged)
    shutil.rmtree(parts, ignore_errors=True)
    result.rows, result.unreadable, result.unreadable_examples = len(merged), len(unreadable), unreadable[:EXAMPLES]
    return result


def _part(parts: Path, chunk: int) -> Path:
    return parts / f"{chunk:05d}.parquet"


def _chunk(chunk: int, size: int, n: int) -> range:
    return range(chunk * size, min((chunk + 1) * size, n))


class _Images:
    """Decoded images of some positions, as uint8 tensors, for a DataLoader; unreadable ones as messages."""

    def __init__(self, dataset: CaptionedDataset, positions: range):
        self.dataset = dataset
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        import torch

        from ..data.readers.base import UnreadableImage

        position = self.positions[i]
        try:
            image = self.dataset[position].image
        except UnreadableImage as error:
            return position, None, str(error)
        return position, torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1), ""


def _annotate_chunk(dataset: CaptionedDataset, positions: range, detector: AUDetector, config: AnnotateConfig, advance) -> AUScores:
    """The detector's scores for one chunk; images of one size go through it together, at their own size."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_Images(dataset, positions), batch_size=config.batch_size, num_workers=config.workers, collate_fn=list)
    rows: dict[int, np.ndarray] = {}
    unreadable: list[str] = []
    for batch in loader:
        by_size: dict[tuple, list] = {}
        for position, pixels, error in batch:
            if pixels is None:
                if config.strict:
                    raise DatasetError(f"unreadable image: {error}")
                unreadable.append(dataset.ids[position])
                continue
            by_size.setdefault(tuple(pixels.shape), []).append((position, pixels))
        for group in by_size.values():
            images = torch.stack([pixels for _, pixels in group]).float().div_(255.0)
            scores = detector.predict(images).float().cpu().numpy()
            if scores.shape != (len(group), NUM_AUS):
                raise DatasetError(f"AU detector {detector.kind} gave scores of shape {scores.shape} for {len(group)} images")
            rows.update({position: score for (position, _), score in zip(group, scores)})
        advance(len(batch))
    kept = [p for p in positions if p in rows]
    known = np.broadcast_to(np.asarray(detector.known, dtype=bool), (len(kept), NUM_AUS))
    scores = np.stack([rows[p] for p in kept]) if kept else np.zeros((0, NUM_AUS), np.float32)
    high = 1.0 if detector.scores == "probability" else 5.0
    # A detector's rounding may overshoot its range by a hair; the table's check is strict.
    scores = np.where(known, np.clip(scores, 0.0, high), 0.0)
    return AUScores([dataset.ids[p] for p in kept], scores, known, kind=detector.scores, source={"unreadable_ids": unreadable})


# -- tables ---------------------------------------------------------------------------------------------


def normalise_id(value, root: Path) -> str | None:
    """A table's image name as a dataset id: POSIX separators, no ``./``; an absolute path inside ``root`` made relative."""
    if value is None:
        return None
    text = str(value).strip().replace("\\", "/")
    if not text:
        return None
    if text.startswith("/"):
        try:
            text = PurePosixPath(text).relative_to(PurePosixPath(Path(root).resolve().as_posix())).as_posix()
        except ValueError:
            return text
    while text.startswith("./"):
        text = text[2:]
    return text


@dataclass
class AUFile:
    """An AU file read for joining: one entry per row that names an image (``rows``: id -> row)."""

    path: Path
    ids: list[str | None]  # per row, normalised (None where the row names no image)
    values: np.ndarray  # [rows, 41]
    known: np.ndarray  # [rows, 41]
    kind: str  # "intensity" or "probability"
    layout: str  # "synfer" (an AU table) or one of synfer.synth.au_sources.AU_COLUMN_LAYOUTS
    extra: dict = field(default_factory=dict)  # what the record keeps about how it was read (id column, source)
    threshold: float | None = None  # a synfer AU table's own suggested threshold

    @property
    def rows(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row, image_id in enumerate(self.ids):
            if image_id is None:
                continue
            if image_id in found:
                raise DatasetError(f"AU table {self.path} names image {image_id!r} twice (rows {found[image_id]} and {row})")
            found[image_id] = row
        return found

    @property
    def suggested_threshold(self) -> float | None:
        if self.layout == "synfer":
            return self.threshold
        return 0.5 if self.kind == "probability" else None  # py-feat's and OpenGraphAU's own


def read_au_file(path: str | Path, root: Path, id_column: str | None = None, scores: str | None = None) -> AUFile:
    """An AU file whose rows name images of the dataset at ``root``: a synfer AU table (its kind kept) or any
    file :func:`synfer.synth.au_sources.au_columns` reads, its ids from ``id_column`` (default ``id`` or
    ``file_name``), normalised by :func:`normalise_id`. ``scores`` says what plain columns hold."""
    from ..synth.au_sources import AU_COLUMN_LAYOUTS, au_columns, read_table_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"AU table {str(path)!r} does not exist")
    if path.suffix.lower() == ".parquet":
        try:
            metadata = read_au_table_metadata(path)
        except DatasetError:
            metadata = None
        if metadata is not None:  # a synfer AU table says itself what its scores are
            table = read_au_table(path)
            return AUFile(path, [normalise_id(i, root) for i in table.ids], table.scores, table.known, table.kind, "synfer",
                          {"from": table.source}, table.suggested_threshold)
    table = read_table_file(path)
    columns = au_columns(table, path, tuple(AU_COLUMN_LAYOUTS))
    if columns is None:
        raise ConfigError(
            f"AU table {path} has no AU columns (accepted: OpenFace AU06_r/AU06_c, py-feat AU06, OpenGraphAU AU1 ... AUR14, "
            "one column per AU named AU1 ... R14, or an 'aus' column of 41 values)"
        )
    id_column = id_column or next((c for c in ID_COLUMNS if c in table.column_names), None)
    if id_column is None or id_column not in table.column_names:
        wanted = f"column {id_column!r}" if id_column else f"an {' or '.join(repr(c) for c in ID_COLUMNS)} column"
        raise ConfigError(
            f"AU table {path} has no {wanted} naming each row's image (columns: {', '.join(table.column_names)}); "
            "name it with --id-column"
        )
    kind = scores or columns.scores
    if kind not in SCORE_KINDS:
        raise ConfigError(f"unknown AU score kind {kind!r} (accepted: {', '.join(SCORE_KINDS)})")
    if kind == "probability" and columns.values.max(initial=0.0) > 1.0:
        row = int(np.argwhere(columns.values > 1.0)[0][0])
        raise ConfigError(f"AU table {path}, row {row}: a score above 1 is no probability; pass --table-scores intensity")
    ids = [normalise_id(v, root) for v in table.column(id_column).to_pylist()]
    return AUFile(path, ids, columns.values, columns.known, kind, columns.layout, {"id_column": id_column})


def match_ids(image_ids: list[str], au_file: AUFile, where: str) -> tuple[list[int], np.ndarray]:
    """(positions of ``image_ids`` that have a row, those rows); no match at all is an error showing one id of each."""
    rows = au_file.rows
    matched = [i for i, image_id in enumerate(image_ids) if image_id in rows]
    if not matched:
        table_example = next((i for i in au_file.ids if i is not None), None)
        raise DatasetError(
            f"no image of {where} matches a row of AU table {au_file.path}: the table has {len(au_file.ids)} rows "
            f"(e.g. id {table_example!r}) and the dataset {len(image_ids)} images (e.g. id {image_ids[0] if image_ids else None!r}); "
            "ids are paths relative to the dataset folder (see --id-column)"
        )
    return matched, np.asarray([rows[image_ids[i]] for i in matched], dtype=np.int64)


def _annotate_from_table(config: AnnotateConfig, dataset: CaptionedDataset, folder: RunFolder, reporter: Reporter) -> AnnotateResult:
    from ..models.fingerprint import json_sha256
    from ..synth.au_sources import file_sha256

    au_file = read_au_file(config.detector.partition(":")[2], dataset.root, config.id_column, config.table_scores)
    path, kind, layout, extra = au_file.path, au_file.kind, au_file.layout, au_file.extra
    matched, picked = match_ids(dataset.ids, au_file, str(dataset.root))
    sha256 = file_sha256(path)
    record = {
        "format": ANNOTATE_FORMAT,
        "version": ANNOTATE_VERSION,
        "detector": {"kind": TABLE_KIND, "source": str(path), "fingerprint": sha256, "layout": layout, "scores": kind, **extra},
        # A table is joined by id: the images' bytes play no part, so only the ids count.
        "data": {"layout": dataset.layout, "root": str(dataset.root), "ids_sha256": json_sha256(dataset.ids), "images": len(dataset)},
        "chunk_size": None,
    }
    final = folder.path / TABLE_NAME
    status = _open_run(folder, json_safe(record), config, reporter)
    result = AnnotateResult(folder.path, final, TABLE_KIND, kind, len(dataset), len(matched), table_rows=len(au_file.ids))
    if status.state == "same" and final.is_file():
        result.already_complete = True
        return result
    table = AUScores(
        ids=[dataset.ids[i] for i in matched],
        scores=au_file.values[picked],
        known=au_file.known[picked],
        kind=kind,
        source={"detector": TABLE_KIND, "path": str(path), "table_sha256": sha256, "layout": layout, **json_safe(extra),
                "data": {"layout": dataset.layout, "images": len(dataset), "matched": len(matched), "table_rows": len(au_file.ids)}},
        suggested_threshold=au_file.suggested_threshold,
    )
    write_au_table(final, table)
    reporter.log(f"{len(matched)} of {len(dataset)} images matched a row of {path} ({len(au_file.ids)} rows)")
    result.annotated = len(matched)
    return result


def json_safe(data):
    """``data`` as plain JSON values (tuples as lists), as a record reads back from its file."""
    import json

    return json.loads(json.dumps(data, default=str))
