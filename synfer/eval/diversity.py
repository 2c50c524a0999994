"""Within-class diversity: the mean pairwise feature distance among samples of one class.

A generator that collapses onto a few faces per expression scores low here even when FD and precision
look fine; comparing the generated figure with the real one of the same class shows whether the
synthetic set is as varied as real data. The distance is Euclidean (L2) by default, the geometry that
FD and the k-NN metrics use too; ``metric="cosine"`` gives 1 - cosine similarity, insensitive to feature
norms (as Vendi-style diversity scores on DINOv2 features use).

For small classes the mean runs over every pair, exactly; above ``exact_max_n`` samples it is estimated
from ``pairs`` pairs drawn uniformly (seeded), with its standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synfer.errors import ConfigError
from synfer.eval.arrays import (
    DEFAULT_CHUNK_BYTES,
    as_features,
    as_labels,
    chunks,
    class_rows,
    positive_int,
    rng_for,
    rows64,
    rows_per_chunk,
    squared_distances,
)

METRICS = ("l2", "cosine")
EXACT_MAX_N = 2000  # up to ~2 million pairs: exact in well under a second at D = 1,024
PAIRS = 20_000  # sampled pairs above that: standard error 0.7% of the spread of distances, itself a few % of the mean
_PAIRS_PER_BLOCK = 2048  # rows gathered at random are the cost: small blocks stay in cache


@dataclass(frozen=True)
class ClassDiversity:
    mean: float | None  # None below 2 samples
    std: float | None  # spread of the pairwise distances
    sem: float | None  # standard error of ``mean``: 0 when exact
    n: int
    pairs: int
    exact: bool

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "sem": self.sem, "n": self.n, "pairs": self.pairs,
                "exact": self.exact}


def _unit_rows(block: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.where(norms > 0, norms, 1.0)


def mean_pairwise_distance(features, *, metric: str = "l2", exact_max_n: int = EXACT_MAX_N, pairs: int = PAIRS,
                           seed: int = 0, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ClassDiversity:
    """Mean distance over pairs of distinct rows (i != j), exact up to ``exact_max_n`` rows, else sampled."""
    if metric not in METRICS:
        raise ConfigError(f"unknown diversity metric {metric!r} (accepted: {', '.join(METRICS)})")
    x = as_features(features, "features")
    n = x.shape[0]
    if n < 2:
        return ClassDiversity(None, None, None, n, 0, True)
    if n <= positive_int(exact_max_n, "exact_max_n", minimum=2):
        data = rows64(x, slice(None))
        data = _unit_rows(data) if metric == "cosine" else data
        sq = np.einsum("ij,ij->i", data, data)
        total = total_sq = 0.0
        for part in chunks(n, rows_per_chunk(3 * 8 * n, chunk_bytes)):
            if metric == "cosine":
                distances = 1.0 - data[part] @ data.T
            else:
                distances = np.sqrt(squared_distances(data[part], data, sq[part], sq))
            distances[np.arange(part.stop - part.start), np.arange(part.start, part.stop)] = 0.0  # not a pair
            total += distances.sum()
            total_sq += np.square(distances).sum()
        count = n * (n - 1)
        mean = total / count
        std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
        return ClassDiversity(float(mean), std, 0.0, n, count // 2, True)
    pairs = positive_int(pairs, "pairs", minimum=2)
    rng = rng_for(seed, "diversity")
    first = rng.integers(0, n, pairs)
    second = rng.integers(0, n - 1, pairs)
    second += second >= first  # uniform over ordered pairs with i != j
    distances = np.empty(pairs)
    for part in chunks(pairs, min(_PAIRS_PER_BLOCK, rows_per_chunk(3 * 8 * x.shape[1], chunk_bytes))):
        a, b = rows64(x, first[part]), rows64(x, second[part])
        if metric == "cosine":
            distances[part] = 1.0 - np.einsum("ij,ij->i", _unit_rows(a), _unit_rows(b))
        else:
            distances[part] = np.linalg.norm(a - b, axis=1)
    std = float(distances.std(ddof=1))
    return ClassDiversity(float(distances.mean()), std, float(std / np.sqrt(pairs)), n, pairs, False)


@dataclass(frozen=True)
class DiversityResult:
    per_class: dict[str, ClassDiversity]
    metric: str

    def to_dict(self) -> dict:
        values = [d.mean for d in self.per_class.values() if d.mean is not None]
        return {"metric": self.metric, "per_class": {name: d.to_dict() for name, d in self.per_class.items()},
                "mean_over_classes": float(np.mean(values)) if values else None}


def within_class_diversity(features, labels=None, *, metric: str = "l2", exact_max_n: int = EXACT_MAX_N,
                           pairs: int = PAIRS, seed: int = 0,
                           chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> DiversityResult:
    """``mean_pairwise_distance`` within each class of one feature set (one class ``"all"`` without labels).

    Each class draws its pairs from its own stream (``seed`` and the class name).
    """
    x = as_features(features, "features")
    if labels is None:
        groups = [("all", np.arange(x.shape[0]))]
    else:
        groups = [(name, rows) for name, (rows,) in class_rows(as_labels(labels, x.shape[0], "labels"))]
    per_class = {}
    for name, rows in groups:
        per_class[name] = mean_pairwise_distance(
            x if labels is None else x[rows], metric=metric, exact_max_n=exact_max_n, pairs=pairs,
            seed=int(rng_for(seed, "diversity-class", name).integers(2**63)), chunk_bytes=chunk_bytes)
    return DiversityResult(per_class, metric)
