"""``relabel()``: re-check every label of a synfer dataset with an ensemble, into ``labels/<name>.parquet``.

```python
from synfer import RelabelConfig, relabel

result = relabel(RelabelConfig("runs/balanced", labelers=("feranno:runs/anno", "classifier:runs/resnet")))
```

The label-file schema is in ``docs/formats.md``:

```
DATASET/labels/
  <name>.parquet       one row per sample; renamed into place last, so it exists only when complete
  <name>.report.json   agreement per class, the target-to-final relabel matrix, the kept fraction
  <name>.relabel.png   the relabel matrix as a figure
  .<name>.work/        while a run is under way: its settings and one finished part per shard
```
A run that stops (a crash, Ctrl-C) resumes at the first shard without a part, so no sample is
labelled twice or skipped. The shards and their indexes are only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..data.dataset import Sample, SynferDataset
from ..data.format import LABELS_DIR, MANIFEST, atomic_path, commit_file, shard_stem, write_json
from ..data.run_folder import ResumeRules, RunFolder
from ..errors import ConfigError, DatasetError
from ..expressions import LabelSet
from ..models.fingerprint import json_sha256
from ..progress import Reporter, SilentReporter
from .base import LABELERS, LabelBatch
from .rectifier import DEFAULT_POLICY, RectifiedBatch, Rectifier, check_settings

logger = logging.getLogger(__name__)

LABELS_FORMAT = "synfer-labels"
LABELS_VERSION = 1
DEFAULT_NAME = "rectified"
RUN_RECORD = "run.json"
METADATA_KEY = b"synfer"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


# -- names -------------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ConfigError(f"label set name {name!r} must be letters, digits, '-' or '_' (it names files under labels/)")
    return name


def labels_file(root: Path, name: str) -> Path:
    return Path(root) / LABELS_DIR / f"{check_name(name)}.parquet"


def report_file(root: Path, name: str) -> Path:
    return Path(root) / LABELS_DIR / f"{check_name(name)}.report.json"


def matrix_figure(root: Path, name: str) -> Path:
    return Path(root) / LABELS_DIR / f"{check_name(name)}.relabel.png"


def work_dir(root: Path, name: str) -> Path:
    return Path(root) / LABELS_DIR / f".{check_name(name)}.work"


def member_columns(rectifier: Rectifier) -> list[str]:
    """One probabilities column per ensemble member, by position and kind: ``probs_classifier_1``."""
    return [f"probs_{labeler.kind}_{i}" for i, labeler in enumerate(rectifier.labelers)]


def labels_schema(columns: list[str]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("target_label", pa.int8(), nullable=False),
            pa.field("label", pa.int8(), nullable=False),
            pa.field("keep", pa.bool_(), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),
            pa.field("agreement", pa.float32(), nullable=False),
            pa.field("changed", pa.bool_(), nullable=False),
            pa.field("probs", pa.list_(pa.float32()), nullable=False),
            *(pa.field(column, pa.list_(pa.float32()), nullable=False) for column in columns),
        ]
    )


def read_labels_metadata(path: Path) -> dict:
    """The settings a labels file was made with (empty for a file synfer did not write)."""
    metadata = pq.read_schema(path).metadata or {}
    try:
        return json.loads(metadata.get(METADATA_KEY, b"{}"))
    except ValueError:
        return {}


# -- the stage ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelabelConfig:
    """Everything ``synfer relabel`` takes: the dataset, the ensemble (``KIND:PATH`` specs) and its rule.

    Args:
        dataset: a dataset folder written by ``synfer generate``.
        labelers: ensemble members, ``feranno:HEAD_DIR`` or ``classifier:DIR``.
        policy: ``mean`` (SynFER's), ``vote`` or ``weighted`` (with one weight per labeler).
        name: the labels file is ``labels/<name>.parquet``.
        min_confidence: samples whose ensemble confidence is below it get ``keep=false``; None keeps all.
    """

    dataset: str
    labelers: tuple[str, ...] = ()
    policy: str = DEFAULT_POLICY
    weights: tuple[float, ...] | None = None
    name: str = DEFAULT_NAME
    min_confidence: float | None = None
    batch_size: int = 32
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self):
        object.__setattr__(self, "labelers", tuple(self.labelers))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        check_name(self.name)
        if not self.labelers:
            raise ConfigError("the ensemble needs at least one labeler (--labeler KIND:PATH)")
        for spec in self.labelers:
            LABELERS.parse(spec)
        check_settings(self.policy, self.weights, len(self.labelers), self.min_confidence)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")


def relabel(config: RelabelConfig, reporter: Reporter | None = None) -> RelabelOutput:
    """Load the ensemble and label every sample of the dataset (resumable; see the module docstring)."""
    from ..devices import resolve_device
    from .base import load_labeler

    reporter = reporter or SilentReporter()
    dataset = SynferDataset(config.dataset)
    device = resolve_device(config.device)
    members = [load_labeler(spec, device) for spec in config.labelers]
    rectifier = Rectifier(members, dataset.label_set, config.policy, config.weights, config.min_confidence)
    metadata = run_metadata(dataset, rectifier, config.name)
    final = labels_file(dataset.root, config.name)
    if final.exists() and not config.overwrite:
        check_existing(final, metadata)  # before the progress bar: a refusal costs no display
    already = finished_samples(dataset, config.name, metadata)
    start = time.perf_counter()
    with reporter.progress("relabelling", total=dataset.n, completed=already) as advance:
        output = relabel_dataset(
            dataset, rectifier, config.name, batch_size=config.batch_size, overwrite=config.overwrite, on_progress=advance
        )
    output.seconds = time.perf_counter() - start
    return output


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class RelabelOutput:
    """What :func:`relabel_dataset` did.

    Args:
        path: the labels file.
        report: the report (also saved as JSON next to it).
        labelled: samples labelled by this call (0 when the labels were already complete).
        reused_shards: shards whose part a previous, interrupted run had finished.
        seconds: the time :func:`relabel` spent labelling (models loading excluded).
    """

    path: Path
    report: dict
    labelled: int = 0
    reused_shards: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def already_complete(self) -> bool:
        return self.labelled == 0 and not self.reused_shards


# What decides a labels file: every setting, member by member. Where a member was loaded from is
# recorded but not compared (the same weights under another path make the same labels); the
# fingerprint is derived from the rest.
LABEL_RULES = ResumeRules(ignore=frozenset({"members.*.source", "fingerprint"}))


def run_metadata(dataset: SynferDataset, rectifier: Rectifier, name: str) -> dict:
    """Everything that decides the labels file's content, plus its fingerprint."""
    manifest_bytes = (dataset.root / MANIFEST).read_bytes()
    metadata = {
        "format": LABELS_FORMAT,
        "version": LABELS_VERSION,
        "dataset": {"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "n": dataset.n},
        **rectifier.settings(),
        "members": [
            {"column": column, "kind": labeler.kind, "source": labeler.source, "fingerprint": labeler.fingerprint}
            for column, labeler in zip(member_columns(rectifier), rectifier.labelers)
        ],
    }
    content = {**metadata, "members": [{k: v for k, v in m.items() if k != "source"} for m in metadata["members"]]}
    return {**metadata, "fingerprint": json_sha256(content)}


def check_existing(final: Path, metadata: dict) -> None:
    """Refuse a labels file made with other labelers, settings or data, naming what differs."""
    changes = LABEL_RULES.changes(read_labels_metadata(final), metadata)
    if changes:
        raise DatasetError(
            f"{final} exists and was made with other labelers, settings or data (differs in: "
            f"{', '.join(c.path for c in changes)}); choose another --name or pass --overwrite to replace it"
        )


def work_folder(root: Path, name: str) -> RunFolder:
    return RunFolder(work_dir(root, name), RUN_RECORD, "relabel run")


def finished_samples(dataset: SynferDataset, name: str, metadata: dict) -> int:
    """Samples an earlier run with the same settings has already labelled (for progress bars)."""
    final = labels_file(dataset.root, name)
    if final.exists() and not LABEL_RULES.changes(read_labels_metadata(final), metadata):
        return dataset.n
    folder = work_folder(dataset.root, name)
    try:
        if folder.compare(metadata, LABEL_RULES).state != "same":
            return 0
    except DatasetError:  # an unreadable record: the run starts over
        return 0
    return sum(pq.read_metadata(part).num_rows for part in folder.path.glob("[0-9]*.parquet"))


def relabel_dataset(
    dataset: SynferDataset,
    rectifier: Rectifier,
    name: str = DEFAULT_NAME,
    *,
    batch_size: int = 32,
    overwrite: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> RelabelOutput:
    """Label every sample of ``dataset`` with ``rectifier`` into ``labels/<name>.parquet``; resumable.

    An existing labels file made with the same settings is kept as it is; one made with other settings
    is an error unless ``overwrite`` (it is replaced only once the new one is complete).
    """
    check_name(name)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if rectifier.label_set != dataset.label_set:
        raise DatasetError(
            f"the ensemble speaks {rectifier.label_set.name} but {dataset.root} uses {dataset.label_set.name}"
        )
    if not dataset.complete:
        raise DatasetError(
            f"{dataset.root} has {len(dataset.shards)} of {dataset.num_shards} shards finished; "
            "finish it first (rerun the same synfer generate command to resume)"
        )
    metadata = run_metadata(dataset, rectifier, name)
    final = labels_file(dataset.root, name)
    if final.exists() and not overwrite:
        check_existing(final, metadata)
        report = build_report(pq.read_table(final), dataset.label_set, name, metadata)
        work = work_dir(dataset.root, name)
        if not (report_file(dataset.root, name).exists() and matrix_figure(dataset.root, name).exists()):
            _write_report(dataset.root, name, report, work)  # removed by hand since: written again
        shutil.rmtree(work, ignore_errors=True)
        return RelabelOutput(final, report)

    work = _prepare_work(dataset.root, name, metadata)
    columns = member_columns(rectifier)
    schema = labels_schema(columns)
    output = RelabelOutput(final, {})
    for shard in dataset.shards:
        part = work / f"{shard_stem(shard)}.parquet"
        if part.exists():
            output.reused_shards.append(shard)
            continue
        table = _label_shard(dataset, shard, rectifier, schema, columns, batch_size, on_progress)
        with atomic_path(part) as tmp:
            pq.write_table(table, tmp)
        output.labelled += table.num_rows

    table = pa.concat_tables([pq.read_table(work / f"{shard_stem(s)}.parquet", schema=schema) for s in dataset.shards])
    table = table.replace_schema_metadata({METADATA_KEY: _dumps(metadata)})
    output.report = build_report(table, dataset.label_set, name, metadata)
    _write_report(dataset.root, name, output.report, work)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp)
    shutil.rmtree(work, ignore_errors=True)
    return output


def _dumps(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def _prepare_work(root: Path, name: str, metadata: dict) -> Path:
    """The work folder for this run; parts of a run with other settings are discarded, never mixed in."""
    folder = work_folder(root, name)
    try:
        status = folder.open(metadata, LABEL_RULES, overwrite=True)
    except DatasetError:  # an unreadable record: nothing in the folder can be trusted
        shutil.rmtree(folder.path)
        status = folder.open(metadata, LABEL_RULES)
    if status.state == "replaced":
        changed = ", ".join(c.path for c in status.changes)
        logger.warning("discarding the unfinished relabel run in %s: it used other settings (%s)", folder.path, changed)
    return folder.path


def _batches(samples: Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _label_shard(
    dataset: SynferDataset,
    shard: int,
    rectifier: Rectifier,
    schema: pa.Schema,
    columns: list[str],
    batch_size: int,
    on_progress: Callable[[int], None] | None,
) -> pa.Table:
    """One shard's rows: targets and AUs from its index, images from its tar, in key order."""
    index = dataset.shard_index(shard).select(["key", "label", "aus", "au_known"]).to_pydict()
    rows = {key: i for i, key in enumerate(index["key"])}
    results: list[tuple[list[str], RectifiedBatch]] = []
    for samples in _batches(dataset.iter_shard(shard), batch_size):
        missing = [s.key for s in samples if s.key not in rows]
        if missing:
            raise DatasetError(f"shard {shard} of {dataset.root} has samples missing from its index: {missing[:3]}")
        positions = [rows[s.key] for s in samples]
        import torch

        batch = LabelBatch(
            images=_to_tensor([s.image for s in samples], shard),
            aus=torch.tensor([index["aus"][p] for p in positions], dtype=torch.float32),
            au_known=torch.tensor([index["au_known"][p] for p in positions], dtype=torch.bool),
        )
        results.append(([s.key for s in samples], rectifier.rectify(batch, [index["label"][p] for p in positions])))
        if on_progress is not None:
            on_progress(len(samples))
    labelled = sum(len(keys) for keys, _ in results)
    if labelled != len(rows):
        raise DatasetError(f"shard {shard} of {dataset.root} has {labelled} samples but its index lists {len(rows)}")
    keys = [key for batch_keys, _ in results for key in batch_keys]

    def joined(attribute: str) -> np.ndarray:
        return np.concatenate([getattr(out, attribute) for _, out in results])

    data = {
        "key": keys,
        "target_label": joined("target").astype(np.int8),
        "label": joined("label").astype(np.int8),
        "keep": joined("keep"),
        "confidence": joined("confidence"),
        "agreement": joined("agreement"),
        "changed": joined("changed"),
        "probs": list(joined("probs")),
    }
    members = np.concatenate([out.member_probs for _, out in results], axis=1)
    for column, probs in zip(columns, members):
        data[column] = list(probs)
    table = pa.Table.from_pydict(data, schema=schema)
    return table.sort_by("key")


def _to_tensor(images, shard: int):
    import torch

    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise DatasetError(f"shard {shard} mixes image sizes {sorted(sizes)}; relabel needs one size per batch")
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)


# -- the report --------------------------------------------------------------------------------------


def relabel_matrix(table: pa.Table, label_set: LabelSet) -> np.ndarray:
    """Counts [target class, final class] over the label set's class order."""
    target = np.asarray([label_set.index(t) for t in table.column("target_label").to_pylist()], dtype=np.int64)
    final = np.asarray([label_set.index(t) for t in table.column("label").to_pylist()], dtype=np.int64)
    matrix = np.zeros((label_set.num_classes, label_set.num_classes), dtype=np.int64)
    np.add.at(matrix, (target, final), 1)
    return matrix


def build_report(table: pa.Table, label_set: LabelSet, name: str, metadata: dict) -> dict:
    """Per target class: how often the ensemble agreed, how often it was relabelled and kept; the matrix."""
    n = table.num_rows
    matrix = relabel_matrix(table, label_set)
    target = np.asarray(table.column("target_label").to_pylist())
    keep = np.asarray(table.column("keep").to_pylist(), dtype=bool)
    member_agreement = np.asarray(table.column("agreement").to_pylist(), dtype=np.float64)
    per_class = []
    for i, expression in enumerate(label_set.expressions):
        mask = target == int(expression)
        count = int(mask.sum())
        per_class.append(
            {
                "label": expression.label,
                "id": int(expression),
                "count": count,
                # The share of this class's samples whose ensemble label is the target.
                "agreement": round(float(matrix[i, i] / count), 6) if count else None,
                "member_agreement": round(float(member_agreement[mask].mean()), 6) if count else None,
                "kept_fraction": round(float(keep[mask].mean()), 6) if count else None,
            }
        )
    kept = int(keep.sum())
    changed = int(n - np.trace(matrix))
    return {
        "name": name,
        "n": n,
        "kept": kept,
        "kept_fraction": round(kept / n, 6) if n else None,
        "changed": changed,
        "changed_fraction": round(changed / n, 6) if n else None,
        "agreement": round(float(np.trace(matrix) / n), 6) if n else None,
        "per_class": per_class,
        "relabel_matrix": {"rows": "target", "columns": "final", "labels": label_set.names, "counts": matrix.tolist()},
        "settings": {k: v for k, v in metadata.items() if k not in ("format", "version")},
    }


def _write_report(root: Path, name: str, report: dict, scratch: Path) -> None:
    from ..plots import plot_matrix

    write_json(report_file(root, name), report)
    # plot_matrix picks the format from the suffix, so the temporary figure is a .png in the work folder.
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / "relabel.png"
    labels = report["relabel_matrix"]["labels"]
    plot_matrix(
        np.asarray(report["relabel_matrix"]["counts"]),
        labels,
        labels,
        tmp,
        title=f"relabel '{name}': target -> final",
        xlabel="final label",
        ylabel="target label",
    )
    commit_file(tmp, matrix_figure(root, name))
