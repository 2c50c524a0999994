"""Webdataset shards: ``*.tar`` files holding ``<key>.<jpg|png|webp>`` and ``<key>.txt`` (or ``<key>.json``).

The caption is the ``.txt`` member, else the ``.json`` member's caption field (the given caption
column, else ``caption``, ``text`` or ``prompt``). Ids are ``<tar>/<key>``, ``<tar>`` being the
tar's path inside the folder without ``.tar`` (its stem for a tar at the top). Opening reads every
tar's member headers (and the small caption members) once; an image is then one seek and read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import DatasetError
from ..readers.base import ReadStats
from .base import CaptionedDataset, check_relative_id, check_unique
from .layouts import CaptionLayout, CaptionOptions, register_caption_layout
from .tars import index_tar, read_member, split_member_name

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
JSON_CAPTION_FIELDS = ("caption", "text", "prompt")


def _tars(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = [p for p in root.rglob("*.tar") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _json_caption(data: bytes, fields: tuple[str, ...], where: str) -> str | None:
    try:
        record = json.loads(data)
    except ValueError as error:
        raise DatasetError(f"{where} is not JSON: {error}") from None
    if isinstance(record, dict):
        for field in fields:
            if isinstance(record.get(field), str):
                return record[field]
    return None


class WebdatasetCaptions(CaptionedDataset):
    """Samples of webdataset tar shards, read by member offset."""

    layout = "webdataset"

    def __init__(self, root: Path, options: CaptionOptions):
        folder = root.parent if root.is_file() else root
        tars = _tars(root)
        if not tars:
            raise DatasetError(f"{root} holds no .tar shards")
        fields = tuple(dict.fromkeys((options.caption_column, *JSON_CAPTION_FIELDS)))
        stats = ReadStats()
        ids, captions, sources, locations = [], [], [], []
        self._tars = [str(t) for t in tars]
        for number, tar in enumerate(tars):
            stem = tar.relative_to(folder).as_posix().removesuffix(".tar")
            members = index_tar(tar)
            samples: dict[str, dict[str, str]] = {}
            for name in members:
                key, extension = split_member_name(name)
                samples.setdefault(key, {})[extension] = name
            for key in sorted(samples):
                parts = samples[key]
                image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
                where = f"{tar.name}:{key}"
                if image is None:
                    continue  # a key without an image (metadata only) is no sample
                if "txt" in parts:
                    caption = read_member(tar, *members[parts["txt"]], f"{tar}:{parts['txt']}").decode("utf-8", "replace").strip()
                elif "json" in parts:
                    caption = _json_caption(read_member(tar, *members[parts["json"]], f"{tar}:{parts['json']}"), fields, where)
                else:
                    caption = None
                if caption is None:
                    if options.strict:
                        raise DatasetError(f"{where} has no caption (no .txt member and no {'/'.join(fields)} field in a .json)")
                    stats.excluded["no caption"] += 1
                    continue
                ids.append(check_relative_id(f"{stem}/{key}", where))
                captions.append(caption)
                sources.append(f"{tar}:{image}")
                locations.append((number, *members[image]))
        if not ids:
            raise DatasetError(f"{root} has no captioned images in its tars ({stats.summary() or 'no image members'})")
        check_unique(ids, sources)
        super().__init__(root.name, root, ids, captions, stats)
        self._sources = sources
        self._locations = np.asarray(locations, dtype=np.int64)

    def image_source(self, i: int) -> str:
        return self._sources[i]

    def image_bytes(self, i: int) -> bytes:
        number, offset, size = (int(v) for v in self._locations[i])
        return read_member(Path(self._tars[number]), offset, size, self._sources[i])


def detect_webdataset(root: Path) -> bool:
    if root.is_file():
        return root.suffix.lower() == ".tar"
    return root.is_dir() and (any(root.glob("*.tar")) or any(root.glob("*/*.tar")))


register_caption_layout(
    CaptionLayout(
        "webdataset",
        "*.tar shards with <key>.jpg/.png/.webp and <key>.txt (or <key>.json with a caption field)",
        detect_webdataset,
        lambda root, options: WebdatasetCaptions(root, options),
    )
)
