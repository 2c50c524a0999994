"""``RunFolder``: every output folder synfer can resume, with one set of rules.

Datasets (``manifest.json``), training runs (``config.json``), relabel work folders (``run.json``) and
feature caches each keep a *record* of the settings that made them. Rerunning a command compares the
stored record with the new one **field by field** (nested dicts become dotted paths such as
``render.steps``), under explicit :class:`ResumeRules`:

* ``compare``: the paths that decide the content (glob segments allowed: ``model.components.*.sha256``);
  everything else (timestamps, versions, where a model was loaded from) is recorded, not compared;
* ``ignore``: paths under ``compare`` that still do not count (an AU table's path: its hash counts);
* ``defaults``: the value an older record is taken to have for a path it lacks, so that adding an
  option never breaks resuming what earlier versions wrote;
* ``may_grow``: numbers that may increase on a rerun (a dataset's ``n``: the folder grows in place);
* ``inherit``: paths where a new value of ``None`` ("not given") takes the stored value.

Everything is written aside and renamed into place (:func:`replace_dir`, ``atomic_path``), so no
half-written file or folder ever looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .format import write_json

OLD_SUFFIX = ".old"
TMP_SUFFIX = ".tmp"


def flatten(record: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": leaf}``, lists of dicts by position (``members.0.kind``); other lists
    and values are leaves (JSON-normalised: tuples become lists, as a file reads back)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            flat[f"{path}.length"] = len(value)
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{path}.{i}."))
        else:
            flat[path] = json.loads(json.dumps(value, default=str))
    return flat


def _matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path`` is, or lies under, one of the dotted glob ``patterns``."""
    parts = path.split(".")
    for pattern in patterns:
        segments = pattern.split(".")
        if len(segments) <= len(parts) and all(fnmatchcase(p, s) for p, s in zip(parts, segments)):
            return True
    return False


@dataclass(frozen=True)
class Change:
    """One path whose stored and new values differ; ``grown`` when a ``may_grow`` number increased."""

    path: str
    old: Any
    new: Any
    grown: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.old!r} -> {self.new!r}"


@dataclass(frozen=True)
class ResumeRules:
    """How a stored record is compared with a new one (see the module docstring)."""

    compare: tuple[str, ...] = ("*",)
    ignore: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    may_grow: frozenset[str] = frozenset()
    inherit: frozenset[str] = frozenset()

    def _counts(self, path: str) -> bool:
        return _matches(path, self.compare) and not _matches(path, self.ignore)

    def changes(self, old: Mapping, new: Mapping) -> list[Change]:
        """Every compared path whose value differs, in sorted order; missing paths take ``defaults``."""
        stored, wanted = flatten(old), flatten(new)
        for flat in (stored, wanted):
            for path, value in self.defaults.items():
                # A default fills a path only where neither it nor anything below it is recorded.
                if path not in flat and not any(p.startswith(path + ".") for p in flat):
                    flat[path] = json.loads(json.dumps(value))
        changes = []
        for path in sorted(set(stored) | set(wanted)):
            if not self._counts(path):
                continue
            before, after = stored.get(path), wanted.get(path)
            if before == after:
                continue
            grown = path in self.may_grow and isinstance(before, int) and isinstance(after, int) and after > before
            changes.append(Change(path, before, after, grown))
        return changes

    def inherited(self, old: Mapping, new: dict) -> dict:
        """``new`` with each ``inherit`` path that is None there set to its value in ``old``."""
        merged = json.loads(json.dumps(new, default=str))
        stored = flatten(old)
        for path in self.inherit:
            parts = path.split(".")
            node = merged
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            if node.get(parts[-1]) is None and stored.get(path) is not None:
                node[parts[-1]] = stored[path]
        return merged


@dataclass
class RunStatus:
    """What :meth:`RunFolder.open` found: ``new``, ``same``, ``grown`` (only ``may_grow`` paths increased),
    or ``replaced`` (another run was there and ``overwrite`` cleared it); ``record`` is what now counts."""

    state: str
    record: dict
    stored: dict | None = None
    changes: list[Change] = field(default_factory=list)

    @property
    def resumed(self) -> bool:
        return self.state in ("same", "grown")


