"""Deterministic training epochs over any labelled dataset, decoded in DataLoader worker processes.

An epoch is a pure function of (seed, epoch) and the stream's shape (batch size, processes,
workers, gradient accumulation):

1. every source draws its samples for the epoch: a permutation (repeated when the source must give
   more than it has) or, class-balanced, a weighted draw with replacement;
2. sequential sources (synfer tar shards) put their draws in reading order: shards in a random
   order, each read once from start to end, then a seeded shuffle buffer mixes them;
3. with several sources a seeded sequence says which source fills each slot, so mixing ratios are
   exact;
4. each of the W worker roles owns a contiguous run of slots and yields its batches; the
   DataLoader takes batches from its workers round-robin, so role ``j % W`` makes batch ``j``.

Resuming after ``k`` batches of an epoch therefore means: role ``w`` drops the first
``len(range(w, k, W))`` batches of its run without decoding them, and worker 0 plays role
``k % W``. Data stays on disk: the main process holds labels and positions, workers decode only
what they yield.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..data.readers import LabelledDataset, UnreadableImage
from ..errors import DatasetError
from ..expressions import LabelSet

IGNORE_INDEX = -100  # the target of an unreadable image: counted, never trained on


@dataclass(frozen=True)
class Source:
    """A dataset and how many samples it gives per epoch."""

    dataset: LabelledDataset
    per_epoch: int


@dataclass(frozen=True)
class StreamShape:
    """How an epoch is cut into batches across processes and DataLoader workers."""

    batch_size: int
    num_processes: int = 1
    process_index: int = 0
    workers: int = 0  # DataLoader workers per process; 0 decodes in the main process
    batch_multiple: int = 1  # batches per process are a multiple of this (gradient accumulation)

    @property
    def readers(self) -> int:
        return max(1, self.workers)


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def draw(labels: np.ndarray, n: int, balanced: bool, rng: np.random.Generator) -> np.ndarray:
    """``n`` positions: permutations of all samples, or a class-balanced draw with replacement."""
    size = len(labels)
    if balanced:
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
        return rng.choice(size, size=n, replace=True, p=weights / weights.sum())
    rounds = -(-n // size)
    return np.concatenate([rng.permutation(size) for _ in range(rounds)])[:n]


def reading_order(positions: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``positions`` sorted shard by shard, the shards in a random order."""
    rank = rng.permutation(int(groups.max()) + 1)
    return positions[np.lexsort((positions, rank[groups[positions]]))]


