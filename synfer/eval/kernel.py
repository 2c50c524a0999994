"""Kernel distance (KID) between feature sets: unbiased MMD^2 with a cubic polynomial kernel, overall and per class.

Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs": the squared maximum mean discrepancy
with k(x, y) = (x.y / d + 1)^3, estimated without bias on random subsets of both sets and averaged over
subsets. Unlike FD it has an unbiased estimator, so it can come out slightly negative when the two sets
share one distribution, and its value does not drift with the number of samples.
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
    same_dim,
)

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_MIN_PER_CLASS = 50


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """``(gamma x.y + coef0)^degree`` for float64 row blocks; ``gamma`` defaults to 1/D."""
    gram = x @ y.T
    gram *= 1.0 / x.shape[1] if gamma is None else gamma
    gram += coef0
    if not (isinstance(degree, int) and degree >= 1):
        return gram**degree
    out = gram.copy()
    for _ in range(degree - 1):  # repeated products: several times faster than a general power
        out *= gram
    return out


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None,
                  coef0: float = 1.0) -> float:
    """The unbiased estimator of MMD^2 (Gretton et al. 2012, eq. 3), any sizes m, n >= 2.

    mean of k(x_i, x_j) over i != j + mean of k(y_i, y_j) over i != j - 2 mean of k(x_i, y_j).
    """
    m, n = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x, degree=degree, gamma=gamma, coef0=coef0)
    k_yy = polynomial_kernel(y, y, degree=degree, gamma=gamma, coef0=coef0)
    k_xy = polynomial_kernel(x, y, degree=degree, gamma=gamma, coef0=coef0)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


@dataclass(frozen=True)
class KIDResult:
    """Mean and standard deviation (ddof=0, as Bińkowski et al., torchmetrics and dgm-eval report it) over subsets."""

    mean: float
    std: float
    subsets: int
    subset_size: int
    n_real: int
    n_fake: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "subsets": self.subsets, "subset_size": self.subset_size,
                "n_real": self.n_real, "n_fake": self.n_fake}


KID_METHODS = ("auto", "subsets", "pooled")
_POOLED_MAX_ROWS = 20_000  # the pooled route holds both sets as float64: 160 MB at D = 1,024


def kernel_distance(real, fake, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, degree: int = 3,
                    gamma: float | None = None, coef0: float = 1.0, seed: int = 0, method: str = "auto",
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> KIDResult:
    """KID (Bińkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel, averaged over random subsets.

    Each of ``subsets`` rounds draws ``m = min(subset_size, n_real, n_fake)`` rows from each side without
    replacement (seeded) and takes ``mmd2_unbiased``; the defaults (100 subsets of 1,000) are the paper's
    and torchmetrics'.

    Two routes give the same figure from the same subsets. ``"subsets"`` builds the three m x m kernel
    matrices of every subset: 3 m^2 D multiply-adds per subset, whatever N is. ``"pooled"`` computes the
    kernel rows of all N = n_real + n_fake samples once, in blocks, and gets every subset's sums from
    0/1 membership columns (K w): about N^2 (D + subsets) in all, far cheaper when the subsets overlap
    heavily (N of a few thousand, as in per-class KID). ``"auto"`` takes the cheaper one.
    """
    if method not in KID_METHODS:
        raise ConfigError(f"unknown KID method {method!r} (accepted: {', '.join(KID_METHODS)})")
    x, y = as_features(real, "real features", 2), as_features(fake, "generated features", 2)
    same_dim(x, y)
    subsets = positive_int(subsets, "subsets")
    size = min(positive_int(subset_size, "subset_size", minimum=2), x.shape[0], y.shape[0])
    if gamma is not None and not gamma > 0:
        raise ConfigError(f"gamma must be positive (or None for 1/D), got {gamma}")
    kernel = {"degree": degree, "gamma": gamma, "coef0": coef0}
    rng = rng_for(seed, "kid")
    picks = [(np.sort(rng.choice(x.shape[0], size, replace=False)),
              np.sort(rng.choice(y.shape[0], size, replace=False))) for _ in range(subsets)]
    pool = x.shape[0] + y.shape[0]
    if method == "auto":
        pooled_cost = pool**2 * (x.shape[1] + subsets)
        subsets_cost = subsets * 3 * size**2 * x.shape[1]
        method = "pooled" if pool <= _POOLED_MAX_ROWS and pooled_cost < subsets_cost else "subsets"
    if method == "pooled":
        values = _pooled_mmd2(x, y, picks, size, kernel, chunk_bytes)
    else:
        values = np.array([mmd2_unbiased(rows64(x, pick_x), rows64(y, pick_y), **kernel) for pick_x, pick_y in picks])
    return KIDResult(float(values.mean()), float(values.std()), subsets, size, x.shape[0], y.shape[0])


def _membership(n: int, picks: list[np.ndarray]) -> np.ndarray:
    columns = np.zeros((n, len(picks)))
    for s, rows in enumerate(picks):
        columns[rows, s] = 1.0
    return columns


def _pooled_mmd2(x: np.ndarray, y: np.ndarray, picks, size: int, kernel: dict, chunk_bytes: int) -> np.ndarray:
    """Unbiased MMD^2 of every subset from kernel rows computed once: sum_{i,j in S} k_ij = w^T K w."""
    x, y = rows64(x, slice(None)), rows64(y, slice(None))
    w_x, w_y = _membership(x.shape[0], [p for p, _ in picks]), _membership(y.shape[0], [q for _, q in picks])

    def sums(a: np.ndarray, b: np.ndarray, w_a: np.ndarray, w_b: np.ndarray, same: bool):
        """Per subset: sum over pairs in S_a x S_b of k(a_i, b_j), and (when a is b) the diagonal's share."""
        total, diagonal = np.zeros(w_a.shape[1]), np.zeros(w_a.shape[1])
        for part in chunks(a.shape[0], rows_per_chunk(3 * 8 * b.shape[0], chunk_bytes)):  # gram, power, product
            block = polynomial_kernel(a[part], b, **kernel)
            total += np.einsum("is,is->s", w_a[part], block @ w_b)
            if same:
                own = block[np.arange(part.stop - part.start), np.arange(part.start, part.stop)]
                diagonal += own @ w_a[part]
        return total, diagonal

    xx, diag_x = sums(x, x, w_x, w_x, True)
    yy, diag_y = sums(y, y, w_y, w_y, True)
    xy, _ = sums(x, y, w_x, w_y, False)
    pairs = size * (size - 1)
    return (xx - diag_x) / pairs + (yy - diag_y) / pairs - 2 * xy / size**2


@dataclass(frozen=True)
class PerClassKID:
    """KID per class; ``skipped`` maps a class to its (n_real, n_fake) when either side had too few samples."""

    per_class: dict[str, KIDResult]
    skipped: dict[str, tuple[int, int]]
    min_per_class: int

    def to_dict(self) -> dict:
        values = [result.mean for result in self.per_class.values()]
        return {"per_class": {name: result.to_dict() for name, result in self.per_class.items()},
                "mean_over_classes": float(np.mean(values)) if values else None,
                "skipped": {name: {"n_real": r, "n_fake": f} for name, (r, f) in self.skipped.items()},
                "min_per_class": self.min_per_class}


def per_class_kernel_distance(real, fake, real_labels, fake_labels, *, min_per_class: int = KID_MIN_PER_CLASS,
                              subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0,
                              **kernel) -> PerClassKID:
    """KID within each class, real class c against generated class c (subset size min(subset_size, n_c)).

    A class is skipped, and listed with its counts, when either side has fewer than ``min_per_class``
    samples. The default, 50, is a choice: the estimator itself needs 2, but below a few dozen samples its
    spread over subsets is as large as the differences between classes one wants to read off. Each class
    has its own random stream (from ``seed`` and the class name), so a class's figure does not change when
    other classes are added or dropped. Classes are named by ``str(label)``. ``kernel``: the remaining
    options of ``kernel_distance`` (degree, gamma, coef0, method, chunk_bytes).
    """
    x, y = as_features(real, "real features", 2), as_features(fake, "generated features", 2)
    same_dim(x, y)
    min_per_class = positive_int(min_per_class, "min_per_class", minimum=2)
    real_labels = as_labels(real_labels, x.shape[0], "real labels")
    fake_labels = as_labels(fake_labels, y.shape[0], "generated labels")
    per_class, skipped = {}, {}
    for label, (in_x, in_y) in class_rows(real_labels, fake_labels):
        if min(len(in_x), len(in_y)) < min_per_class:
            skipped[label] = (len(in_x), len(in_y))
            continue
        per_class[label] = kernel_distance(x[in_x], y[in_y], subsets=subsets, subset_size=subset_size,
                                           seed=int(rng_for(seed, "kid-class", label).integers(2**63)), **kernel)
    return PerClassKID(per_class, skipped, min_per_class)
