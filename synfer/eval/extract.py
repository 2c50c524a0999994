"""One pass over an image set for every model that needs it, through the feature cache.

Each chunk of the set (``synfer.eval.sources``) is looked up in the cache for each model; only when some
model lacks it are the chunk's images decoded, once, and each decoded image is preprocessed once per
distinct ``Preprocess`` (a backbone at 224 px and a judge at 224 px share one resize) by a pool of
threads (PIL's decoders and resizers release the GIL), then fed to the models that lack the chunk in
batches; the threads decode the next batch while the models run on this one. A second evaluation
against the same real set therefore reads the real features from the cache and decodes only the
generated images.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import DatasetError
from ..progress import Reporter, SilentReporter
from .feature_cache import Chunk, FeatureCache
from .preprocess import Preprocess

EXAMPLES = 3


class Extractor(Protocol):
    """A model evaluate runs on images: a name, a record for the cache, its preprocessing, pixels -> [B, D]."""

    name: str
    preprocess: Preprocess
    dim: int

    def record(self) -> dict: ...

    def __call__(self, pixels): ...


@dataclass
class Extracted:
    """Outputs [N, D] per model for every row of a source; ``valid`` is false where an image could not be decoded."""

    values: dict[str, np.ndarray]
    valid: np.ndarray
    computed: dict[str, int] = field(default_factory=dict)  # rows computed now, per model (the rest came from the cache)
    unreadable: int = 0
    unreadable_examples: list[str] = field(default_factory=list)


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetched(pool: ThreadPoolExecutor, prepare, batches: Iterator[list], wanted) -> Iterator[tuple[list, list]]:
    """Each batch with the futures of its decoded images, the next batch already submitted: the threads decode
    batch k + 1 while the models run on batch k."""
    ahead = None
    for batch in batches:
        submitted = (batch, [pool.submit(prepare, raw, wanted) for _, raw in batch])
        if ahead is not None:
            yield ahead
        ahead = submitted
    if ahead is not None:
        yield ahead


def extract(source, extractors: dict[str, Extractor], cache: FeatureCache, *, batch_size: int = 64, workers: int = 1,
            reporter: Reporter | None = None) -> Extracted:
    """Every extractor's output on every row of ``source``, from the cache where it holds them."""
    from ..data.readers import UnreadableImage

    reporter = reporter or SilentReporter()
    n = len(source)
    entries = {name: cache.entry(source.record(), model.record()).open() for name, model in extractors.items()}
    values = {name: np.zeros((n, model.dim), dtype=np.float32) for name, model in extractors.items()}
    valid = {name: np.zeros(n, dtype=bool) for name in extractors}
    result = Extracted(values, np.zeros(n, dtype=bool), dict.fromkeys(extractors, 0))
    chunks = source.chunks()
    pending: list[tuple[Chunk, list[str]]] = []
    cached_rows = 0
    for chunk in chunks:
        missing = []
        for name, entry in entries.items():
            stored = entry.load(chunk)
            if stored is None:
                missing.append(name)
            else:
                values[name][chunk.rows], valid[name][chunk.rows] = stored
        if missing:
            pending.append((chunk, missing))
        else:
            cached_rows += len(chunk.rows)

    def prepare(raw, wanted: tuple[Preprocess, ...]):
        try:
            image = source.decode(raw)
        except UnreadableImage as error:
            return None, str(error)
        return {p: p.array(image) for p in wanted}, None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            reporter.progress(f"{source.side} images", total=n, completed=cached_rows) as advance:
        for chunk, missing in pending:
            local = {row: i for i, row in enumerate(chunk.rows.tolist())}
            out = {name: np.zeros((len(chunk.rows), extractors[name].dim), dtype=np.float32) for name in missing}
            ok = np.zeros(len(chunk.rows), dtype=bool)
            wanted = tuple(dict.fromkeys(extractors[name].preprocess for name in missing))
            seen = 0
            for batch, futures in _prefetched(pool, prepare, _batches(source.items(chunk), batch_size), wanted):
                prepared = [future.result() for future in futures]
                rows = []
                for (row, _), (arrays, problem) in zip(batch, prepared):
                    if arrays is None:
                        result.unreadable += 1
                        if len(result.unreadable_examples) < EXAMPLES:
                            result.unreadable_examples.append(problem)
                    else:
                        rows.append((local[row], arrays))
                if rows:
                    positions = np.asarray([i for i, _ in rows])
                    ok[positions] = True
                    for name in missing:
                        model = extractors[name]
                        pixels = Preprocess.batch([arrays[model.preprocess] for _, arrays in rows])
                        outputs = np.asarray(model(pixels), dtype=np.float32)
                        if outputs.shape != (len(rows), model.dim):
                            raise DatasetError(f"{name} gave outputs of shape {outputs.shape} for {len(rows)} images "
                                               f"(expected [{len(rows)}, {model.dim}])")
                        out[name][positions] = outputs
                seen += len(batch)
                advance(len(batch))
            if seen != len(chunk.rows):
                raise DatasetError(f"{source.side} chunk {chunk.name} yielded {seen} images for {len(chunk.rows)} rows")
            for name in missing:
                entries[name].save(chunk, out[name], ok)
                values[name][chunk.rows], valid[name][chunk.rows] = out[name], ok
                result.computed[name] += len(chunk.rows)
    result.valid = np.logical_and.reduce([valid[name] for name in extractors]) if extractors else np.ones(n, dtype=bool)
    return result