def to_item(dataset: LabelledDataset, raw, label_set: LabelSet, size: int, source: int = 0) -> dict:
    """A decoded, resized sample as the DataLoader collates it; unreadable images become flagged blanks.

    A dataset that carries more targets than a label (AU targets, :mod:`synfer.train.au_targets`)
    adds its fields through ``item_targets(sample)`` (``item_targets(None)`` for an unreadable image).
    """
    extra = getattr(dataset, "item_targets", None)
    try:
        sample = dataset.decode(raw)
    except UnreadableImage as error:
        return {
            "image": torch.zeros(3, size, size, dtype=torch.uint8),
            "target": IGNORE_INDEX,
            "valid": False,
            "error": str(error),
            "source": source,
            **(extra(None) if extra is not None else {}),
        }
    image = sample.image if sample.image.size == (size, size) else sample.image.resize((size, size), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    item = {"image": pixels, "target": label_set.index(sample.label), "valid": True, "error": "", "source": source}
    return {**item, **extra(sample)} if extra is not None else item


class TrainStream(IterableDataset):
    """Training samples from one or more sources, the same for a given (seed, epoch) on any run."""

    def __init__(
        self,
        sources: list[Source],
        label_set: LabelSet,
        image_size: int,
        seed: int,
        shape: StreamShape,
        balanced: bool = False,
        shuffle_buffer: int = 512,
    ):
        self.sources = sources
        self.label_set = label_set
        self.image_size = image_size
        self.seed = seed
        self.shape = shape
        self.balanced = balanced
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0
        self.skip_batches = 0
        self.total = sum(s.per_epoch for s in sources)
        per_process = self.total // shape.batch_size // shape.num_processes
        self.batches_per_process = per_process // shape.batch_multiple * shape.batch_multiple
        if self.batches_per_process == 0:
            raise DatasetError(
                f"{self.total} training samples per epoch are too few for batches of {shape.batch_size}"
                f" x {shape.batch_multiple} accumulation step(s) on {shape.num_processes} process(es); "
                "lower --batch-size or --grad-accum"
            )

    @property
    def images_per_epoch(self) -> int:
        """Images this process trains on per epoch."""
        return self.batches_per_process * self.shape.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Choose the epoch the next iteration yields, leaving out its first ``skip_batches`` batches."""
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def worker_batches(self, worker: int) -> int:
        return len(range(worker, self.batches_per_process, self.shape.readers))

    def _choices(self) -> np.ndarray:
        """Which source fills each slot of the epoch."""
        ids = np.concatenate([np.full(s.per_epoch, i, dtype=np.int8) for i, s in enumerate(self.sources)])
        return ids if len(self.sources) == 1 else _rng(self.seed, self.epoch, 0).permutation(ids)

    def _order(self, index: int) -> np.ndarray:
        source = self.sources[index]
        rng = _rng(self.seed, self.epoch, 1, index)
        positions = draw(source.dataset.labels, source.per_epoch, self.balanced, rng)
        groups = source.dataset.groups()
        return positions if groups is None else reading_order(positions, groups, rng)

    def __iter__(self):
        info = get_worker_info()
        shape = self.shape
        # The DataLoader starts every iterator at worker 0; after skipping k batches the next batch
        # belongs to role k % W, so worker 0 takes that role and the others follow in turn.
        worker = ((info.id if info is not None else 0) + self.skip_batches) % shape.readers
        batch = shape.batch_size
        start = (shape.process_index * self.batches_per_process + sum(self.worker_batches(w) for w in range(worker))) * batch
        stop = start + self.worker_batches(worker) * batch
        choices = self._choices()
        mine = choices[start:stop]
        streams = []
        for index, source in enumerate(self.sources):
            before = int(np.count_nonzero(choices[:start] == index))
            positions = self._order(index)[before : before + int(np.count_nonzero(mine == index))]
            raws = iter(source.dataset.raw(positions))
            if source.dataset.sequential:
                seed = int(_rng(self.seed, self.epoch, 2, index, shape.process_index, worker).integers(2**62))
                raws = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, seed=seed)(raws)
            streams.append(raws)
        skip = len(range(worker, self.skip_batches, shape.readers)) * batch
        for slot, index in enumerate(mine):
            raw = next(streams[index])
            if slot >= skip:  # skipped samples are never decoded
                yield to_item(self.sources[index].dataset, raw, self.label_set, self.image_size, int(index))


class EvalStream(IterableDataset):
    """Every sample of a dataset once, split between processes and workers (order does not matter)."""

    def __init__(self, dataset: LabelledDataset, label_set: LabelSet, image_size: int, num_processes: int = 1, process_index: int = 0):
        self.dataset = dataset
        self.label_set = label_set
        self.image_size = image_size
        self.num_processes = num_processes
        self.process_index = process_index

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        parts, part = self.num_processes * workers, self.process_index * workers + worker
        size = len(self.dataset)
        for raw in self.dataset.raw(range(size * part // parts, size * (part + 1) // parts)):
            yield to_item(self.dataset, raw, self.label_set, self.image_size)


def make_loader(stream: IterableDataset, batch_size: int, workers: int, seed: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        # Its own generator: creating an iterator must not draw from the global RNG, whose state a
        # resumed run restores and an uninterrupted run must consume identically.
        generator=torch.Generator().manual_seed(seed),
    )
