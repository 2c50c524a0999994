"""A synfer dataset as image-caption pairs: each finished shard's samples, their ``prompt`` as the caption.

Ids are the sample keys (docs/formats.md, "Dataset"). The shard indexes give keys, prompts and tar
member names when the dataset is opened; a shard's tar is indexed (member headers) the first time
one of its images is asked for.
"""

from __future__ import annotations

import numpy as np

from ..dataset import SynferDataset
from ..format import MANIFEST
from ..readers.base import UnreadableImage
from .base import CaptionedDataset, check_unique
from .layouts import CaptionLayout, CaptionOptions, register_caption_layout
from .tars import index_tar, read_member


class SynferCaptions(CaptionedDataset):
    """The finished shards of a synfer dataset; images read by tar member offset."""

    layout = "synfer"

    def __init__(self, root, options: CaptionOptions):
        dataset = SynferDataset(root)
        index = dataset.index(["key", "shard", "prompt", "image"])
        ids = index.column("key").to_pylist()
        check_unique(ids, (f"shard {s}" for s in index.column("shard").to_pylist()))
        super().__init__(dataset.root.name, dataset.root, ids, index.column("prompt").to_pylist())
        self._shards = np.asarray(index.column("shard").to_pylist(), dtype=np.int32)
        self._members = index.column("image").to_pylist()
        self._tars = {shard: str(dataset.tar_path(shard)) for shard in dataset.shards}
        self._offsets: dict[int, dict[str, tuple[int, int]]] = {}

    def image_source(self, i: int) -> str:
        return f"{self._tars[int(self._shards[i])]}:{self._members[i]}"

    def image_bytes(self, i: int) -> bytes:
        shard = int(self._shards[i])
        if shard not in self._offsets:
            self._offsets[shard] = index_tar(self._tars[shard])
        location = self._offsets[shard].get(self._members[i])
        if location is None:
            raise UnreadableImage(f"{self.image_source(i)}: listed in the shard's index, absent from its tar")
        return read_member(self._tars[shard], *location, self.image_source(i))


register_caption_layout(
    CaptionLayout(
        "synfer",
        f"{MANIFEST} and shards/ (a dataset written by synfer generate; the prompt is the caption)",
        lambda root: root.is_dir() and (root / MANIFEST).is_file(),
        lambda root, options: SynferCaptions(root, options),
    )
)