class RunFolder:
    """An output folder with a settings record, created or resumed under :class:`ResumeRules`.

    Args:
        path: the folder.
        record: the record's file name inside it (``manifest.json``, ``config.json``, ...).
        what: what the folder holds, in words, for messages ("dataset", "training run").
        read: reads and checks a record (default: JSON); raise a ``SynferError`` for a foreign file.
    """

    def __init__(self, path: str | os.PathLike, record: str, what: str, read=None):
        self.path = Path(path)
        self.record_name = record
        self.what = what
        self._read = read

    @property
    def record_path(self) -> Path:
        return self.path / self.record_name

    def has_record(self) -> bool:
        return self.record_path.is_file()

    def is_empty(self) -> bool:
        """True when the folder does not exist or holds nothing (hidden files count as something)."""
        return not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))

    def read_record(self) -> dict:
        if self._read is not None:
            return self._read(self.path)
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read {self.record_path}: {error}") from None

    def write_record(self, record: Mapping) -> None:
        """Write the record atomically (the folder is created first)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(self.record_path, dict(record))
        except OSError as error:
            raise DatasetError(f"cannot write to {self.path}: {error.strerror or error}") from None

    def check_writable(self, option: str = "--out") -> None:
        """Fail early, in one line naming ``option``, when the folder cannot be created or written."""
        if self.path.exists() and not self.path.is_dir():
            raise DatasetError(f"{option} {self.path} exists and is not a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".probe{TMP_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise DatasetError(f"cannot write to {option} {self.path}: {error.strerror or error}") from None

    def refusal(self, changes: list[Change], hint: str) -> DatasetError:
        names = ", ".join(change.path for change in changes)
        return DatasetError(f"{self.path} holds a {self.what} made with a different config (differs in: {names}); {hint}")

    def compare(self, record: Mapping, rules: ResumeRules) -> RunStatus:
        """Compare ``record`` with the stored one without changing anything."""
        if not self.has_record():
            return RunStatus("new", dict(record))
        stored = self.read_record()
        changes = rules.changes(stored, record)
        if not changes:
            return RunStatus("same", stored, stored)
        if all(change.grown for change in changes):
            return RunStatus("grown", dict(record), stored, changes)
        return RunStatus("changed", dict(record), stored, changes)

    def open(
        self,
        record: Mapping,
        rules: ResumeRules,
        *,
        overwrite: bool = False,
        resume: bool | None = None,
        write: bool = True,
        hint: str = "use the same options to resume, another --out, or --overwrite to replace it",
        clear=None,
    ) -> RunStatus:
        """Create the folder or resume it; the decision is the returned :class:`RunStatus`.

        ``resume=None``: an existing run with the same record resumes by itself (datasets);
        ``resume=False``: an existing run is an error asking for ``--resume`` (training runs);
        ``resume=True``: resume when there is a run, start one when there is none.
        A different record is refused unless ``overwrite``; then ``clear(folder)`` (default: remove
        everything in it) makes room. ``write=False`` checks only (ranks that wait for rank 0).
        A ``grown`` status leaves writing the new record to the caller, which must first bring the
        folder's content in line with it.
        """
        if self.has_record():
            stored = self.read_record()
            if resume is False:
                raise DatasetError(f"{self.path} already holds a {self.what}; pass --resume to continue it, or choose another --out")
            status = self.compare(rules.inherited(stored, dict(record)), rules)
            if status.state in ("same", "grown"):
                return status
            if not overwrite:
                raise self.refusal(status.changes, hint)
            if write:
                (clear or self.clear)(self.path)
                self.write_record(status.record)
            return RunStatus("replaced", status.record, stored, status.changes)
        if not self.is_empty():
            if not self.path.is_dir():
                raise DatasetError(f"{self.path} exists and is not a folder")
            if not overwrite:
                raise DatasetError(f"{self.path} exists, is not empty and is not a synfer {self.what}; choose a new folder")
            if write:
                (clear or self.clear)(self.path)
        if write:
            self.write_record(record)
        return RunStatus("new", dict(record))

    @staticmethod
    def clear(path: Path) -> None:
        """Remove everything inside ``path`` (the folder itself stays)."""
        for child in Path(path).iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    # -- folders written aside and swapped in -----------------------------------------------------
    @staticmethod
    def temporary(final: Path) -> Path:
        """Where a folder is built before :func:`replace_dir` puts it at ``final``."""
        final = Path(final)
        return final.with_name(final.name + TMP_SUFFIX)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` at ``final`` by renames only; the old one goes last.

    A crash between the renames leaves ``final.old`` (and no ``final``): :func:`restore_swapped` puts it back.
    """
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_swapped(*folders: Path) -> None:
    """Finish the swaps a crash interrupted in ``folders``; drop unfinished temporary folders and files."""
    for folder in folders:
        folder = Path(folder)
        for old in folder.glob(f"*{OLD_SUFFIX}"):
            final = old.with_name(old.name[: -len(OLD_SUFFIX)])
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)
        for tmp in folder.glob(f"*{TMP_SUFFIX}"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
