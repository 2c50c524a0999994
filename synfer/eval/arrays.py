"""Checked feature arrays and the chunked float64 arithmetic the distribution metrics share.

Feature sets arrive as ``[N, D]`` arrays from a backbone or a feature cache, often float32 and as large as
50,000 x 1,024. They are checked once (2-D, finite, enough rows) and kept as they are; every computation
converts only the rows it is working on to float64, so that a float32 cache is never copied whole and
no ``N x N`` matrix is ever held. ``rows_per_chunk`` turns a memory budget into a block height.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Iterator

import numpy as np

from synfer.errors import ConfigError, DatasetError

DEFAULT_CHUNK_BYTES = 256 * 2**20
"""Working memory one blocked computation may use (distance blocks, Gram blocks), in bytes."""

_CHECK_ROWS = 8192  # rows per pass of the finiteness check: a bounded temporary, whatever N is


def as_features(features, name: str, min_rows: int = 1) -> np.ndarray:
    """``features`` as a 2-D floating array (not copied when it already is one), or a DatasetError saying why not."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise DatasetError(f"{name} must be a 2-D [N, D] feature array, got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        if not np.issubdtype(array.dtype, np.integer):
            raise DatasetError(f"{name} must hold numbers, got dtype {array.dtype}")
        array = array.astype(np.float64)
    if array.shape[1] < 1:
        raise DatasetError(f"{name} has no feature dimensions (shape {tuple(array.shape)})")
    if array.shape[0] < min_rows:
        raise DatasetError(f"{name} has {array.shape[0]} rows; this metric needs at least {min_rows}")
    for start in range(0, array.shape[0], _CHECK_ROWS):
        if not np.isfinite(array[start:start + _CHECK_ROWS]).all():
            raise DatasetError(f"{name} contains NaN or infinite values "
                               f"(first in rows {start}..{start + _CHECK_ROWS - 1})")
    return array


def same_dim(real: np.ndarray, fake: np.ndarray) -> None:
    if real.shape[1] != fake.shape[1]:
        raise DatasetError(f"real features have {real.shape[1]} dimensions but generated ones {fake.shape[1]}; "
                           "both sides must come from the same backbone")


def as_labels(labels, n: int, name: str) -> np.ndarray:
    """One label per feature row, as a 1-D array."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != n:
        raise DatasetError(f"{name} must hold one label per feature row ({n}), got shape {tuple(array.shape)}")
    return array


def class_rows(*labels: np.ndarray) -> list[tuple[str, list[np.ndarray]]]:
    """Each class, named ``str(label)``, with its row indices in every label array given.

    Classes are the union over the arrays, in numeric order when every label is an integer (so that
    class 10 follows class 9), otherwise in string order.
    """
    names = [np.asarray(array).astype(str) for array in labels]
    union = np.unique(np.concatenate(names)) if names else np.array([], dtype=str)
    if all(np.issubdtype(np.asarray(array).dtype, np.integer) for array in labels):
        union = sorted(union, key=int)
    return [(str(name), [np.flatnonzero(array == name) for array in names]) for name in union]


def positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def rows_per_chunk(row_bytes: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many rows of ``row_bytes`` each fit in ``budget_bytes`` (at least one)."""
    if budget_bytes <= 0:
        raise ConfigError(f"chunk_bytes must be positive, got {budget_bytes}")
    return max(1, int(budget_bytes // max(1, row_bytes)))


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def rows64(features: np.ndarray, index) -> np.ndarray:
    """Rows ``index`` (a slice or an index array) as a float64 array."""
    return np.asarray(features[index], dtype=np.float64)


def squared_norms(features: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
    out = np.empty(features.shape[0])
    for part in chunks(features.shape[0], rows_per_chunk(8 * features.shape[1], chunk_bytes)):
        block = rows64(features, part)
        out[part] = np.einsum("ij,ij->i", block, block)
    return out


def squared_distances(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||^2`` for float64 blocks, from the norms and one matrix product; rounding below 0 clipped."""
    block = a @ b.T
    block *= -2.0
    block += a_sq[:, None]
    block += b_sq[None, :]
    np.maximum(block, 0.0, out=block)
    return block


def child_seed(seed: int, *key: Hashable) -> np.random.SeedSequence:
    """An independent, reproducible stream for one part of a computation (a metric, a class).

    String keys go through CRC-32 rather than ``hash()``, which Python salts per process.
    """
    words = [int(seed)]
    for part in key:
        words.append(int(part) if isinstance(part, (int, np.integer)) and part >= 0 else zlib.crc32(str(part).encode()))
    return np.random.SeedSequence(words)


def rng_for(seed: int, *key: Hashable) -> np.random.Generator:
    return np.random.default_rng(child_seed(seed, *key))


def subsample(features: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_rows`` rows drawn without replacement (sorted, so that a memory map is read forwards)."""
    if features.shape[0] <= max_rows:
        return features
    return features[np.sort(rng.choice(features.shape[0], max_rows, replace=False))]
