"""Three roles, three models: is the judge (or the AU detector) one that already shaped the dataset?

A judge that guided generation scores the images it pushed toward their labels; a judge that relabelled
them agrees with labels it chose. Either inflates expression accuracy (a public reimplementation of
SynFER reported 88.9% this way). ``recorded_models`` collects every model fingerprint a dataset records:

- the guidance classifier, ``render.guidance.classifier.sha256`` in ``manifest.json``;
- every member of every label file, ``members[].fingerprint`` in the ``synfer`` metadata of
  ``labels/*.parquet`` (docs/formats.md, "Label file").

``dependence`` lists the records a judge's fingerprint matches; evaluate refuses such a judge unless
told, and then marks its figures ``dependent``.

For AUs, the detector that annotated the model's training AUs measures ``self-consistency``, not
faithfulness. ``au_detector_status`` reads the model folder's ``training.json`` (written by
``synfer build-model``) and, for datasets whose AUs were drawn from an AU table, that table's source
record; a fingerprint under an AU entry that equals the detector's means self-consistency. When no
record says which detector made the AUs, the status is ``unknown``, never a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..data.format import LABELS_DIR

_HASH = re.compile(r"^[0-9a-f]{64}$")
TRAINING_RECORD = "training.json"
STATUSES = ("independent", "self-consistency", "unknown")


@dataclass(frozen=True)
class RecordedModel:
    role: str  # "guidance classifier", "relabel member"
    where: str  # the file that records it
    fingerprint: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"role": self.role, "where": self.where, "fingerprint": self.fingerprint, "detail": self.detail}

    def __str__(self) -> str:
        return f"the {self.role}{f' {self.detail}' if self.detail else ''} recorded in {self.where}"


def label_file_metadata(path: Path) -> dict:
    """The ``synfer`` schema metadata of a label file (empty for a file synfer did not write)."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"synfer", b"{}")
        data = json.loads(raw)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_models(root: Path, manifest: dict) -> list[RecordedModel]:
    """Every model fingerprint the dataset at ``root`` records (guidance classifier, relabel members)."""
    found = []
    guidance = ((manifest.get("render") or {}).get("guidance") or {}).get("classifier") or {}
    if guidance.get("sha256"):
        found.append(RecordedModel("guidance classifier", str(Path(root) / "manifest.json"), guidance["sha256"],
                                   str((manifest.get("model") or {}).get("guidance_model") or "")))
    labels = Path(root) / LABELS_DIR
    for path in sorted(labels.glob("*.parquet")) if labels.is_dir() else []:
        for member in label_file_metadata(path).get("members") or []:
            if isinstance(member, dict) and member.get("fingerprint"):
                found.append(RecordedModel("relabel member", str(path), str(member["fingerprint"]),
                                           f"{member.get('kind', '?')}:{member.get('source', '?')}"))
    return found


def dependence(fingerprint: str, recorded: list[RecordedModel]) -> list[RecordedModel]:
    return [model for model in recorded if model.fingerprint == fingerprint]


def _leaves(data, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, str(key)))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, (*path, str(i)))
    else:
        yield path, data


def _about_aus(path: tuple[str, ...]) -> bool:
    """Whether a dotted path lies under an AU entry (``aus``, ``au_table``, ``au_source``, ``au_detector``...)."""
    return any(part.lower() in ("au", "aus") or part.lower().startswith("au_") for part in path)


def _names_a_detector(path: tuple[str, ...]) -> bool:
    """Whether a hash's path says it identifies a detector (not, say, the AU table file's own hash)."""
    words = ("source", "detector", "annotator", "weights", "fingerprint")
    return any(word in part.lower() for part in path for word in words)


@dataclass(frozen=True)
class AUDetectorStatus:
    status: str  # one of STATUSES
    reason: str
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "evidence": list(self.evidence)}


def _training_records(manifest: dict) -> list[Path]:
    """The ``training.json`` files of the model a dataset was made with: the model folder's (build-model) and
    its adapter's (train-adapter; also a separately given ``--adapter`` folder or run folder)."""
    model = manifest.get("model") or {}
    found = []
    for name in (model.get("name"), model.get("adapter")):
        if not name or not Path(str(name)).is_dir():
            continue
        for record in (Path(str(name)) / TRAINING_RECORD, Path(str(name)) / "au_adapter" / TRAINING_RECORD):
            if record.is_file() and record not in found:
                found.append(record)
    return found


def au_detector_status(fingerprint: str, manifest: dict) -> AUDetectorStatus:
    """Whether the detector with ``fingerprint`` annotated the AUs the dataset's model learnt (or its plan drew)."""
    evidence, checked, seen_au_hashes = [], [], False
    for record in _training_records(manifest):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        checked.append(str(record))
        for path, value in _leaves(data):
            if not (isinstance(value, str) and _HASH.match(value)):
                continue
            if _about_aus(path) and _names_a_detector(path):
                seen_au_hashes = True
            if value == fingerprint:
                evidence.append(f"{record}: {'.'.join(path)}")
    plan = manifest.get("plan") or {}
    table = plan.get("au_table")
    if table and Path(str(table)).is_file():
        from ..data.au_table import read_au_table_metadata

        try:
            source = read_au_table_metadata(table).get("source") or {}
        except Exception:  # a table that moved or changed: it tells us nothing
            source = {}
        checked.append(str(table))
        for path, value in _leaves(source):
            if isinstance(value, str) and _HASH.match(value):
                seen_au_hashes = True
                if value == fingerprint:
                    evidence.append(f"{table}: source.{'.'.join(path)}")
    if evidence:
        return AUDetectorStatus("self-consistency", "this detector annotated the AUs the model was trained on "
                                "or the plan drew from", tuple(evidence))
    if seen_au_hashes:
        return AUDetectorStatus("independent", f"the AU sources recorded in {', '.join(checked)} name other detectors")
    if checked:
        return AUDetectorStatus("unknown", f"{', '.join(checked)} records no AU source fingerprint")
    return AUDetectorStatus("unknown", f"the model folder has no {TRAINING_RECORD} saying which detector annotated its "
                            "training AUs")
