"""k-NN manifold metrics: precision and recall (k = 3), density and coverage (k = 5), memory-bounded.

- Precision / recall: Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019, "Improved Precision and Recall
  Metric for Assessing Generative Models". The real manifold is the union of balls around each real
  feature with radius its distance to its k-th nearest real neighbour; precision is the share of
  generated features inside it, recall the share of real features inside the generated manifold.
- Density / coverage: Naeem, Oh, Uh, Choi & Yoo 2020, "Reliable Fidelity and Diversity Metrics for
  Generative Models". Density counts how many real balls contain each generated feature (divided by k,
  about 1 when both sets share a distribution, above 1 where generated samples crowd); coverage is the
  share of real balls that contain at least one generated feature.

Balls are closed (``<=``), as in Kynkäänniemi et al.'s code; Naeem et al.'s ``prdc`` package compares
with ``<``. The two differ only on exact ties. A feature is never its own neighbour (excluded by index,
so duplicated features still count as neighbours of each other).

Distances are computed in row blocks whose height follows a memory budget (``chunk_bytes``): one pass
over real x real, one over generated x generated, one over real x generated, each block ``b x N``. With
the defaults a 50,000 x 50,000 comparison holds about 256 MiB at a time, never the full matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synfer.errors import DatasetError
from synfer.eval.arrays import (
    DEFAULT_CHUNK_BYTES,
    as_features,
    chunks,
    positive_int,
    rng_for,
    rows64,
    rows_per_chunk,
    same_dim,
    squared_distances,
    squared_norms,
    subsample,
)

PR_K = 3  # Kynkäänniemi et al. 2019
DC_K = 5  # Naeem et al. 2020
MAX_N = 10_000  # dgm-eval's default ``--reduced_n`` for prdc
_FLOATS_PER_ENTRY = 4  # the distance block, plus comparison and reduction temporaries of each entry


def knn_radii(features, ks: tuple[int, ...] = (PR_K,), *,
              chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[int, np.ndarray]:
    """Distance from each row to its k-th nearest other row, for each k in ``ks``, in row blocks."""
    x = as_features(features, "features")
    ks = tuple(positive_int(k, "k") for k in ks)
    return {k: np.sqrt(r) for k, r in _knn_sq_radii(x, squared_norms(x, chunk_bytes), ks, chunk_bytes).items()}


def _knn_sq_radii(x: np.ndarray, x_sq: np.ndarray, ks: tuple[int, ...], chunk_bytes: int) -> dict[int, np.ndarray]:
    n, k_max = x.shape[0], max(ks)
    if n <= k_max:
        raise DatasetError(f"k-NN radii with k={k_max} need more than {k_max} feature rows, got {n}")
    all_rows = rows64(x, slice(None)) if x.dtype != np.float64 else x
    radii = {k: np.empty(n) for k in ks}
    for part in chunks(n, rows_per_chunk(_FLOATS_PER_ENTRY * 8 * n, chunk_bytes)):
        block = squared_distances(rows64(x, part), all_rows, x_sq[part], x_sq)
        block[np.arange(part.stop - part.start), np.arange(part.start, part.stop)] = np.inf  # not its own neighbour
        nearest = np.sort(np.partition(block, k_max - 1, axis=1)[:, :k_max], axis=1)
        for k in ks:
            radii[k][part] = nearest[:, k - 1]
    return radii


@dataclass(frozen=True)
class ManifoldResult:
    precision: float
    recall: float
    density: float
    coverage: float
    k_pr: int
    k_dc: int
    n_real: int  # rows used, after subsampling
    n_fake: int
    subsampled: bool

    def to_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "density": self.density, "coverage": self.coverage,
                "k_pr": self.k_pr, "k_dc": self.k_dc, "n_real": self.n_real, "n_fake": self.n_fake,
                "subsampled": self.subsampled}


def precision_recall_density_coverage(real, fake, *, k_pr: int = PR_K, k_dc: int = DC_K, max_n: int | None = MAX_N,
                                      equal_sizes: bool = True, seed: int = 0,
                                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ManifoldResult:
    """Precision, recall (Kynkäänniemi et al. 2019, k=``k_pr``), density, coverage (Naeem et al. 2020, k=``k_dc``).

    Subsampling follows dgm-eval (layer6ai-labs/dgm-eval, ``--reduced_n 10000``): each side is drawn down,
    without replacement and seeded, to ``min(max_n, n_real, n_fake)`` rows, so that both sides have the
    same size (the radii shrink with N, so unequal sizes would tilt precision against recall);
    ``equal_sizes=False`` caps each side at ``max_n`` separately, ``max_n=None`` uses everything.
    Deviation from dgm-eval, which uses k = 5 for all four: precision and recall use k = 3 as in
    Kynkäänniemi et al., density and coverage k = 5 as in Naeem et al.

    Cost: (n_real + n_fake)^2 x D multiply-adds for the three distance passes; memory ``chunk_bytes`` plus
    the float64 subsample.
    """
    x, y = as_features(real, "real features", 2), as_features(fake, "generated features", 2)
    same_dim(x, y)
    k_pr, k_dc = positive_int(k_pr, "k_pr"), positive_int(k_dc, "k_dc")
    rng = rng_for(seed, "prdc")
    cap_x = cap_y = None
    if max_n is not None:
        max_n = positive_int(max_n, "max_n", minimum=max(k_pr, k_dc) + 1)
        cap_x = cap_y = min(max_n, x.shape[0], y.shape[0]) if equal_sizes else max_n
    elif equal_sizes:
        cap_x = cap_y = min(x.shape[0], y.shape[0])
    subsampled = (cap_x is not None and x.shape[0] > cap_x) or (cap_y is not None and y.shape[0] > cap_y)
    if cap_x is not None:
        x, y = subsample(x, cap_x, rng), subsample(y, cap_y, rng)
    x, y = rows64(x, slice(None)), rows64(y, slice(None))
    x_sq, y_sq = squared_norms(x, chunk_bytes), squared_norms(y, chunk_bytes)
    real_radii = _knn_sq_radii(x, x_sq, tuple(sorted({k_pr, k_dc})), chunk_bytes)
    fake_radii = _knn_sq_radii(y, y_sq, (k_pr,), chunk_bytes)[k_pr]

    in_real_manifold = np.zeros(y.shape[0], dtype=bool)  # precision: generated j inside some real k_pr-ball
    real_balls_around = np.zeros(y.shape[0], dtype=np.int64)  # density: real k_dc-balls containing generated j
    in_fake_manifold = np.empty(x.shape[0], dtype=bool)  # recall: real i inside some generated k_pr-ball
    covered = np.empty(x.shape[0], dtype=bool)  # coverage: real i's k_dc-ball holds a generated sample
    for part in chunks(x.shape[0], rows_per_chunk(_FLOATS_PER_ENTRY * 8 * y.shape[0], chunk_bytes)):
        block = squared_distances(x[part], y, x_sq[part], y_sq)
        in_real_manifold |= (block <= real_radii[k_pr][part, None]).any(axis=0)
        real_balls_around += (block <= real_radii[k_dc][part, None]).sum(axis=0)
        in_fake_manifold[part] = (block <= fake_radii[None, :]).any(axis=1)
        covered[part] = block.min(axis=1) <= real_radii[k_dc][part]
    return ManifoldResult(
        precision=float(in_real_manifold.mean()),
        recall=float(in_fake_manifold.mean()),
        density=float(real_balls_around.mean() / k_dc),
        coverage=float(covered.mean()),
        k_pr=k_pr, k_dc=k_dc, n_real=int(x.shape[0]), n_fake=int(y.shape[0]), subsampled=bool(subsampled),
    )
